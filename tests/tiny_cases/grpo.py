"""Tiny grpo case: the random 2-layer Llama and ChatML word tokenizer of the sft case, text
prompts with an expected answer, and graders whose scores vary between completions (a random
model never answers right, and GRPO learns nothing from a group whose rewards are all equal).

``build_spec(tmp_path, method="lora", graders=None) -> RunSpec``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

TASK = "grpo"
METHODS = ("full", "lora", "qlora")
SLOW_METHODS = ("qlora",)

#: A python grader (a file next to the data): longer completions score higher, so every group
#: of random completions has a spread of rewards.
LENGTH_GRADER = "def length(prompt, completion, row):\n    return min(len(completion) / 60, 1.0)\n"


def sft_case() -> Any:
    """The sft tiny case module (chat tokenizer, tiny Llama writer), loaded by path."""
    path = Path(__file__).with_name("sft.py")
    spec = importlib.util.spec_from_file_location("honed_tiny_sft", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prompt_rows(n: int = 24) -> list[dict]:
    pairs = [("capital of france", "paris"), ("capital of spain", "madrid"), ("a colour", "red")]
    rows = []
    for i in range(n):
        question, answer = pairs[i % len(pairs)]
        rows.append({"prompt": f"what is the {question} {i}", "answer": answer, "id": i})
    return rows


def default_graders() -> list[dict]:
    return [
        {"kind": "python", "function": "length_grader.py:length", "weight": 1},
        {"kind": "exact", "field": "answer", "weight": 1},
    ]


def build_spec(tmp_path: Path, method: str = "lora", graders: list[dict] | None = None) -> Any:
    import yaml

    from honed.spec import load_spec

    sft = sft_case()
    base = tmp_path / "base-llama"
    if not (base / "config.json").is_file():
        sft.save_base(base)
    (tmp_path / "length_grader.py").write_text(LENGTH_GRADER)
    data = tmp_path / "prompts.json"
    sft.write_json(data, prompt_rows())
    spec = sft.spec_dict(base, data, method, tmp_path / "run")
    spec.update(
        name=f"tiny-grpo-{method}",
        task=TASK,
        task_options={
            "graders": default_graders() if graders is None else graders,
            "num_generations": 2,
            "max_completion_tokens": 6,
            "eval_rows": 4,
            "samples": 2,
        },
    )
    spec["eval"] = {"generation": {"max_new_tokens": 6, "repetition_penalty": 1.0}}
    # Relative grader paths resolve next to the spec: a spec file in tmp_path.
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_spec(path)
