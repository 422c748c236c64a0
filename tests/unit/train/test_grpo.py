"""The grpo task: prompt data, graders wired as TRL's reward, the training arguments, and the
held-out report (pass rate before / after, mean reward, KL to the reference), gated through
eval.min_metrics; the adapter serves like an SFT adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.tiny_cases import grpo as case

from honed.errors import SpecError
from honed.evals.graders import build_grader
from honed.paths import RunPaths
from honed.train.tasks import get_task
from honed.train.tasks.grpo import (
    GrpoOptions,
    grade,
    grader_fields,
    grpo_config_kwargs,
    kl_estimate,
    reward_function,
    rollout_func,
)

TASK = get_task("grpo")


def test_reward_function_scores_trl_inputs() -> None:
    grader = build_grader(
        [{"kind": "exact", "field": "answer"}, {"kind": "regex", "pattern": "(?i)[a-z]+"}]
    )
    reward = reward_function(grader)
    prompts = [[{"role": "user", "content": "capital of france?"}]] * 3
    completions = [[{"role": "assistant", "content": c}] for c in ("Paris", "Rome", "42")]
    fields = [json.dumps({"answer": "paris"})] * 3
    # TRL passes extra columns and its own keyword arguments; both are accepted.
    scores = reward(prompts=prompts, completions=completions, fields=fields, trainer_state=None)
    assert scores == [1.0, 0.5, 0.0]


def test_prompt_data_from_text_and_messages(tmp_path: Path) -> None:
    spec = case.build_spec(tmp_path)
    data = TASK.prepare_data(spec)
    row = data.train[0]
    assert row["prompt"][-1]["role"] == "user" and "answer" in row["fields"]
    assert sum(len(data.split(s)) for s in ("train", "validation", "test")) == 24

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"q {i}"},
                {"role": "assistant", "content": "a"},
            ],
            "answer": "a",
        }
        for i in range(6)
    ]
    rows.append({"messages": [{"role": "user", "content": "no answer field"}]})
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chat = spec.with_overrides(
        data={**spec.data.model_dump(), "source": str(path), "on_bad_rows": "skip"}
    )
    data = TASK.prepare_data(chat)
    kept = data.train + data.validation + data.test
    assert len(kept) == 6
    assert all(len(r["prompt"]) == 1 and r["prompt"][0]["role"] == "user" for r in kept)
    assert any("answer" in b for b in data.report["bad_rows"])


def test_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="unknown grader kind 'fuzzy'"):
        case.build_spec(tmp_path, graders=[{"kind": "fuzzy"}])
    with pytest.raises(SpecError, match="graders"):
        case.build_spec(tmp_path, graders=[])
    opts = GrpoOptions(
        graders=[
            {"kind": "numeric", "field": "n"},
            {"kind": "json_schema", "schema": {}, "fields": {"a": "b"}},
        ]
    )
    assert grader_fields(opts) == ["n", "b"]
    assert opts.beta > 0  # the KL to the reference is on (and logged) by default


def test_rollout_engine_picks_who_samples() -> None:
    from types import SimpleNamespace

    from honed.train.rollouts import trl_rollout_func

    graders = [{"kind": "numeric", "field": "n"}]
    args = SimpleNamespace(min_p=None, repetition_penalty=1.0, use_vllm=False, fsdp="")
    assert rollout_func(GrpoOptions(graders=graders), args) is trl_rollout_func  # the default
    assert rollout_func(GrpoOptions(graders=graders, rollout_engine="trl"), args) is None
    args.repetition_penalty = 1.2  # honed's loop does not apply one: TRL generates
    assert rollout_func(GrpoOptions(graders=graders), args) is None
    with pytest.raises(ValueError, match="rollout_engine"):
        GrpoOptions(graders=graders, rollout_engine="vllm")


def test_batch_must_hold_whole_groups(tmp_path: Path) -> None:
    spec = case.build_spec(tmp_path)
    paths = RunPaths(tmp_path / "x")
    opts = GrpoOptions(graders=case.default_graders(), num_generations=3)
    with pytest.raises(SpecError, match=r"multiple of task_options\.num_generations"):
        grpo_config_kwargs(spec, paths, opts)
    kwargs = grpo_config_kwargs(spec, paths, GrpoOptions(graders=case.default_graders()))
    assert kwargs["beta"] == 0.04 and kwargs["eval_strategy"] == "no"


def test_grpo_checkpoints_activations_unless_the_spec_says_no(tmp_path: Path) -> None:
    """Unset, grpo recomputes activations (its backward holds every completion of a step
    with its prompt: 20.8 -> 10.4 GB RSS on the RLHF example); the spec can turn it off."""
    spec = case.build_spec(tmp_path)
    paths, opts = RunPaths(tmp_path / "x"), GrpoOptions(graders=case.default_graders())
    assert spec.training.gradient_checkpointing is None
    assert grpo_config_kwargs(spec, paths, opts)["activation_checkpointing"] is True
    off = spec.training.model_copy(update={"gradient_checkpointing": False})
    spec = spec.model_copy(update={"training": off})
    assert grpo_config_kwargs(spec, paths, opts)["activation_checkpointing"] is False


def test_grade_and_kl_estimate() -> None:
    grader = build_grader({"kind": "numeric", "field": "n"})
    rows = [{"prompt": [{"role": "user", "content": "x"}], "fields": {"n": i}} for i in (1, 2)]
    result, scores = grade(grader, rows, ["1", "3"], threshold=1.0)
    assert scores == [1.0, 0.0] and result["grader_pass_rate"] == 0.5
    kl = kl_estimate([[-1.0, -1.0], [-2.0]], [[-1.5, -1.5], [-2.0]])
    assert kl["kl_to_reference"] == pytest.approx(0.5)
    assert kl["kl_per_token"] == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> object:
    from honed.pipeline.run import train_and_evaluate

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("grpo")
    spec = case.build_spec(tmp)
    # A floor no model reaches: the run is saved, reported and not registered.
    spec = spec.with_overrides(
        eval={**spec.eval.model_dump(), "min_metrics": {"grader_pass_rate": 1.01}}
    )
    return train_and_evaluate(spec, register=False)


def test_pipeline_report_and_gate(run) -> None:
    metrics = json.loads(run.paths.metrics.read_text())
    for key in (
        "test_grader_pass_rate",
        "test_base_grader_pass_rate",
        "test_mean_reward",
        "test_base_mean_reward",
        "test_kl_to_reference",
        "test_kl_per_token",
    ):
        assert isinstance(metrics[key], float), key
    assert 0 <= metrics["test_grader_pass_rate"] <= 1
    # Two LoRA steps at lr 1e-2 move the policy: the KL estimate is not exactly zero.
    assert metrics["test_kl_to_reference"] != 0.0
    assert set(metrics["test"]["tuned"]["graders"]) == {"length", "exact"}
    assert run.gate_failures == [f"grader_pass_rate {metrics['test_grader_pass_rate']:.4f} < 1.01"]
    samples = json.loads((run.paths.root / "samples.json").read_text())["samples"]
    assert {"prompt", "reference", "base", "tuned"} <= set(samples[0])
    history = json.loads((run.paths.root / "log_history.json").read_text())
    assert any("kl" in entry for entry in history)  # beta > 0: TRL logs the KL while training
    assert run.lineage["task"] == "grpo" and run.lineage["is_adapter"] is True
    assert "grpo" in run.paths.card.read_text()


def test_adapter_loads_with_peft_and_serves(run) -> None:
    from peft import PeftModel
    from tests.unit.serve._serve_support import run_app
    from transformers import AutoModelForCausalLM

    from honed.serve.settings import ServeSettings

    base_dir = (run.paths.root / run.lineage["base_model"]["path"]).resolve()  # portable
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), str(run.paths.model_dir)
    )
    assert model.peft_config["default"].task_type == "CAUSAL_LM"

    settings = ServeSettings(models=[str(base_dir), f"rft={run.paths.model_dir}"], max_wait_ms=2.0)
    body = {
        "model": "rft",
        "messages": [{"role": "user", "content": "what is the capital"}],
        "max_tokens": 4,
        "temperature": 0,
    }

    async def chat(client, app):
        return await client.post("/v1/chat/completions", json=body)

    response = run_app(settings, chat)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


def test_the_promotion_gate_grades_both_models(run) -> None:
    """Task grpo at the champion gate: both answer the frozen prompts, the graders (the python
    grader's file kept in the run folder) score them; pass / fail compared like accuracy."""
    from honed.evals.config import GateConfig
    from honed.evals.gate_run import gate_folders

    folder = run.paths.root
    assert (folder / "length_grader.py").is_file()  # kept for later grading
    decision = gate_folders(folder, folder, GateConfig(), {})
    assert decision.passed, decision.failed  # a model against itself is never worse
    metrics = decision.evidence["metrics"]
    assert decision.evidence["gated"] == ["grader_pass_rate"]
    assert metrics["grader_pass_rate"]["challenger"] == metrics["grader_pass_rate"]["champion"]
    floored = gate_folders(folder, folder, GateConfig(), {"grader_pass_rate": 1.01})
    assert not floored.passed
    assert any("grader_pass_rate" in c["name"] for c in floored.failed)


def test_rlhf_reward_run_as_the_grader_trains_reports_and_gates(tmp_path: Path) -> None:
    """RLHF: a `reward` run, then grpo against it through a reward_model grader named relative
    to the spec. The report gives the reward model's mean score of base and tuned answers; the
    run folder's spec names the reward model relative to itself, so the promotion gate grades
    the folder again with the same reward model."""
    import yaml
    from tests.tiny_cases import reward as reward_case

    from honed.evals.config import GateConfig
    from honed.evals.gate_run import gate_folders, spec_of
    from honed.pipeline.run import train_and_evaluate
    from honed.train.tasks.grpo import load_reward_scorer

    torch.set_num_threads(1)
    reward = train_and_evaluate(reward_case.build_spec(tmp_path / "rm", "lora"), register=False)
    grader = {"kind": "reward_model", "name": "judge", "model": "../rm/run", "scale": 2.0}
    spec = case.build_spec(tmp_path / "policy", graders=[grader])
    run = train_and_evaluate(spec, register=False)

    metrics = json.loads(run.paths.metrics.read_text())
    for key in ("test_mean_reward", "test_base_mean_reward"):
        assert 0.0 < metrics[key] < 1.0, key  # sigmoid(reward / scale)
    assert metrics["test"]["tuned"]["rows"] == metrics["test"]["base"]["rows"] > 0
    kept = spec_of(run.paths.root)["task_options"]["graders"][0]["model"]
    assert (run.paths.root / kept).resolve() == reward.paths.root.resolve()
    assert yaml.safe_load(run.paths.spec.read_text())["task_options"]["graders"][0]["model"] == kept

    folder = run.paths.root
    decision = gate_folders(folder, folder, GateConfig(), {}, reward_loader=load_reward_scorer)
    assert decision.passed, decision.failed
    assert decision.evidence["gated"] == ["grader_pass_rate"]


def test_a_reward_model_at_chance_is_named(tmp_path: Path, caplog) -> None:
    """The RLHF example's reward model (0.527 on 150 held-out pairs) is not above chance: the
    grpo task says so, once; a clear judge (0.65 on 150) and a folder without held-out
    metrics pass silently."""
    from honed.train.tasks.grpo import judge_warning

    def folder(name: str, test: dict | None) -> Path:
        path = tmp_path / name
        path.mkdir()
        if test is not None:
            (path / "metrics.json").write_text(json.dumps({"test": test}))
        return path

    weak = folder("weak", {"pairwise_accuracy": 0.5267, "rows": 150})
    with caplog.at_level("WARNING", logger="honed.train"):
        assert "not above chance" in judge_warning(weak)
        judge_warning(weak)
    assert sum("not above chance" in r.message for r in caplog.records) == 1
    assert judge_warning(folder("good", {"pairwise_accuracy": 0.65, "rows": 150})) is None
    assert judge_warning(folder("bare", None)) is None
