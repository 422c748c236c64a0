"""Load a LoRA/QLoRA adapter folder on top of the base it was trained on.

An adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) names its base in
its ``lineage.json`` (path and per-file sha256). ``adapter_info`` reads what loading needs,
``check_base_digest`` refuses a base whose weights changed since training, and
``load_adapter_model`` returns base + adapter (a peft model). A QLoRA adapter's base loads in
4-bit exactly as in training. Used by ``honed merge``, by classification evaluation and by the
server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from honed.errors import ModelError
from honed.models.base_folder import base_model_folder
from honed.models.config import QuantParams
from honed.models.resolve import sha256_file
from honed.paths import read_lineage

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


class AdapterError(ModelError):
    """The folder is not a usable adapter, or its base cannot be found or has changed."""


class AdapterNotFound(AdapterError):
    """No readable adapter_config.json: callers answering a remote request say no more than
    "not found or not readable" about a path they did not make."""


#: Files an adapter load reads; each must be a regular file inside the folder.
_READ_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, LINEAGE)
_MAX_CONFIG_BYTES = 1 << 20


def check_adapter_folder(adapter_dir: Path) -> dict[str, Any]:
    """adapter_config.json of a folder about to be loaded, after refusing what could make
    loading read outside the folder, unpickle anything or fail half-way: links leaving the
    folder, files that are not regular files (a FIFO or device would block or never end),
    weights that are not a safetensors file, LoRA ranks that differ from the config.
    Messages name files inside the folder only, never a path."""
    root = Path(adapter_dir).resolve()
    config = root / ADAPTER_CONFIG
    if not _inside_regular(root, config) or config.stat().st_size > _MAX_CONFIG_BYTES:
        raise AdapterNotFound(f"{root.name}: no readable {ADAPTER_CONFIG}")
    for entry in root.iterdir():
        if entry.is_symlink() and not entry.resolve().is_relative_to(root):
            raise AdapterError(f"{entry.name} links outside the adapter folder; copy the file")
    for name in _READ_FILES:
        if (root / name).exists() and not _inside_regular(root, root / name):
            raise AdapterError(f"{name} is not a regular file")
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterError(f"{ADAPTER_CONFIG} is not valid JSON") from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"{ADAPTER_CONFIG} is not a JSON object")
    _check_ranks(cfg, _safetensors_shapes(root / ADAPTER_WEIGHTS))
    return cfg


def _inside_regular(root: Path, path: Path) -> bool:
    import stat

    try:
        target = path.resolve()
        return target.is_relative_to(root) and stat.S_ISREG(target.stat().st_mode)
    except (OSError, RuntimeError):
        return False


def _safetensors_shapes(weights: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from the safetensors header (nothing else is read)."""
    from safetensors import safe_open

    if not weights.is_file():
        raise AdapterError(f"no {ADAPTER_WEIGHTS} (only safetensors adapters load)")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            return {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except Exception:  # safetensors raises its own error types for any malformed header
        raise AdapterError(f"{ADAPTER_WEIGHTS} is not a valid safetensors file") from None


def _check_ranks(cfg: dict[str, Any], shapes: dict[str, list[int]]) -> None:
    """Each lora_A's rank (its first dimension) must be the config's r (or its rank_pattern)."""
    r = cfg.get("r")
    patterns = cfg.get("rank_pattern") or {}
    if not isinstance(r, int):
        raise AdapterError(f"{ADAPTER_CONFIG}: 'r' (the LoRA rank) must be an integer")
    for key, shape in shapes.items():
        if ".lora_A." not in key or not shape or any(p in key for p in patterns):
            continue
        if shape[0] != r:
            raise AdapterError(
                f"LoRA rank {shape[0]} in the weights ({key}) differs from r={r} in "
                f"{ADAPTER_CONFIG}"
            )


def check_target_modules(cfg: dict[str, Any], model: Any) -> None:
    """Every module a list-valued ``target_modules`` names exists in ``model`` (peft's rule:
    the module's name, or its last dotted parts); regex strings and 'all-linear' are left to
    peft."""
    targets = cfg.get("target_modules")
    if not isinstance(targets, list):
        return
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        raise AdapterError(f"target modules {sorted(missing)} do not exist in the base model")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as err:
        raise AdapterError(f"{path}: broken JSON ({err.msg})") from None


def adapter_info(adapter_dir: Path) -> dict[str, Any]:
    """What loading needs to know: base path and digest, task type, method, labels."""
    cfg = read_json(adapter_dir / ADAPTER_CONFIG)
    if not cfg:
        raise AdapterError(
            f"{adapter_dir}: no {ADAPTER_CONFIG}; not an adapter folder (full fine-tunes are "
            "standalone already and need no merge)"
        )
    lineage = read_lineage(adapter_dir)
    base = lineage.get("base_model") or {}
    base_path = base_model_folder(adapter_dir, lineage, cfg.get("base_model_name_or_path"))
    if base_path is None:
        named = base.get("path") or cfg.get("base_model_name_or_path") or ""
        raise AdapterError(
            f"{adapter_dir}: its base model folder {str(named)!r} is missing; the adapter "
            "needs the exact base it was trained on"
        )
    task_type = cfg.get("task_type") or "CAUSAL_LM"
    if task_type not in AUTO_CLASSES:
        raise AdapterError(f"{adapter_dir}: unsupported adapter task type {task_type!r}")
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
            raise AdapterError(
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
    if info["task_type"] not in ("SEQ_CLS", "TOKEN_CLS"):  # heads sized by the labels
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


def _quant_params(info: dict[str, Any]) -> QuantParams:
    """The 4-bit settings the adapter was trained with (the spec's ``method.qlora``)."""
    recorded = ((info["lineage"].get("spec") or {}).get("method") or {}).get("qlora")
    return QuantParams.model_validate(recorded or {})


def load_base_for(info: dict[str, Any], quantized: bool) -> Any:
    """The adapter's base as trained: full precision, or 4-bit for a QLoRA adapter."""
    import transformers

    from honed.models.quantize import disable_cpu_repack, four_bit_load_kwargs

    kwargs = _base_kwargs(info)
    if quantized:
        kwargs.update(four_bit_load_kwargs(_quant_params(info)))
    if info["task_type"] == "SEQ_CLS":
        model = _classifier_base(info, kwargs)
    else:
        auto = getattr(transformers, AUTO_CLASSES[info["task_type"]])
        model = auto.from_pretrained(str(info["base_path"]), **kwargs)
    if quantized:
        disable_cpu_repack(model)
    return model


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
