"""The promotion gate: paired statistics on predictions, and gate_challenger on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import f1_score

from honed.errors import HonedError
from honed.evals.config import EvalConfig, GateConfig
from honed.evals.gate import (
    accuracy_bounds,
    gate_classifier,
    gate_generator,
    mcnemar_exact,
    output_check,
)
from honed.evals.gate_run import gate_folders
from honed.pipeline.gate import gate_challenger

LABELS = ["negative", "neutral", "positive"]


def _pairs(n: int, champion_right: int, only_champion: int, only_challenger: int, seed: int = 0):
    """Labels and both models' predictions with the given correctness counts (shuffled)."""
    rng = np.random.default_rng(seed)
    y = [LABELS[i % 3] for i in range(n)]
    wrong = {label: LABELS[(LABELS.index(label) + 1) % 3] for label in LABELS}
    both_right = champion_right - only_champion
    kinds = (
        ["both"] * both_right
        + ["champ"] * only_champion
        + ["chall"] * only_challenger
        + ["none"] * (n - both_right - only_champion - only_challenger)
    )
    kinds = list(rng.permutation(kinds))
    champion = [t if k in ("both", "champ") else wrong[t] for t, k in zip(y, kinds, strict=True)]
    challenger = [t if k in ("both", "chall") else wrong[t] for t, k in zip(y, kinds, strict=True)]
    return y, champion, challenger


def _check(decision, prefix: str) -> dict:
    return next(c for c in decision.checks if c["name"].startswith(prefix))


def test_mcnemar_is_the_exact_binomial_on_discordant_pairs():
    assert mcnemar_exact(0, 10) == pytest.approx(2 * 0.5**10)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0


@pytest.mark.parametrize(("b", "c"), [(3, 10), (10, 3), (0, 6), (4, 12), (20, 31), (7, 7)])
def test_exact_bound_at_margin_zero_is_the_one_sided_mcnemar_test(b, c):
    lower, upper = accuracy_bounds(b, c, 500, 0.95)
    one_sided = binomtest(c, b + c, 0.5, alternative="greater").pvalue
    assert (lower > 0) == (one_sided < 0.05)
    assert lower <= (c - b) / 500 <= upper


def test_identical_predictions_pass_with_zero_difference():
    y, champion, _ = _pairs(300, 250, 0, 0)
    decision = gate_classifier(y, champion, champion, LABELS, GateConfig())
    assert decision.passed
    accuracy = decision.evidence["metrics"]["accuracy"]
    assert accuracy["diff"] == accuracy["lower"] == 0.0 and accuracy["p_value"] == 1.0


def test_clearly_worse_challenger_is_refused_with_the_test_beside_the_difference():
    y, champion, challenger = _pairs(600, 540, 40, 5)
    decision = gate_classifier(y, challenger, champion, LABELS, GateConfig())
    assert not decision.passed
    accuracy = _check(decision, "accuracy")
    assert not accuracy["passed"] and accuracy["value"] == pytest.approx(-35 / 600)
    assert "McNemar p=" in accuracy["detail"] and "lower bound" in accuracy["detail"]
    assert not _check(decision, "macro_f1")["passed"]


def test_the_same_improvement_passes_on_a_large_set_only():
    # +10 points on 10 examples (one discordant pair) is no evidence; on 1000 it is.
    small = gate_classifier(*_reorder(_pairs(10, 8, 0, 1)), LABELS, GateConfig())
    large = gate_classifier(*_reorder(_pairs(1000, 800, 0, 100)), LABELS, GateConfig())
    assert not _check(small, "accuracy")["passed"]
    assert _check(large, "accuracy")["passed"]


def _reorder(triple):
    y, champion, challenger = triple
    return y, challenger, champion


def test_macro_f1_matches_sklearn_and_the_bootstrap_is_seeded():
    y, champion, challenger = _pairs(400, 330, 20, 30, seed=3)
    cfg = GateConfig(seed=7)
    first = gate_classifier(y, challenger, champion, LABELS, cfg)
    again = gate_classifier(y, challenger, champion, LABELS, cfg)
    assert json.dumps(first.to_dict()) == json.dumps(again.to_dict())
    f1 = first.evidence["metrics"]["macro_f1"]
    assert f1["challenger"] == pytest.approx(f1_score(y, challenger, average="macro"))
    assert f1["lower"] <= f1["diff"] <= f1["upper"]


def test_a_class_recall_drop_beyond_the_limit_refuses_a_better_challenger():
    y = ["negative"] * 40 + ["neutral"] * 300 + ["positive"] * 60
    champion = list(y)
    champion[40:70] = ["positive"] * 30  # champion misses 30 neutral
    challenger = list(y)
    challenger[:6] = ["neutral"] * 6  # fixes the 30, loses 6 of 40 negatives (15% recall)
    decision = gate_classifier(y, challenger, champion, LABELS, GateConfig())
    assert _check(decision, "accuracy")["passed"]
    negative = _check(decision, "recall of negative")
    assert not negative["passed"] and negative["value"] == pytest.approx(0.15)
    assert not decision.passed
    assert (
        GateConfig(max_recall_drop=None)
        and gate_classifier(
            y, challenger, champion, LABELS, GateConfig(max_recall_drop=None)
        ).passed
    )


def test_every_golden_example_must_keep_its_label():
    y, champion, _ = _pairs(200, 180, 0, 0)
    golden = [{"text": "profit rose", "label": "positive"}, {"text": "loss", "label": "negative"}]
    decision = gate_classifier(
        y, champion, champion, LABELS, GateConfig(), golden=(golden, ["positive", "neutral"])
    )
    check = _check(decision, "golden")
    assert not decision.passed and not check["passed"]
    assert check["failures"] == [{"text": "loss", "label": "negative", "predicted": "neutral"}]
    assert "1 of 2 golden examples keep their label" in check["detail"]


def test_without_a_champion_only_the_floors_apply():
    y, _, challenger = _pairs(100, 60, 0, 0)
    low = gate_classifier(y, challenger, None, LABELS, GateConfig(), floors={"accuracy": 0.7})
    ok = gate_classifier(y, challenger, None, LABELS, GateConfig(), floors={"accuracy": 0.5})
    assert not low.passed and ok.passed
    assert [c["name"] for c in ok.checks] == ["floor accuracy"]
    assert "first model" in ok.evidence["note"]


def test_gate_config_lives_in_the_eval_section():
    cfg = EvalConfig(gate={"margin": 0.01, "margins": {"loss": 0.05}, "metrics": ["accuracy"]})
    assert cfg.gate.margin_for("accuracy") == 0.01 and cfg.gate.margin_for("loss") == 0.05
    with pytest.raises(ValueError, match="metrics"):
        EvalConfig(gate={"metrics": ["bleu"]})
    with pytest.raises(ValueError, match="confidence"):
        GateConfig(confidence=0.4)


def test_generators_loss_rouge_and_golden_prompt_checks():
    rng = np.random.default_rng(0)
    champion = rng.uniform(1.0, 2.0, 200)
    better = {"loss": champion - 0.2, "rougeL": rng.uniform(0.3, 0.5, 200)}
    worse = {"loss": champion + 0.2, "rougeL": better["rougeL"] - 0.1}
    base = {"loss": champion, "rougeL": better["rougeL"]}
    cfg = GateConfig(margins={"loss": 0.02})
    assert gate_generator(better, base, cfg).passed
    refused = gate_generator(worse, base, cfg)
    assert {c["name"].split()[0] for c in refused.failed} == {"loss", "rougeL"}
    golden = [{"prompt": "p", "json": True, "contains": "total"}, {"prompt": "q", "regex": r"\d+"}]
    decision = gate_generator(base, base, cfg, golden=(golden, ['{"total": 3}', "none"]))
    assert not decision.passed and _check(decision, "golden prompts")["value"] == 1
    assert output_check("not json", {"json": True}) == ["is not valid JSON"]
    assert output_check("abc", {"contains": ["a", "z"]}) == ["lacks 'z'"]


def test_gate_on_tiny_models_in_one_run(gate_models, tmp_path):
    same = gate_folders(gate_models["same"], gate_models["champion"], GateConfig())
    assert same.passed and same.evidence["frozen_set"]["examples"] == 60
    broken = gate_folders(gate_models["broken"], gate_models["champion"], GateConfig())
    failed = {c["name"].split()[0] for c in broken.failed}
    assert {"accuracy", "macro_f1", "recall", "golden"} <= failed
    assert broken.evidence["metrics"]["accuracy"]["challenger"] < 0.5


def test_gate_challenger_writes_gate_json_and_says_which_frozen_set(gate_models, tmp_path):
    out = tmp_path / "gate.json"
    decision = gate_challenger(
        "tiny", str(gate_models["same"]), str(gate_models["bare"]), output=out
    )
    written = json.loads(out.read_text())
    assert written["passed"] is decision.passed is True
    assert "challenger's was used" in written["evidence"]["frozen_set"]["note"]
    assert written["evidence"]["metrics"]["accuracy"]["test"] == "mcnemar_exact"
    assert {c["name"] for c in written["checks"]} >= {"golden examples"}


def test_gate_challenger_first_model_uses_floors_only(gate_models, tmp_path):
    # Nothing registered under this name: no champion, the first model.
    decision = gate_challenger("brand-new", str(gate_models["champion"]), floors={"accuracy": 0.9})
    assert decision.passed and decision.evidence["versions"]["champion"] is None
    assert [c["name"] for c in decision.checks] == ["floor accuracy", "golden examples"]
    assert json.loads(Path(decision.evidence["path"]).read_text())["passed"] is True


def test_no_frozen_set_anywhere_is_a_clear_error(gate_models):
    with pytest.raises(HonedError, match="no frozen evaluation set"):
        gate_folders(gate_models["bare"], gate_models["bare"], GateConfig())


def _tiny_generator(folder: Path) -> Path:
    import torch
    from tests.tiny_cases.seq2seq import tiny_llama, tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    (folder / "spec.yaml").write_text("task: sft\n")
    rows = [{"prompt": "summarize the bill", "completion": "the act amends the law"}] * 4
    (folder / "eval").mkdir()
    (folder / "eval" / "frozen_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    golden = [{"prompt": "summarize the bill", "regex": ".*"}, {"prompt": "help", "json": True}]
    (folder / "eval" / "golden.jsonl").write_text("".join(json.dumps(g) + "\n" for g in golden))
    return folder


def test_generator_folders_gate_on_loss_and_golden_prompts(tmp_path):
    champion = _tiny_generator(tmp_path / "champion")
    decision = gate_folders(champion, champion, GateConfig(margins={"loss": 0.01}))
    loss = decision.evidence["metrics"]["loss"]
    assert loss["diff"] == 0.0 and _check(decision, "loss")["passed"]
    golden = _check(decision, "golden prompts")
    assert golden["value"] == 1 and golden["failures"][0]["problems"] == ["is not valid JSON"]
    assert decision.evidence["task"] == "sft" and not decision.passed


def test_a_disabled_gate_passes_and_says_so(gate_models, tmp_path):
    decision = gate_challenger(
        "tiny",
        str(gate_models["broken"]),
        str(gate_models["champion"]),
        GateConfig(enabled=False),
        output=tmp_path / "g.json",
    )
    assert decision.passed and decision.checks[0]["name"] == "gate disabled"
