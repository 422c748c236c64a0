"""Graders (honed.evals.graders): each kind on passing and failing completions, the weighted
mean, and clear errors for bad configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from honed.errors import SpecError
from honed.evals.graders import (
    Grader,
    GraderError,
    WeightedGrader,
    build_grader,
    strip_code_fence,
)

ROW = {"answer": "42", "city": "Paris"}


def score(cfg, completion: str, row=ROW, base_dir=None) -> float:
    return build_grader(cfg, base_dir).score("q", completion, row)


def test_exact_normalises_case_and_whitespace() -> None:
    cfg = {"kind": "exact", "field": "city"}
    assert score(cfg, "  paris ") == 1.0
    assert score(cfg, "Paris, France") == 0.0
    assert score({**cfg, "case_sensitive": True}, "paris") == 0.0
    assert score({**cfg, "strip_punctuation": True}, "Paris.") == 1.0


def test_regex_fullmatch_search_and_capture() -> None:
    assert score({"kind": "regex", "pattern": r"\d+"}, " 42 ") == 1.0
    assert score({"kind": "regex", "pattern": r"\d+"}, "it is 42") == 0.0
    assert score({"kind": "regex", "pattern": r"\d+", "mode": "search"}, "it is 42") == 1.0
    capture = {"kind": "regex", "pattern": r"answer: (\d+)", "mode": "search", "group": 1}
    assert score({**capture, "field": "answer"}, "so answer: 42") == 1.0
    assert score({**capture, "field": "answer"}, "so answer: 41") == 0.0


def test_json_schema_inline_fence_and_fields(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    cfg = {"kind": "json_schema", "schema": schema, "fields": {"answer": "answer"}}
    assert score(cfg, '{"answer": 42}') == 1.0
    assert score(cfg, '```json\n{"answer": 42}\n```') == 1.0
    assert score(cfg, '{"answer": 41}') == 0.0
    assert score({**cfg, "partial_credit": True}, '{"answer": 41}') == 0.5
    assert score(cfg, '{"answer": "42"}') == 0.0  # schema: integer
    assert score(cfg, "the answer is 42") == 0.0
    (tmp_path / "s.json").write_text(json.dumps(schema))
    from_file = {"kind": "json_schema", "schema_file": "s.json"}
    assert score(from_file, '{"answer": 1}', base_dir=tmp_path) == 1.0


def test_strip_code_fence() -> None:
    assert strip_code_fence('```\n{"a": 1}\n```') == '{"a": 1}'
    assert strip_code_fence('{"a": 1}') == '{"a": 1}'


def test_numeric_last_number_capture_and_tolerance() -> None:
    cfg = {"kind": "numeric", "field": "answer"}
    assert score(cfg, "3 + 39 = 42") == 1.0
    assert score(cfg, "42 or maybe 43") == 0.0
    assert score(cfg, "no number") == 0.0
    assert score({**cfg, "abs_tol": 1.5}, "43") == 1.0
    assert score({**cfg, "rel_tol": 0.01}, "42.3") == 1.0
    assert score({**cfg, "pattern": r"answer=(\S+)"}, "answer=42 then 7") == 1.0
    assert score(cfg, "1,000", row={"answer": 1000}) == 1.0


def test_python_grader_from_file_and_module(tmp_path: Path) -> None:
    (tmp_path / "my_grader.py").write_text(
        "def short(prompt, completion, row):\n    return len(completion) <= 5\n"
        "def bad(prompt, completion, row):\n    return 7\n"
    )
    assert score({"kind": "python", "function": "my_grader.py:short"}, "ok", base_dir=tmp_path)
    g = build_grader({"kind": "python", "function": "my_grader.py:bad"}, tmp_path)
    with pytest.raises(GraderError, match=r"expected a number in \[0, 1\]"):
        g.score("q", "x", ROW)
    # An importable module: the stdlib's operator.truth on (prompt, completion, row) fails, so
    # use a module function with the right signature from this test package.
    with pytest.raises(SpecError, match="has no function"):
        build_grader({"kind": "python", "function": "json:nope"})
    with pytest.raises(SpecError, match="not found"):
        build_grader({"kind": "python", "function": "missing.py:f"}, tmp_path)


def test_weighted_mean_of_several() -> None:
    g = build_grader(
        [
            {"kind": "regex", "pattern": r"\{.*\}", "weight": 1},
            {"kind": "numeric", "field": "answer", "weight": 3},
        ]
    )
    assert isinstance(g, WeightedGrader) and isinstance(g, Grader)
    assert g.score("q", '{"answer": 42}', ROW) == 1.0
    assert g.score("q", '{"answer": 1}', ROW) == 0.25
    assert g.score("q", "42", ROW) == 0.75


def test_missing_row_field_is_named() -> None:
    with pytest.raises(GraderError, match="no field 'expected'"):
        score({"kind": "exact", "field": "expected"}, "x")


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"kind": "fuzzy"}, "unknown grader kind 'fuzzy'"),
        ({"field": "x"}, "with a 'kind'"),
        ({"kind": "exact"}, "field: Field required"),
        ({"kind": "regex", "pattern": "("}, "not a valid regex"),
        ({"kind": "regex", "pattern": "a", "group": 1, "field": "x"}, "has 0 group"),
        ({"kind": "regex", "pattern": "(a)", "group": 1}, "group and field go together"),
        ({"kind": "json_schema"}, "exactly one of schema"),
        ({"kind": "json_schema", "schema": {"type": "nope"}}, "invalid JSON Schema"),
        ({"kind": "numeric", "field": "a", "pattern": r"\d+"}, "capture group"),
        ({"kind": "python", "function": "no_colon"}, "module:function"),
        ({"kind": "exact", "field": "a", "weight": 0}, "weight"),
        ({"kind": "exact", "field": "a", "typo": 1}, "typo"),
    ],
)
def test_bad_configs_are_clear(cfg, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_grader(cfg)


def test_empty_list_is_refused() -> None:
    with pytest.raises(SpecError, match="at least one grader"):
        build_grader([])


def test_reward_model_grader_scores_with_a_reward_run(tmp_path: Path) -> None:
    """A tiny `reward` run (two LoRA steps) as grader: sigmoid of its reward, in (0, 1), the
    same as `honed score` computes; a folder that is no reward model is a clear error."""
    import torch
    from tests.tiny_cases import reward as case

    from honed.models.resolve import resolve_model
    from honed.paths import RunPaths
    from honed.registry.lineage import build_lineage
    from honed.train.score import load_reward_model
    from honed.train.tasks import get_task

    torch.set_num_threads(1)
    spec = case.build_spec(tmp_path, "lora")
    task, base = get_task("reward"), resolve_model(spec.model)
    data = task.prepare_data(spec)
    paths = RunPaths(Path(spec.output_dir)).create()
    task.train(spec, data, base, paths, resume=False)
    paths.lineage.write_text(json.dumps(build_lineage(spec, base, data, True), default=str))

    from honed.train.tasks.grpo import load_reward_scorer

    cfg = {"kind": "reward_model", "model": "run", "scale": 2.0}
    grader = build_grader(cfg, tmp_path, reward_loader=load_reward_scorer)
    prompts, answers = ["human please help assistant"] * 2, [" sorry i may help", " rude you"]
    scores = grader.score_batch(prompts, answers, [{}, {}])
    rewards = load_reward_model(paths.root).score(prompts, answers)
    assert scores == pytest.approx([1 / (1 + math.exp(-r / 2.0)) for r in rewards], abs=1e-5)
    assert all(0.0 < s < 1.0 for s in scores)
    with pytest.raises(SpecError, match="is no run folder"):
        build_grader({**cfg, "model": "nowhere"}, tmp_path, reward_loader=load_reward_scorer)
    with pytest.raises(SpecError, match="need a reward model loader"):
        build_grader(cfg, tmp_path)
