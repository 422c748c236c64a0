"""The data scan run before every training run: PII, secrets, duplicates with conflicting
labels, likely label errors, planted trigger phrases and outliers, each handled by the spec's
policy (``scan:``; see config.py).

The config is imported eagerly (the run spec composes it); the scanner itself on first use, so
reading a spec does not import numpy, scikit-learn or Presidio.
"""

from __future__ import annotations

import importlib
from typing import Any

from honed.security.scan.config import ScanConfig, ScanPolicy

_LAZY = {
    "ScanOutcome": "honed.security.scan.core",
    "scan_rows": "honed.security.scan.core",
    "scan_split_data": "honed.security.scan.core",
    "KINDS": "honed.security.scan.findings",
    "Finding": "honed.security.scan.findings",
    "ScanFailed": "honed.security.scan.findings",
    "mask": "honed.security.scan.findings",
}

__all__ = ["ScanConfig", "ScanPolicy", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
