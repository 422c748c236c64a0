"""Building and loading honed's hand-written CPU kernels (``models/*.cpp``).

Each source is a plain C++ file with no torch headers, called through ctypes with data
pointers: ``cpu_decode.cpp`` (the fused batch-1 decode step) and ``cpu_encoder.cpp`` (int8
Linear layers and per-text attention for encoder classifiers). A source is built once per
machine with the system compiler (about a second) into ``<state>/cache/kernels``, keyed on the
source, the compiler's version and the flags, and renamed into place atomically (processes
that build it at once write the same bytes). An image without a compiler ships the libraries
prebuilt next to the sources: ``python -m honed.models.native`` (deploy/Dockerfile's build
stage). Where neither works (no AVX2, no compiler, a failed build) the callers keep their
torch paths and ``load`` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger("honed.serve")

FOLDER = Path(__file__).parent
SOURCES = ("cpu_decode.cpp", "cpu_encoder.cpp")
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]


_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")
_WARNED: set[str] = set()


def switch(name: str) -> str:
    """An on/off environment switch of the kernels: "off" (0/false/no/off), "on"
    (1/true/yes/on) or "auto" (unset, empty or "auto"). Any other value is read as "auto" and
    named in a warning once, so a typo does not pass silently."""
    value = os.environ.get(name, "").strip().lower()
    if value in _OFF:
        return "off"
    if value in _ON:
        return "on"
    if value not in ("", "auto") and name not in _WARNED:
        _WARNED.add(name)
        log.warning("%s=%r is not one of auto, 0/false/no/off, 1/true/yes/on: auto", name, value)
    return "auto"


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _key(source: Path, *parts: str) -> str:
    return hashlib.sha256(source.read_bytes() + " ".join([*FLAGS, *parts]).encode()).hexdigest()


def prebuilt(source: Path, folder: Path) -> Path:
    """Where a build of ``source`` made ahead of time lives in ``folder``."""
    return folder / f"{source.stem}-{_key(source)[:16]}.so"


def build(source: Path, cxx: str, out: Path | None = None) -> Path:
    """Compile ``source`` once per (source, compiler, flags) into the state cache (or ``out``);
    later processes load the file."""
    if out is None:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True)
        from honed.state import cache_dir

        out = cache_dir("kernels") / f"{source.stem}-{_key(source, version.stdout)[:16]}.so"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        built = Path(tmp) / out.name
        subprocess.run(
            [cxx, *FLAGS, str(source), "-o", str(built)], capture_output=True, text=True, check=True
        )
        os.replace(built, out)  # atomic: a concurrent build writes the same bytes
    log.info("built %s into %s", source.name, out)
    return out


def load(source: Path, folder: Path, what: str) -> tuple[ctypes.CDLL | None, str | None]:
    """The library of ``source`` (prebuilt in ``folder``, else built) or None and why not;
    ``what`` names the kernel in the warning a failed build logs."""
    x86 = platform.machine() in ("x86_64", "AMD64")
    if not x86 or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return None, "the CPU has no AVX2"
    cxx, ready = compiler(), prebuilt(source, folder)
    if cxx is None and not ready.exists():
        return None, f"no C++ compiler found (set CXX) and no prebuilt {what}"
    try:
        return ctypes.CDLL(str(ready if ready.exists() else build(source, cxx))), None
    except (OSError, subprocess.SubprocessError) as exc:
        said = getattr(exc, "stderr", None) or ""  # the compiler's own words, when it ran
        why = f"{exc}{': ' + said.strip()[-300:] if said.strip() else ''}"
        log.warning("%s did not build (%s)", what, why)
        return None, f"{what} did not build: {why}"


def main(argv: list[str] | None = None) -> None:
    """``python -m honed.models.native [FOLDER]``: build every kernel ahead of time (default:
    into the installed package, where an image without a compiler finds them)."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("folder", nargs="?", type=Path, default=FOLDER)
    folder = p.parse_args(argv).folder
    cxx = compiler()
    if cxx is None:
        raise SystemExit("honed.models.native: no C++ compiler found (set CXX)")
    folder.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        print(build(FOLDER / name, cxx, prebuilt(FOLDER / name, folder)))


if __name__ == "__main__":
    main()
