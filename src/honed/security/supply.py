"""Supply chain: what a model is made of, checked where it loads.

- ``scan_pickles(folder)``: picklescan over every pickle-format file; a dangerous import
  (``os.system``, ``builtins.eval``...) refuses the folder (``honed.models.pickle_scan``, run
  whenever ``model.allow_pickle`` lets pickle weights load).
- ``model_manifest(folder)`` / ``verify_manifest(folder, expected)``: sha256 of the files that
  decide what a model computes (weights, configs, tokenizer, chat template). The registry
  records the manifest at registration and checks it at every load of a registered version
  (``honed.registry.store``), so a file swapped in the artifact store is refused, by name.
- ``write_sbom(path)``: a CycloneDX JSON SBOM of the installed Python environment (offline),
  stored with each registered version as ``sbom.cdx.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from honed.errors import HonedError
from honed.models.digest import sha256_file
from honed.models.pickle_scan import PICKLE_SUFFIXES, UnsafePickleError, scan_pickles

__all__ = [
    "DigestMismatchError",
    "UnsafePickleError",
    "model_manifest",
    "scan_pickles",
    "verify_manifest",
    "write_sbom",
]

#: Files whose bytes decide what a loaded model computes, besides the weights.
MANIFEST_NAMES = (
    "config.json",
    "adapter_config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "lineage.json",  # names the base an adapter loads over, and that base's digest
)
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
_SKIP_DIRS = {"checkpoints"}  # never registered (registry/store.py stages without them)
SBOM_FILE = "sbom.cdx.json"
#: Registry version tag (and pyfunc model_config key) holding the manifest, {file: sha256}.
MANIFEST_TAG = "model_manifest"


class DigestMismatchError(HonedError):
    """A model file differs from (or is missing against) the digest recorded at registration."""


def _manifest_files(folder: Path) -> list[Path]:
    """Weights anywhere under ``folder`` (heads, sub-models), named config files at its top."""
    files = [folder / n for n in MANIFEST_NAMES if (folder / n).is_file()]
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        files += [Path(root) / n for n in names if n.endswith(WEIGHT_SUFFIXES)]
    return sorted(set(files))


# (path, size, mtime_ns, ctime_ns, inode) -> sha256: a file that was hashed and has not
# changed since is not hashed again (the alias poller and repeated loads in one process stay cheap).
_VERIFIED: dict[tuple[str, int, int, int, int], str] = {}
_LOCK = threading.Lock()


def _digest(path: Path) -> str:
    st = path.stat()
    # ctime too: a writer can reset mtime (utime), not ctime.
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    with _LOCK:
        known = _VERIFIED.get(key)
    if known is not None:
        return known
    digest = sha256_file(path)
    with _LOCK:
        _VERIFIED[key] = digest
    return digest


def _digests(paths: list[Path]) -> list[str]:
    """sha256 of each file; shards hash in parallel (hashlib releases the GIL)."""
    if len(paths) < 2:
        return [_digest(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(_digest, paths))


def model_manifest(folder: Path) -> dict[str, str]:
    """{path relative to ``folder``: sha256} of the files that decide what the model does."""
    folder = Path(folder)
    files = _manifest_files(folder)
    digests = _digests(files)
    return {p.relative_to(folder).as_posix(): d for p, d in zip(files, digests, strict=True)}


def verify_manifest(folder: Path, expected: dict[str, str], subject: str) -> None:
    """Raise DigestMismatchError naming the first file (in name order) whose sha256 differs
    from ``expected``, that is missing, or that was added since (a new weight file would
    load too). ``subject`` names the model in the message (e.g. ``NAME/3``)."""
    folder = Path(folder)
    present = {p.relative_to(folder).as_posix(): p for p in _manifest_files(folder)}
    actual = dict(zip(present, _digests(list(present.values())), strict=True))
    for name in sorted(set(expected) | set(present)):
        if name not in present:
            raise DigestMismatchError(
                f"{subject}: {folder / name} is missing; the registry recorded it at "
                "registration. Refusing to load an incomplete model."
            )
        if name not in expected:
            raise DigestMismatchError(
                f"{subject}: {folder / name} was not there at registration. Refusing to load "
                "a model folder that changed after it was registered."
            )
        if actual[name] != expected[name]:
            raise DigestMismatchError(
                f"{subject}: {folder / name} does not match the registry (sha256 "
                f"{actual[name][:16]}..., registered {expected[name][:16]}...). The file changed "
                "after registration; refusing to load it."
            )


_ENV_SBOM: dict[str, bytes] = {}  # per interpreter: the environment does not change in-process


def _environment_sbom(path: Path) -> dict[str, Any]:
    if sys.executable not in _ENV_SBOM:
        # --no-validate: schema validation of ~200 components takes about 40 s of CPU; the
        # document comes from the library's own serializer (tests validate a sample of it).
        cmd = [sys.executable, "-m", "cyclonedx_py", "environment", "--no-validate"]
        cmd += ["--of", "JSON", "-o", str(path), sys.executable]
        try:
            subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", "") or str(err)
            raise HonedError(f"SBOM: cyclonedx-py failed ({detail.strip()[-300:]})") from None
        _ENV_SBOM[sys.executable] = path.read_bytes()
    return json.loads(_ENV_SBOM[sys.executable])


def write_sbom(path: Path, components: list[dict[str, Any]] | None = None) -> Path:
    """A CycloneDX 1.6 JSON SBOM of this Python environment at ``path`` (cyclonedx-py's
    ``environment`` command: the installed distributions' metadata, nothing fetched).
    ``components`` (e.g. ``model_components``: the model's weights with their SHA-256) are
    listed with the environment's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bom = _environment_sbom(path)
    bom.setdefault("components", []).extend(components or [])
    path.write_text(json.dumps(bom, indent=2))
    return path


def model_components(name: str, manifest: dict[str, str]) -> list[dict[str, Any]]:
    """The model's weight files as CycloneDX ``machine-learning-model`` components."""
    return [
        {
            "type": "machine-learning-model",
            "bom-ref": f"model:{name}:{file}",
            "name": f"{name}/{file}",
            "hashes": [{"alg": "SHA-256", "content": digest}],
        }
        for file, digest in sorted(manifest.items())
        if file.endswith(WEIGHT_SUFFIXES)
    ]
