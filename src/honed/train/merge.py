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

from honed.errors import HonedError, ModelError
from honed.models.resolve import sha256_file
from honed.registry.lineage import base_model_folder, base_record_in, portable_path, read_lineage
from honed.train.config import MethodConfig
from honed.train.methods import get_method

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LINEAGE = "lineage.json"

#: peft task type -> transformers auto class that loads the base.
AUTO_CLASSES = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "FEATURE_EXTRACTION": "AutoModel",
}

QUANTIZED_MERGE_WARNING = (
    "merging a QLoRA adapter: the base is dequantized from NF4 first, so the merged model "
    "keeps the 4-bit rounding of the base weights. It matches the adapter model as trained, "
    "but is not the full-precision base plus the update; expect slightly lower quality than "
    "the original base on unrelated tasks. Keep the adapter if you can serve it with the "
    "full-precision or the 4-bit base instead."
)


class MergeError(HonedError):
    """The folder is not a mergeable adapter, or its base cannot be found."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as err:
        raise MergeError(f"{path}: broken JSON ({err.msg})") from None


def adapter_info(adapter_dir: Path) -> dict[str, Any]:
    """What a merge needs to know: base path and digest, task type, method, labels."""
    cfg = read_json(adapter_dir / ADAPTER_CONFIG)
    if not cfg:
        raise MergeError(
            f"{adapter_dir}: no {ADAPTER_CONFIG}; not an adapter folder (full fine-tunes are "
            "standalone already and need no merge)"
        )
    lineage = read_lineage(adapter_dir)
    base = lineage.get("base_model") or {}
    base_path = base_model_folder(adapter_dir, lineage, cfg.get("base_model_name_or_path"))
    if base_path is None:
        named = base.get("path") or cfg.get("base_model_name_or_path") or ""
        raise MergeError(
            f"{adapter_dir}: its base model folder {str(named)!r} is missing; the adapter "
            "needs the exact base it was trained on"
        )
    task_type = cfg.get("task_type") or "CAUSAL_LM"
    if task_type not in AUTO_CLASSES:
        raise MergeError(f"{adapter_dir}: unsupported adapter task type {task_type!r}")
    return {
        "base_path": base_path,
        "base": base,
        "task_type": task_type,
        "method": lineage.get("method", "lora"),
        "labels": lineage.get("labels"),
        "lineage": lineage,
        "head_outputs": head_outputs(adapter_dir, list(cfg.get("modules_to_save") or [])),
    }


def check_base_digest(info: dict[str, Any]) -> None:
    """Refuse a base whose weight files changed since the adapter was trained."""
    expected = info["base"].get("weight_sha256") or {}
    for name, digest in expected.items():
        path = info["base_path"] / name
        actual = sha256_file(path) if path.is_file() else "missing"
        if actual != digest:
            raise MergeError(
                f"{path}: base weights differ from those the adapter was trained on "
                f"(sha256 {actual[:12]} != {digest[:12]}); merging would give a wrong model"
            )


def head_outputs(adapter_dir: Path, heads: list[str]) -> int | None:
    """Output size of a saved classification head (e.g. ``score``), read from the adapter."""
    from safetensors import safe_open

    weights = adapter_dir / ADAPTER_WEIGHTS
    if not heads or not weights.is_file():
        return None
    with safe_open(str(weights), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 - safe_open has keys(), no iteration
            parts = key.split(".")
            if key.endswith(".weight") and len(parts) > 1 and parts[-2] in heads:
                return int(fh.get_slice(key).get_shape()[0])
    return None


def _base_kwargs(info: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if info["task_type"] != "SEQ_CLS":
        return kwargs
    labels = info["labels"]
    if labels:
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    elif info["head_outputs"]:  # e.g. a reward model: one score, no label names
        kwargs["num_labels"] = info["head_outputs"]
    return kwargs


def load_base_for(info: dict[str, Any], quantized: bool) -> Any:
    """The adapter's base as trained: full precision, or 4-bit for a QLoRA adapter."""
    import transformers

    kwargs = _base_kwargs(info)
    if quantized:
        kwargs.update(get_method("qlora").load_kwargs(_method_config(info)))
    if info["task_type"] == "SEQ_CLS":
        model = _classifier_base(info, kwargs)
    else:
        auto = getattr(transformers, AUTO_CLASSES[info["task_type"]])
        model = auto.from_pretrained(str(info["base_path"]), **kwargs)
    if quantized:
        from honed.train.methods.qlora import disable_cpu_repack

        disable_cpu_repack(model)
    return model


def _method_config(info: dict[str, Any]) -> MethodConfig:
    """The method settings the adapter was trained with (quantization type etc.)."""
    recorded = (info["lineage"].get("spec") or {}).get("method")
    return MethodConfig.model_validate(recorded) if recorded else MethodConfig(name="qlora")


def _classifier_base(info: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    """A classification base with the head input it was trained with (CLS or mean pooling)."""
    from honed.models.heads import load_classifier, resolve_pooling

    requested = (info["lineage"].get("spec") or {}).get("model", {}).get("pooling", "auto")
    return load_classifier(
        info["base_path"], resolve_pooling(requested, info["base_path"]), **kwargs
    )


def load_adapter_model(adapter_dir: str | Path, dequantize: bool = False) -> Any:
    """Base + adapter (a peft model) from an adapter folder.

    ``dequantize``: for a QLoRA adapter, load the base in 4-bit and dequantize it to plain
    linear layers before attaching the adapter (what merging needs).
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    info = adapter_info(adapter_dir)
    quantized = info["method"] == "qlora"
    base = load_base_for(info, quantized)
    if quantized and dequantize:
        import torch

        base = base.dequantize(dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter_dir))


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
