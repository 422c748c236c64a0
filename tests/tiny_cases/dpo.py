"""Tiny dpo case: a random 2-layer Llama and prompt/chosen/rejected pairs in a tiny vocabulary.

``build_spec(tmp_path, method="lora") -> RunSpec``; the tiny-model helpers live in the seq2seq
case (loaded by path).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

TASK = "dpo"
METHODS = ("full", "lora", "qlora")


def helpers() -> Any:
    """The seq2seq tiny case module (tokenizer, tiny models, writers)."""
    path = Path(__file__).with_name("seq2seq.py")
    spec = importlib.util.spec_from_file_location("honed_tiny_seq2seq", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def preference_rows(n: int = 24) -> list[dict]:
    topics = ["water", "tax", "health", "education", "energy", "grant"]
    rows = []
    for i in range(n):
        topic = topics[i % len(topics)]
        prompt = f"human please help with the {topic} law for {i % 7} years assistant"
        rows.append(
            {
                "prompt": prompt + " " * (i // 7),  # distinct prompts
                "chosen": f" sorry i may help with the {topic} report",
                "rejected": " yes harmful rude you" + " rude" * (i % 3),
            }
        )
    return rows


def build_pair_spec(tmp_path: Path, method: str, task: str) -> Any:
    """A tiny spec of a pairwise task (dpo, reward) over the same model and pairs."""
    from honed.spec import parse_spec

    tiny = helpers()
    base = tiny.save_base(tmp_path / "base-llama", "llama")
    data = tiny.write_jsonl(tmp_path / "pairs.jsonl", preference_rows())
    return parse_spec(tiny.spec_dict(base, data, method, task, tmp_path / "run"))


def build_spec(tmp_path: Path, method: str = "lora") -> Any:
    return build_pair_spec(tmp_path, method, TASK)
