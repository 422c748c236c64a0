"""Merge a LoRA/QLoRA adapter into its base: one standalone model folder, no peft at load time.

``merge_adapter(adapter_dir, out_dir)`` loads the base named by the adapter's lineage (checking
its weight digest), applies the adapter, ``merge_and_unload``s (W <- W + B·A·alpha/r for every
adapted linear layer) and saves a plain transformers folder with the tokenizer and a
``lineage.json`` that points to the base digest and to the adapter it was merged from.

A QLoRA adapter was trained against the NF4-quantized base. Merging it into the full-precision
base would pair the update with weights it never saw, so the base is loaded in 4-bit exactly
as in training and dequantized first: the merged model reproduces the adapter model, with the
4-bit rounding of the base weights baked in (a quality cost against the original base, which
the merge warns about).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from honed.errors import ModelError
from honed.models.adapters import (
    ADAPTER_WEIGHTS,
    LINEAGE,
    AdapterError,
    adapter_info,
    check_base_digest,
    load_adapter_model,
)
from honed.models.resolve import sha256_file
from honed.paths import base_record_in, portable_path

log = logging.getLogger(__name__)

#: The merge's errors are those of loading the adapter (not an adapter, base missing or changed)
#: plus an occupied output folder.
MergeError = AdapterError

QUANTIZED_MERGE_WARNING = (
    "merging a QLoRA adapter: the base is dequantized from NF4 first, so the merged model "
    "keeps the 4-bit rounding of the base weights. It matches the adapter model as trained, "
    "but is not the full-precision base plus the update; expect slightly lower quality than "
    "the original base on unrelated tasks. Keep the adapter if you can serve it with the "
    "full-precision or the 4-bit base instead."
)


def _copy_tokenizer(adapter_dir: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    except (OSError, ValueError):
        log.warning("%s: no tokenizer files; the merged folder has none", adapter_dir)
        return
    tokenizer.save_pretrained(str(out))


def merged_lineage(adapter_dir: Path, info: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    lineage = dict(info["lineage"])
    # The adapter recorded its base relative to its own folder: rewrite it for `out_dir`.
    lineage["base_model"] = base_record_in(info["base"], info["base_path"], out_dir)
    weights = adapter_dir / ADAPTER_WEIGHTS
    lineage.update(
        is_adapter=False,
        merged_from={
            "adapter": portable_path(adapter_dir, out_dir),
            "adapter_sha256": sha256_file(weights) if weights.is_file() else None,
            "method": info["method"],
            "base_digest": info["base"].get("digest"),
            "dequantized_4bit_base": info["method"] == "qlora",
            "merged_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    )
    return lineage


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Merge the adapter in ``adapter_dir`` into its base and save the result in ``out_dir``."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise MergeError(f"{out_dir}: exists and is not empty (use --force to replace it)")
    info = adapter_info(adapter_dir)
    check_base_digest(info)
    if info["method"] == "qlora":
        warnings.warn(QUANTIZED_MERGE_WARNING, UserWarning, stacklevel=2)
        log.warning(QUANTIZED_MERGE_WARNING)
    model = load_adapter_model(adapter_dir, dequantize=True).merge_and_unload()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        _copy_tokenizer(adapter_dir, tmp)
        lineage = merged_lineage(adapter_dir, info, out_dir)
        (tmp / LINEAGE).write_text(json.dumps(lineage, indent=2, default=str) + "\n")
        tmp.chmod(0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except OSError as err:
        raise ModelError(f"{out_dir}: cannot write the merged model ({err})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
