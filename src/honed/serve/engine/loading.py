"""Turn model references into loaded torch models: what kind each folder is, and its digest."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.errors import ModelError
from honed.models.quantize import quantize_int8

log = logging.getLogger("honed.serve")

ADAPTER_WEIGHTS = "adapter_model.safetensors"
_REGISTRY_REF = re.compile(r"^(models:/)?[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._-]+|/\d+)$")


@dataclass(frozen=True)
class ModelRef:
    """A `[NAME=]REF` entry resolved to a local folder."""

    name: str
    ref: str
    path: Path
    kind: str  # "generate" | "adapter" | "classify" | "classify-adapter"
    version: str | None = None  # the registry version ("NAME/3"); None for a folder


# How many hex digits of a weights sha256 identify a model version in logs and metrics.
DIGEST_CHARS = 16


def resolve_folder(ref: str) -> Path:
    """A folder path, `packaged:NAME`, or a registry ref (NAME@ALIAS, NAME/VERSION) -> folder."""
    return resolve(ref)[0]


def resolve(ref: str) -> tuple[Path, str | None]:
    """(folder, registry version "NAME/3" or None) of a folder path, `packaged:NAME` or a
    registry ref; an alias resolves to the version it points at now."""
    if ref.startswith("packaged:"):
        from honed.models.packaged import packaged_path

        return packaged_path(ref.removeprefix("packaged:")), None
    local = _as_dir(ref)
    if local is not None:
        return local, None
    if not _REGISTRY_REF.match(ref):
        raise ModelError(f"{ref[:200]!r}: not a folder, NAME@ALIAS, NAME/VERSION or packaged:NAME")
    try:
        from honed.registry.store import resolve_ref_version
    except ImportError:
        raise ModelError(
            f"{ref!r}: no such folder (and the model registry is not available)"
        ) from None
    path, version = resolve_ref_version(ref)
    if not Path(path).is_dir():
        raise ModelError(f"{ref!r}: the registry points at {path}, which is not a folder")
    return Path(path), version


def _as_dir(ref: str) -> Path | None:
    """The folder `ref` names, or None; odd paths (too long, ~unknown-user) are not folders."""
    try:
        local = Path(ref).expanduser()
        return local.resolve() if local.is_dir() else None
    except (OSError, RuntimeError, ValueError):
        return None


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: unreadable JSON ({err})") from None


def detect_kind(path: Path) -> str:
    """What a folder holds, from its config files only (nothing is loaded)."""
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.is_file():
        task = str(read_json(adapter_cfg).get("task_type") or "CAUSAL_LM")
        return "classify-adapter" if task == "SEQ_CLS" else "adapter"
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelError(f"{path}: neither config.json nor adapter_config.json; not a model folder")
    archs = read_json(cfg).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "classify"
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs):
        return "generate"
    raise ModelError(f"{path}: architectures {archs} are neither a causal LM nor a classifier")


def parse_entry(entry: str) -> ModelRef:
    """`[NAME=]REF` -> ModelRef; NAME defaults to the registered name or the folder name."""
    name, sep, ref = entry.partition("=")
    if not sep:
        name, ref = "", entry
    ref = ref.strip()
    if not ref:
        raise ModelError(f"model entry {entry!r}: empty reference")
    path, version = resolve(ref)
    default = path.name if _as_dir(ref) is not None else ref.split("@")[0].split("/")[0]
    if ref.startswith("packaged:"):
        default = ref.removeprefix("packaged:")
    kind = detect_kind(path)
    return ModelRef(name=name.strip() or default, ref=ref, path=path, kind=kind, version=version)


def weights_digest(path: Path, kind: str) -> str:
    """The version identity of a model folder: sha256 of its weights (an adapter's own
    weights for adapters), first DIGEST_CHARS hex digits."""
    full = adapter_digest(path) if kind in {"adapter", "classify-adapter"} else folder_digest(path)
    return full[:DIGEST_CHARS]


def stamp(model: Any, ref: ModelRef, digest: str | None = None) -> Any:
    """Set which version a loaded engine model is (``version``, ``digest``; ``arm`` stays the
    class default "primary"): what the request log and metrics record for its answers."""
    model.version = ref.version
    model.digest = (digest or weights_digest(ref.path, ref.kind))[:DIGEST_CHARS]
    return model


def adapter_digest(path: Path) -> str:
    """sha256 of the adapter weights; only safetensors adapters load."""
    from honed.models.resolve import sha256_file

    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{path}: no {ADAPTER_WEIGHTS} (only safetensors adapters load)")
    return sha256_file(weights)


def lineage(path: Path) -> dict[str, Any]:
    file = path / "lineage.json"
    return read_json(file) if file.is_file() else {}


def adapter_base_ref(path: Path) -> str:
    """Where an adapter's base lives: lineage.json first, then adapter_config.json."""
    from honed.models.base_folder import base_model_folder

    cfg = read_json(path / "adapter_config.json")
    found = base_model_folder(path, lineage(path), cfg.get("base_model_name_or_path"))
    if found is None:
        raise ModelError(f"{path}: adapter's base model folder not found; pass --base")
    return str(found)


def base_digest_of(path: Path) -> str | None:
    """The base-model digest an adapter was trained on, when its lineage records one."""
    return (lineage(path).get("base_model") or {}).get("digest")


def folder_digest(path: Path) -> str:
    """Digest of a model folder's weights, computed like honed.models.resolve.ResolvedModel."""
    from honed.models.resolve import ResolvedModel, check_weights, sha256_file

    files = check_weights(path, allow_pickle=False)
    digests = {p.name: sha256_file(p) for p in files}
    return ResolvedModel(path=path, source=str(path), kind="local", weight_sha256=digests).digest


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    return device


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def load_tokenizer(path: Path, padding_side: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = padding_side
    if tok.pad_token_id is None:
        # Decoder-only models often ship without a pad token; eos is the usual stand-in.
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: Path, device: str, dtype):
    from transformers import AutoModelForCausalLM

    from honed.models.resolve import check_weights

    check_weights(path, allow_pickle=False)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True)
    return model.to(device).eval()


def load_classifier(
    ref: ModelRef, device: str, dtype=None, quantization: str = "none", packing: bool = False
):
    """A sequence classifier (full model, or a SEQ_CLS adapter merged into its base) + labels.

    `packing` (CPU only) switches the model to padding-free passes when a probe shows it gives
    the padded pass's logits (`honed.serve.engine.packing`; the probe runs before any dtype
    change or quantization, so it compares like with like).

    `dtype` bfloat16 halves the weight bytes and, on CPUs with native bf16 (AVX512-BF16, AMX),
    roughly doubles batched throughput; `quantization="int8"` (CPU, float32 only) is faster
    still on CPUs with VNNI. Labels agree with float32 on nearly every input
    (`bench/serve_classify.py` measures the agreement). Softmax runs in float32 either way.

    Loading is the lead's `honed.models.predict.Predictor.from_folder` (one code path with
    `honed predict` and the run evaluation); batching stays in the engine.
    """
    from honed.models.predict import Predictor

    predictor = Predictor.from_folder(ref.path, merge=True)
    predictor.tokenizer.padding_side = "right"
    model = predictor.model.eval()
    if packing and device.startswith("cpu"):
        from honed.serve.engine import packing as packed

        packed.enable(model.cpu(), predictor.tokenizer)
    model = model.to(device=device, dtype=dtype)
    if quantization == "int8":
        model = quantize_int8(model, device, dtype)
    return model, predictor.tokenizer, list(predictor.labels)
