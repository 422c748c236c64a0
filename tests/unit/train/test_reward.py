"""The reward task and `honed score`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from tests.tiny_cases import reward as case

from honed.errors import HonedError, ModelError
from honed.models.resolve import resolve_model
from honed.paths import RunPaths
from honed.pipeline.commands import register_score
from honed.registry.lineage import build_lineage
from honed.train.score import load_reward_model, score_rows
from honed.train.tasks import get_task
from honed.train.tasks.reward import encode


def _run(tmp_path: Path, method: str):
    torch.set_num_threads(1)
    spec = case.build_spec(tmp_path, method)
    task = get_task("reward")
    base = resolve_model(spec.model)
    data = task.prepare_data(spec)
    paths = RunPaths(Path(spec.output_dir)).create()
    task.train(spec, data, base, paths, resume=False)
    metrics = task.evaluate(spec, data, base, paths)
    paths.lineage.write_text(json.dumps(build_lineage(spec, base, data, method != "full")))
    return metrics, data, paths


def _score_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register_score(parser.add_subparsers())
    args = parser.parse_args(["score", *argv])
    return args.func(args)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_reward_model_trains_and_scores(tmp_path: Path, method: str, capsys) -> None:
    metrics, data, paths = _run(tmp_path, method)
    assert 0.0 <= metrics["test_pairwise_accuracy"] <= 1.0
    assert metrics["test_margin_mean"] == pytest.approx(
        metrics["test_chosen_score_mean"] - metrics["test_rejected_score_mean"], abs=1e-5
    )
    assert 0.0 <= metrics["baselines"]["longer_answer_accuracy"] <= 1.0

    # `honed score` on the run folder reproduces the evaluation (same encoding, same weights).
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in data.test))
    capsys.readouterr()  # drop the trainer's log lines
    assert _score_cli([str(paths.root), "--file", str(pairs)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    summary = lines[-1]["summary"]
    assert summary["pairs"] == len(data.test)
    assert summary["pairwise_accuracy"] == pytest.approx(metrics["test_pairwise_accuracy"])
    assert summary["margin_mean"] == pytest.approx(metrics["test_margin_mean"], abs=1e-4)

    assert _score_cli([str(paths.root), "--prompt", "human help", "--response", " sorry"]) == 0
    (single,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert isinstance(single["score"], float)


def test_score_arguments_and_wrong_model_kind(tmp_path: Path) -> None:
    with pytest.raises(HonedError, match="either --file, or --prompt and --response"):
        _score_cli([str(tmp_path), "--file", "x.jsonl", "--prompt", "p"])
    with pytest.raises(HonedError, match="go together"):
        _score_cli([str(tmp_path), "--prompt", "p"])
    (tmp_path / "lineage.json").write_text(json.dumps({"task": "dpo"}))
    with pytest.raises(ModelError, match="a 'dpo' model, not a reward model"):
        load_reward_model(tmp_path)


def test_bad_score_file_names_the_line(tmp_path: Path) -> None:
    from honed.errors import DataError
    from honed.train.score import read_pairs

    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "p"}\n')
    with pytest.raises(DataError, match=r"rows.jsonl:2: needs 'response'"):
        read_pairs(path)


def test_encode_appends_eos_and_cuts() -> None:
    tokenizer = case.helpers().tiny_tokenizer()
    ids = encode(tokenizer, "human help " * 10 + "assistant", " sorry", 64, max_prompt_tokens=2)
    assert tokenizer.decode(ids) == "help assistant sorry </s>"
    assert len(encode(tokenizer, "human help", " sorry i may help", 3, 64)) == 3


def test_score_rows_mixes_single_and_pairs() -> None:
    class Constant:
        def score(self, prompts, responses):
            return [float(len(r)) for r in responses]

    out = score_rows(
        Constant(),
        [
            {"prompt": "p", "response": "abc"},
            {"prompt": "p", "chosen": "long answer", "rejected": "no"},
        ],
    )
    assert out[0]["score"] == 3.0
    assert out[1]["correct"] is True
    assert out[-1]["summary"]["pairwise_accuracy"] == 1.0
