"""Tiny classification case: a random 2-layer BERT and a synthetic PhraseBank-format file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import classification_spec_dict, tiny_bert_folder, write_phrasebank

TASK = "classification"
METHODS = ("full", "lora", "qlora")
SLOW_METHODS = ()


def build_spec(tmp_path: Path, method: str = "lora") -> Any:
    from honed.spec import parse_spec

    # hidden 64: bitsandbytes quantizes in blocks of 64 values (qlora case).
    base = tmp_path / "base-bert"
    if not (base / "config.json").is_file():
        tiny_bert_folder(base, hidden=64)
    data = write_phrasebank(tmp_path / "phrases.txt", n_per_label=10)
    spec = classification_spec_dict(base, data, tmp_path / "run", method)
    spec["training"].update({"max_steps": 2, "early_stopping_patience": None})
    spec["eval"]["baselines"] = ["majority"]
    spec["model"]["pooling"] = "mean"  # the non-stock head: save/load/merge must keep it
    return parse_spec(spec)
