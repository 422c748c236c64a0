"""Tiny ner case: a random 2-layer BERT and sentences whose spans use the field names of
Presidio's synthetic PII set (``full_text``, ``spans[entity_type, start_position,
end_position]``), mapped through the data section and task_options."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tests.helpers import WORDS, tiny_bert_folder

TASK = "ner"
METHODS = ("full", "lora")
#: Stand-ins for names and places, from the tiny tokenizer's vocabulary.
PEOPLE = ("profit", "sales", "revenue")
PLACES = ("market", "company")


def ner_rows(n: int = 40, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    filler = [w for w in WORDS if w not in PEOPLE + PLACES]
    rows = []
    for i in range(n):
        words = [rng.choice(filler) for _ in range(rng.randint(3, 6))]
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        prefix = " ".join(words[:2]) + " "
        text = f"{prefix}{person} in {place} {' '.join(words[2:])} {i}"
        p_start = len(prefix)
        g_start = p_start + len(person) + 4
        rows.append(
            {
                "full_text": text,
                "spans": [
                    {"entity_type": "PERSON", "entity_value": person,
                     "start_position": p_start, "end_position": p_start + len(person)},
                    {"entity_type": "GPE", "entity_value": place,
                     "start_position": g_start, "end_position": g_start + len(place)},
                ],
            }
        )  # fmt: skip
    return rows


def spec_dict(base: Path, data: Path, out: Path, method: str) -> dict[str, Any]:
    return {
        "name": "tiny-ner",
        "task": "ner",
        "output_dir": str(out),
        "model": {"base": str(base), "max_length": 32},
        "data": {
            "source": str(data),
            "text_field": "full_text",
            "split": {"test_size": 0.2, "validation_size": 0.2, "seed": 1},
        },
        "task_options": {
            "start_key": "start_position",
            "end_key": "end_position",
            "entity_map": {"GPE": "LOCATION"},
        },
        "method": {"name": method, "lora": {"r": 4, "alpha": 8}},
        "training": {
            "epochs": 2,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "logging_steps": 2,
            "num_threads": 1,
        },
    }


def build_spec(tmp_path: Path, method: str = "lora", steps: int | None = 2) -> Any:
    from honed.spec import parse_spec

    base = tmp_path / "base-bert"
    if not (base / "config.json").is_file():
        tiny_bert_folder(base, hidden=64)
    data = tmp_path / "pii.json"
    data.write_text(json.dumps(ner_rows()))
    spec = spec_dict(base, data, tmp_path / "run", method)
    if steps:
        spec["training"].update({"max_steps": steps, "early_stopping_patience": None})
    return parse_spec(spec)
