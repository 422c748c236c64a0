"""Resolve ``model.base`` to a local folder and check it is safe to load.

A base is a local folder, ``packaged:NAME``, or a hub id. Hub ids download only when online;
offline (``HF_HUB_OFFLINE=1`` or no route to the hub) they resolve from the local HF cache or
fail at once with a message that says how to fix it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

from honed.errors import ModelError
from honed.models.config import ModelConfig
from honed.models.digest import sha256_file
from honed.models.packaged import packaged_path

SAFE_WEIGHTS = ("*.safetensors",)
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
_HUB_HOST = ("huggingface.co", 443)
log = logging.getLogger("honed.models")


@dataclass(frozen=True)
class ResolvedModel:
    """A base model on local disk with its provenance."""

    path: Path
    source: str  # the spec's `base` string
    kind: str  # "local" | "packaged" | "hub"
    weight_sha256: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """One sha256 over the sorted per-file digests: the base model's identity."""
        h = hashlib.sha256()
        for name, digest in sorted(self.weight_sha256.items()):
            h.update(f"{name}:{digest}\n".encode())
        return h.hexdigest()


def weight_files(path: Path) -> tuple[list[Path], list[Path]]:
    """(safetensors files, pickle files) directly in the model folder."""
    safe = sorted(p for pat in SAFE_WEIGHTS for p in path.glob(pat))
    pickled = sorted(p for pat in PICKLE_WEIGHTS for p in path.glob(pat))
    return safe, pickled


def check_weights(path: Path, allow_pickle: bool) -> list[Path]:
    """The weight files that will load; refuses pickle-only models unless opted in."""
    safe, pickled = weight_files(path)
    if safe:
        return safe
    if pickled and not allow_pickle:
        names = ", ".join(p.name for p in pickled)
        raise ModelError(
            f"{path}: only pickle weights found ({names}). Pickle files can run arbitrary code "
            "when loaded; convert them to safetensors, or set model.allow_pickle: true if you "
            "trust the source."
        )
    if pickled:
        return pickled
    raise ModelError(f"{path}: no model weights (*.safetensors) found")


def hub_reachable(timeout: float = 1.0) -> bool:
    """True when the hub's host answers a TCP connect within `timeout` seconds.

    DNS lookups can hang far longer than a socket timeout in a sandbox, so the whole probe
    runs in a worker thread bounded by `timeout`.
    """

    def probe() -> bool:
        with socket.create_connection(_HUB_HOST, timeout=timeout):
            return True

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(probe).result(timeout=timeout)
    except (OSError, FutureTimeout):
        return False
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _hub_path(cfg: ModelConfig) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.txt", "*.model", "*.tiktoken", *SAFE_WEIGHTS]
    if cfg.allow_pickle:
        patterns += list(PICKLE_WEIGHTS)
    try:
        # The local cache first: a hub id that was downloaded once works offline.
        return Path(
            snapshot_download(
                cfg.base, revision=cfg.revision, allow_patterns=patterns, local_files_only=True
            )
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if _offline() or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if _offline() else "the hub cannot be reached"
        raise ModelError(
            f"model.base {cfg.base!r}: not a local folder, not in the local cache, and {why}. "
            "Use a local folder or 'packaged:NAME', or run once online to cache it."
        )
    try:
        return Path(snapshot_download(cfg.base, revision=cfg.revision, allow_patterns=patterns))
    except Exception as err:  # hub errors come in many classes; the message is what matters
        raise ModelError(f"model.base {cfg.base!r}: download failed: {err}") from None


def locate(cfg: ModelConfig) -> tuple[Path, str]:
    """(local folder, kind) for the spec's base, without hashing anything."""
    base = cfg.base
    if base.startswith("packaged:"):
        return packaged_path(base.removeprefix("packaged:")), "packaged"
    local = Path(base).expanduser()
    if local.is_dir():
        return local.resolve(), "local"
    if local.is_absolute() or base.startswith((".", "~")) or base.count("/") > 1:
        raise ModelError(f"model.base {base!r}: folder not found")
    return _hub_path(cfg), "hub"


def resolve_model(cfg: ModelConfig) -> ResolvedModel:
    """Locate the base, refuse unsafe weights, and hash every weight file."""
    path, kind = locate(cfg)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: no config.json; not a Hugging Face model folder")
    files = check_weights(path, cfg.allow_pickle)
    if cfg.allow_pickle:
        # Opting in to pickle trusts the source, not whatever a pickle imports: every pickle
        # file (loaded with use_safetensors=False even beside safetensors) is scanned first.
        from honed.models.pickle_scan import scan_pickles

        for finding in scan_pickles(path):
            log.warning("unrecognised import in a pickle (loaded anyway): %s", finding)
    digests = {p.name: sha256_file(p) for p in files}
    return ResolvedModel(path=path, source=cfg.base, kind=kind, weight_sha256=digests)


def load_kwargs(cfg: ModelConfig) -> dict:
    """Keyword arguments every ``from_pretrained`` call of a base model gets."""
    return {"trust_remote_code": cfg.trust_remote_code, "use_safetensors": not cfg.allow_pickle}
