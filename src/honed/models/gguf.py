"""Convert a GGUF checkpoint into a cached, trainable safetensors model folder.

transformers loads GGUF files (dequantizing every tensor to float32 with the ``gguf`` package),
but a GGUF-loaded model carries a GGUF "quantizer" that refuses saving and training. Once the
weights are dequantized the quantizer is only a label: removing it lets ``save_pretrained``
write plain safetensors that every other part of honed loads like any local model.

The conversion runs once per GGUF file: the folder name carries the first 12 hex digits of the
file's sha256, so a changed file converts again, and the folder is written to a temporary name
and renamed at the end, so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from honed.errors import ModelError
from honed.models.digest import sha256_file

log = logging.getLogger(__name__)

#: Written into the converted folder; records where the weights came from.
SOURCE_FILE = "gguf_source.json"
#: The greatest absolute logit difference accepted between the GGUF and the converted model.
LOGIT_ATOL = 1e-4
_PROBE_TEXT = "The capital of France is Paris. 1 + 1 = 2."


def converted_path(gguf_path: Path, name: str, digest: str | None = None) -> Path:
    """Cache folder of the converted model: ``cache/models/<name>-<sha256[:12]>``."""
    from honed.state import cache_dir

    digest = digest or sha256_file(gguf_path)
    return cache_dir("models") / f"{name}-{digest[:12]}"


def convert_gguf(gguf_path: str | Path, name: str, check_logits: bool = True) -> Path:
    """The converted folder of ``gguf_path``; converts on first use, then reuses the cache."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelError(f"{gguf_path}: GGUF file not found")
    digest = sha256_file(gguf_path)
    target = converted_path(gguf_path, name, digest)
    if (target / SOURCE_FILE).is_file():
        return target
    log.info("converting %s to safetensors in %s (once)", gguf_path.name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _convert_into(gguf_path, tmp, check_logits)
        (tmp / SOURCE_FILE).write_text(
            json.dumps({"gguf_file": gguf_path.name, "gguf_sha256": digest}, indent=2) + "\n"
        )
        tmp.chmod(0o755)  # mkdtemp makes it owner-only
        try:
            os.replace(tmp, target)  # atomic on one filesystem
        except OSError:
            # Another process finished the same conversion first: theirs is as good as ours.
            if not (target / SOURCE_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_into(gguf_path: Path, out: Path, check_logits: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=filename, dtype=torch.float32
        )
    except Exception as err:  # gguf parse errors come in many classes
        raise ModelError(f"{gguf_path}: cannot load GGUF ({err})") from None
    # The tensors are float32 already; the quantizer only blocks save_pretrained and training.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if check_logits:
        _check_same_logits(model, tokenizer, out)


def _check_same_logits(model, tokenizer, out: Path) -> None:
    """Reload the written folder and compare its logits with the GGUF-loaded model's."""
    import torch
    from transformers import AutoModelForCausalLM

    ids = tokenizer(_PROBE_TEXT, return_tensors="pt").input_ids  # (1, seq)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, use_safetensors=True)
    reloaded.eval()
    with torch.inference_mode():
        before = model(ids).logits  # (1, seq, vocab)
        after = reloaded(ids).logits
    diff = float((before - after).abs().max())
    if diff > LOGIT_ATOL:
        raise ModelError(
            f"GGUF conversion changed the model: max |logit difference| {diff:.3g} > {LOGIT_ATOL}"
        )
    log.info("converted model logits match the GGUF model (max |diff| %.2g)", diff)
