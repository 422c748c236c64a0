"""Scan pickle-format weights before anything unpickles them (picklescan, statically).

A pickle names the Python callables it calls while loading (``os.system``, ``builtins.eval``,
``subprocess.Popen``...). picklescan lists those imports without executing anything and sorts
them into innocuous (torch tensors, collections), suspicious (unknown) and dangerous ones.
A dangerous import refuses the folder; suspicious ones are returned as findings to report.
Used whenever ``model.allow_pickle`` lets pickle weights load (``honed.models.resolve``);
``honed.security.supply.scan_pickles`` is the same function.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from honed.errors import ModelError

#: Pickle containers: torch.save files (a zip of pickles, or the legacy stream), plain pickles.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")


class UnsafePickleError(ModelError):
    """A pickle file imports a callable that can run code when it is loaded."""


def pickle_files(folder: Path) -> list[Path]:
    """Pickle-format files under ``folder`` (recursive, sorted; symlinked files included)."""
    found = []
    for root, _dirs, names in os.walk(folder):
        found += [Path(root) / n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
    return sorted(found)


def _scan_file(path: Path):
    from picklescan.scanner import scan_file_path

    # picklescan logs every dangerous import at WARNING itself; the error below says it.
    logging.getLogger("picklescan").setLevel(logging.ERROR)
    try:
        return scan_file_path(str(path))
    except Exception as err:  # a malformed archive: refuse rather than load it unscanned
        raise UnsafePickleError(f"{path}: could not be scanned as a pickle ({err})") from None


def scan_pickles(folder: Path) -> list[str]:
    """Scan every pickle-format file under ``folder``; returns findings (``FILE: module.name``
    imports picklescan does not know, to report) and raises UnsafePickleError naming the file
    and the import when one is dangerous, or when a file cannot be parsed to the end."""
    findings: list[str] = []
    for path in pickle_files(Path(folder)):
        result = _scan_file(path)
        rel = path.relative_to(folder)
        dangerous = sorted(
            f"{g.module}.{g.name}" for g in result.globals if g.safety.value == "dangerous"
        )
        if dangerous:
            raise UnsafePickleError(
                f"{path}: refused to load; the pickle imports {', '.join(dangerous)}, which can "
                "run code when it is unpickled. Use safetensors weights from a trusted source."
            )
        if result.scan_err:
            raise UnsafePickleError(
                f"{path}: refused to load; the pickle could not be parsed to the end, so what "
                "it would run is unknown"
            )
        findings += [
            f"{rel}: {g.module}.{g.name}" for g in result.globals if g.safety.value == "suspicious"
        ]
    return findings
