"""Tiny task cases for the shared task x method contract test (tests/unit/train/test_contract.py).

One module per task, discovered by file name (PEFT's test layout idea): adding a task's case is
adding a file here, without touching the contract test. A case module defines:

- ``TASK``: the registered task name;
- ``build_spec(tmp_path, method) -> RunSpec``: writes a tiny random base model folder and a tiny
  data file under ``tmp_path`` and returns a spec that trains two steps (``max_steps: 2``);
- ``METHODS`` (optional): methods the task supports; default: every registered method;
- ``SLOW_METHODS`` (optional): methods whose case is too slow for the default run (marked
  ``slow``);
- ``FROZEN_OK`` (optional): substrings of trainable parameter names allowed not to change in two
  steps (e.g. a parameter that gets no gradient by construction).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def case_modules() -> dict[str, ModuleType]:
    """{file name: module} of every case module in this folder."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return {name: importlib.import_module(f"{__name__}.{name}") for name in names}
