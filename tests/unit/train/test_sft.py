"""SFT data formats, completion-only labels, packing isolation and the generative evals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.tiny_cases.sft import build_spec, chat_tokenizer, save_base

from honed.data.loaders import RawData, Record
from honed.errors import DataError
from honed.evals import generative
from honed.train.tasks import sft

USER = {"role": "user", "content": "what is the capital of france"}
ANSWER = {"role": "assistant", "content": "paris"}


def _raw(*rows: dict) -> RawData:
    return RawData(records=[Record(r, "f.jsonl", i) for i, r in enumerate(rows, start=1)])


@pytest.mark.parametrize(
    ("fields", "fmt"),
    [
        ({"messages": [USER, ANSWER]}, "messages"),
        ({"instruction": "what is the capital of france", "output": "paris"}, "alpaca"),
        ({"prompt": "what is the capital of france", "completion": "paris"}, "prompt_completion"),
    ],
)
def test_formats_become_the_same_chat_row(fields: dict, fmt: str) -> None:
    rows, bad, detected = sft.chat_rows(_raw(fields))
    assert detected == fmt and not bad
    assert rows[0]["prompt"] == [USER] and rows[0]["completion"] == [ANSWER]


def test_alpaca_input_joins_the_instruction() -> None:
    rows, _, _ = sft.chat_rows(_raw({"instruction": "translate", "input": "hello", "output": "x"}))
    assert rows[0]["prompt"][0]["content"] == "translate\n\nhello"


def test_multi_turn_keeps_context_and_targets_the_last_answer() -> None:
    system = {"role": "system", "content": "be brief"}
    turns = [system, USER, ANSWER, {"role": "user", "content": "and spain"},
             {"role": "assistant", "content": "madrid"}]  # fmt: skip
    rows, _, _ = sft.chat_rows(_raw({"messages": turns}))
    assert rows[0]["prompt"] == turns[:-1] and rows[0]["completion"] == turns[-1:]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"messages": [USER]}, "last message must be a non-empty assistant"),
        ({"messages": [{"role": "bot", "content": "x"}, ANSWER]}, "needs a role"),
        ({"messages": "hello"}, "non-empty list"),
    ],
)
def test_bad_messages_are_reported_with_line(fields: dict, reason: str) -> None:
    _, bad, _ = sft.chat_rows(_raw({"messages": [USER, ANSWER]}, fields))
    assert len(bad) == 1 and bad[0].line == 2 and reason in bad[0].reason


def test_unknown_fields_name_the_expected_ones() -> None:
    with pytest.raises(DataError, match="instruction"):
        sft.chat_rows(_raw({"question": "q", "answer": "a"}))


def test_prepare_data_splits_dedups_and_reports(tmp_path: Path) -> None:
    spec = build_spec(tmp_path, "lora")
    rows = json.loads(Path(spec.data_source()).read_text())
    Path(spec.data_source()).write_text(json.dumps(rows + rows[:3]))  # 3 exact duplicates
    data = sft.TASK.prepare_data(spec)
    assert data.report["duplicates_removed"] == 3 and data.report["chat_format"] == "alpaca"
    assert sum(data.report["rows"].values()) == len(rows)
    test_prompts = {sft._prompt_key(r) for r in data.test}
    assert not test_prompts & {sft._prompt_key(r) for r in data.train + data.validation}


def test_packed_samples_do_not_attend_to_each_other(tmp_path: Path) -> None:
    """What the SFT collator feeds the model (flat ids + per-sample position_ids, no cache)
    gives each sample the logits it gets alone."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(str(save_base(tmp_path / "m"))).eval()
    model.config.use_cache = False  # as SftTask.load_model sets it
    a, b = list(range(4, 11)), list(range(12, 17))
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{"input_ids": a}, {"input_ids": b}]
    )
    assert "attention_mask" not in batch or batch["attention_mask"] is None
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        alone_a = model(input_ids=torch.tensor([a])).logits
        alone_b = model(input_ids=torch.tensor([b])).logits
    assert torch.allclose(packed[0, : len(a)], alone_a[0], atol=1e-5)
    assert torch.allclose(packed[0, len(a) :], alone_b[0], atol=1e-5)


def test_completion_loss_scores_only_answer_tokens(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(save_base(tmp_path / "m")))
    tokenizer = chat_tokenizer()
    row = {"prompt": [USER], "completion": [ANSWER]}
    out = generative.completion_loss(model, tokenizer, [row, row])
    # "paris" + "<|im_end|>": the newline after it is whitespace for this tokenizer.
    assert out["tokens"] == 2 * 2 and out["perplexity"] > 1
    assert out["perplexity"] == pytest.approx(torch.tensor(out["loss"]).exp().item(), rel=1e-3)


def test_generate_and_samples_files(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(save_base(tmp_path / "m")))
    tokenizer = chat_tokenizer()
    settings = generative.GenerationSettings(max_new_tokens=4, repetition_penalty=1.0)
    rows = [{"prompt": [USER], "completion": [ANSWER]}] * 3
    samples = generative.generate_samples({"base": model}, tokenizer, rows, settings)
    assert len(samples) == 3 and {"prompt", "reference", "base"} <= set(samples[0])
    files = generative.write_samples(samples, tmp_path, settings, "tiny")
    payload = json.loads(Path(files["json"]).read_text())
    assert payload["generation"]["max_new_tokens"] == 4
    assert "## Sample 3" in Path(files["markdown"]).read_text()


def test_format_adherence() -> None:
    out = generative.format_adherence(['{"a": 1}', "not json", "[1, 2]"], "json")
    assert out["valid"] == 2 and out["rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert out["failures"] == ["not json"]
    regex = generative.format_adherence(["ID-12", "id-1", " ID-7 "], "regex", r"ID-\d+")
    assert regex["valid"] == 2
    with pytest.raises(ValueError, match="bad regex"):
        generative.format_adherence(["x"], "regex", "(")
    with pytest.raises(ValueError, match="unknown kind"):
        generative.format_adherence(["x"], "yaml")


def test_sft_config_uses_validation_loss_and_packing(tmp_path: Path) -> None:
    from honed.paths import RunPaths

    spec = build_spec(tmp_path, "lora")
    packed = spec.model_copy(
        update={"training": spec.training.model_copy(update={"packing": True})}
    )
    kwargs = sft.sft_config_kwargs(packed, RunPaths(tmp_path / "run"))
    assert kwargs["metric_for_best_model"] == "loss" and kwargs["greater_is_better"] is False
    assert kwargs["packing"] and kwargs["completion_only_loss"]
    assert kwargs["train_sampling_strategy"] == "random"  # packed rows have no length to sort
    assert kwargs["max_length"] == spec.model.max_length


def test_trl_configs_raise_no_deprecation_the_user_did_not_cause(tmp_path: Path) -> None:
    """SFTConfig and DPOConfig built from a spec that never mentions checkpointing must not
    warn about the deprecated `gradient_checkpointing` name (honed passes the new one)."""
    import warnings

    from trl import DPOConfig, SFTConfig

    from honed.paths import RunPaths
    from honed.train.tasks._preference import trl_kwargs

    spec = build_spec(tmp_path, "lora")
    paths = RunPaths(tmp_path / "run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sft_args = SFTConfig(**sft.sft_config_kwargs(spec, paths))
        dpo_args = DPOConfig(**trl_kwargs(spec, paths))
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]
    assert spec.training.gradient_checkpointing is None  # unset: sft leaves it off
    assert sft_args.activation_checkpointing is False
    assert dpo_args.activation_checkpointing is False


def test_packing_auto_is_on_with_cuda_only(tmp_path: Path, monkeypatch) -> None:
    import torch

    from honed.paths import RunPaths

    spec = build_spec(tmp_path, "lora")
    assert spec.training.packing == "auto"
    for cuda in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        kwargs = sft.sft_config_kwargs(spec, RunPaths(tmp_path / "run"))
        assert kwargs["packing"] is cuda
    assert sft.use_packing(False) is False and sft.use_packing(True) is True


def test_resume_continues_from_checkpoint(tmp_path: Path, monkeypatch) -> None:
    from honed.models.resolve import resolve_model
    from honed.paths import RunPaths
    from honed.train import common

    torch.set_num_threads(1)
    spec = build_spec(tmp_path, "lora")
    base, data = resolve_model(spec.model), sft.TASK.prepare_data(spec)
    paths = RunPaths(Path(spec.output_dir)).create()
    sft.TASK.train(spec, data, base, paths, resume=False)  # 2 steps, checkpoint-2

    steps_run: list[int] = []
    original = common.train_and_save

    def counting(trainer, tokenizer, run_paths, resume):
        step = trainer.training_step

        def counted(*args, **kwargs):
            steps_run.append(1)
            return step(*args, **kwargs)

        trainer.training_step = counted
        return original(trainer, tokenizer, run_paths, resume)

    monkeypatch.setattr(common, "train_and_save", counting)
    longer = spec.with_overrides(training={**spec.training.model_dump(), "max_steps": 3})
    metrics = sft.TASK.train(longer, data, base, paths, resume=True)
    assert len(steps_run) == 1  # steps 1-2 came from checkpoint-2, only step 3 ran
    assert max(e["step"] for e in metrics["log_history"]) == 3


def test_pipeline_runs_sft_end_to_end(tmp_path: Path) -> None:
    from honed.pipeline.run import train_and_evaluate

    torch.set_num_threads(1)
    result = train_and_evaluate(build_spec(tmp_path, "lora"), register=False)
    root = result.paths.root
    for name in ("adapter_model.safetensors", "samples.md", "samples.json", "lineage.json"):
        assert (root / name).is_file(), name
    assert result.metrics["test_loss"] > 0 and result.metrics["test_base_loss"] > 0
    assert result.lineage["base_model"]["digest"]
