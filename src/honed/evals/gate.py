"""The promotion gate's statistics: two models' predictions on the same examples, compared.

Pure functions of paired predictions (no model loading): ``gate_classifier`` and
``gate_generator`` return a ``GateDecision`` with one entry per check and the evidence.

The rule is non-inferiority: a gated metric passes when the one-sided lower confidence bound of
(challenger - champion) lies above ``-margin``. A challenger truly worse than the margin then
passes with probability at most ``1 - confidence``; a truly better one passes more often the
more examples the frozen set has (the bound's width shrinks with the discordant examples).

- accuracy (and reward accuracy): exact McNemar test on the discordant pairs, and an exact
  conditional bound: given the ``b + c`` examples where exactly one model is right, the
  challenger's share ``c / (b + c)`` gets a Clopper-Pearson bound, and the difference is
  ``(b + c) / n * (2 * share - 1)``. At margin 0 this is the one-sided McNemar test.
- F1 and per-class recall: a seeded paired bootstrap (the same resampled examples for both
  models), percentile bounds.
- generators: per-example losses / ROUGE scores, paired bootstrap of the mean difference; golden
  prompts with programmatic checks (regex / contains / valid JSON).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from honed.evals.config import GateConfig

CLASSIFIER_METRICS = ("accuracy", "macro_f1", "weighted_f1")
LOWER_IS_BETTER = {"loss"}


@dataclass
class GateDecision:
    """The gate's answer: ``passed`` is True only when every check passed."""

    passed: bool
    checks: list[dict[str, Any]]
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [check for check in self.checks if not check["passed"]]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": self.checks, "evidence": self.evidence}

    def summary(self) -> dict[str, Any]:
        """What a history entry keeps: the verdict, failed checks and metric differences."""
        return {
            "passed": self.passed,
            "failed": [c["name"] for c in self.failed],
            "differences": {
                name: {k: m.get(k) for k in ("champion", "challenger", "diff", "lower", "p_value")}
                for name, m in (self.evidence.get("metrics") or {}).items()
            },
            "frozen_set": (self.evidence.get("frozen_set") or {}).get("path"),
            "examples": (self.evidence.get("frozen_set") or {}).get("examples"),
        }

    def lines(self) -> list[str]:
        """Human-readable lines: one per check, failed ones first."""
        ordered = self.failed + [c for c in self.checks if c["passed"]]
        return [f"{'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['detail']}" for c in ordered]


def check(name: str, passed: bool, value: Any, threshold: Any, detail: str) -> dict[str, Any]:
    return {
        "name": name,
        "passed": bool(passed),
        "value": value,
        "threshold": threshold,
        "detail": detail,
    }


def _decision(checks: list[dict[str, Any]], evidence: dict[str, Any]) -> GateDecision:
    return GateDecision(all(c["passed"] for c in checks), checks, evidence)


# -- tests ------------------------------------------------------------------------------------
def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b, c = discordant pairs each way."""
    from scipy.stats import binomtest

    if b + c == 0:
        return 1.0
    return float(binomtest(c, b + c, 0.5).pvalue)


def accuracy_bounds(b: int, c: int, n: int, confidence: float) -> tuple[float, float]:
    """One-sided bounds (each at ``confidence``) of the accuracy difference, exact conditional.

    b: champion right, challenger wrong; c: challenger right, champion wrong; n: examples.
    """
    from scipy.stats import beta

    discordant = b + c
    if discordant == 0:
        return 0.0, 0.0  # identical correctness on every example: no difference to bound
    alpha = 1 - confidence
    low = 0.0 if c == 0 else float(beta.ppf(alpha, c, discordant - c + 1))
    high = 1.0 if c == discordant else float(beta.ppf(confidence, c + 1, discordant - c))
    scale = discordant / n
    return scale * (2 * low - 1), scale * (2 * high - 1)


def bootstrap_weights(n: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n) counts of each example in each resample: the same for both models."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    flat = (idx + np.arange(samples)[:, None] * n).ravel()
    return np.bincount(flat, minlength=samples * n).reshape(samples, n).astype(np.float64)


def _confusions(weights: np.ndarray, y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """(rows, k, k) confusion counts (true x predicted) under each row of example weights."""
    onehot = np.zeros((len(y), k * k))
    onehot[np.arange(len(y)), y * k + pred] = 1.0
    return (weights @ onehot).reshape(-1, k, k)


def confusion_metrics(conf: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, macro/weighted F1 and per-class recall from (rows, k, k) confusions."""
    tp = np.diagonal(conf, axis1=1, axis2=2)
    support = conf.sum(axis=2)  # true counts per class
    predicted = conf.sum(axis=1)
    total = support.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        weighted = (f1 * support).sum(axis=1) / np.maximum(total, 1)
    return {
        "accuracy": tp.sum(axis=1) / np.maximum(total, 1),
        "macro_f1": f1.mean(axis=1),
        "weighted_f1": weighted,
        "recall": recall,
    }


def _bounds(diffs: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """One-sided percentile bounds and a two-sided bootstrap p-value for "no difference"."""
    low = float(np.quantile(diffs, 1 - confidence))
    high = float(np.quantile(diffs, confidence))
    p = 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0)))
    return low, high, min(1.0, p)


# -- classification ---------------------------------------------------------------------------
def _indices(values: Sequence[str], index: Mapping[str, int]) -> np.ndarray:
    # A label the gate's label list lacks (a model trained on other labels) counts as wrong.
    return np.array([index.get(v, len(index)) for v in values])


def _label_index(labels: Sequence[str], *columns: Sequence[str] | None) -> list[str]:
    ordered = list(labels)
    for column in columns:
        for value in column or ():
            if value not in ordered:
                ordered.append(value)
    return ordered


def _non_inferior(name: str, m: dict[str, Any], margin: float, confidence: float) -> dict:
    """Lower bound of the difference above -margin (loss: upper bound below +margin)."""
    if name in LOWER_IS_BETTER:
        side, bound, threshold = "upper", m["upper"], margin
        passed = bound < threshold
        sign = "<" if passed else ">="
    else:
        side, bound, threshold = "lower", m["lower"], -margin
        passed = bound > threshold
        sign = ">" if passed else "<="
    test = "McNemar" if m["test"] == "mcnemar_exact" else "bootstrap"
    detail = (
        f"champion {m['champion']:.4f}, challenger {m['challenger']:.4f}, "
        f"diff {m['diff']:+.4f}; {confidence:.0%} {side} bound {bound:+.4f} {sign} "
        f"{threshold:+.4f}; {test} p={m['p_value']:.3g}"
    )
    return check(f"{name} not worse beyond {margin:g}", passed, m["diff"], threshold, detail)


def compare_accuracy(
    champion_correct: np.ndarray, challenger_correct: np.ndarray, confidence: float
) -> dict[str, Any]:
    n = len(champion_correct)
    b = int(np.sum(champion_correct & ~challenger_correct))
    c = int(np.sum(~champion_correct & challenger_correct))
    low, high = accuracy_bounds(b, c, n, confidence)
    champ, chall = float(champion_correct.mean()), float(challenger_correct.mean())
    return {
        "champion": champ,
        "challenger": chall,
        "diff": chall - champ,
        "lower": low,
        "upper": high,
        "p_value": mcnemar_exact(b, c),
        "test": "mcnemar_exact",
        "discordant": {"champion_only_right": b, "challenger_only_right": c},
    }


def _bootstrap_metric(name: str, point: dict, boot: dict, confidence: float) -> dict[str, Any]:
    diffs = boot["challenger"][name] - boot["champion"][name]
    low, high, p = _bounds(diffs, confidence)
    champ, chall = float(point["champion"][name][0]), float(point["challenger"][name][0])
    return {
        "champion": champ,
        "challenger": chall,
        "diff": chall - champ,
        "lower": low,
        "upper": high,
        "p_value": p,
        "test": "paired_bootstrap",
    }


def _recalls(labels: list[str], point: dict, boot: dict, confidence: float) -> dict[str, Any]:
    out = {}
    for i, label in enumerate(labels):
        drops = boot["champion"]["recall"][:, i] - boot["challenger"]["recall"][:, i]
        low, high, _ = _bounds(drops, confidence)
        champ = float(point["champion"]["recall"][0, i])
        chall = float(point["challenger"]["recall"][0, i])
        out[label] = {
            "support": int(point["support"][i]),
            "champion": champ,
            "challenger": chall,
            "drop": champ - chall,
            "drop_bounds": [low, high],
        }
    return out


def _recall_checks(recalls: dict[str, Any], cfg: GateConfig) -> list[dict[str, Any]]:
    if cfg.max_recall_drop is None:
        return []
    out = []
    for label, r in recalls.items():
        if r["support"] == 0:
            continue
        detail = (
            f"recall {r['champion']:.4f} -> {r['challenger']:.4f} on {r['support']} examples "
            f"(drop {r['drop']:+.4f}, limit {cfg.max_recall_drop:g})"
        )
        passed = r["drop"] <= cfg.max_recall_drop + 1e-12
        out.append(check(f"recall of {label}", passed, r["drop"], cfg.max_recall_drop, detail))
    return out


def golden_check(rows: Sequence[Mapping[str, Any]], predicted: Sequence[str]) -> dict[str, Any]:
    """Every golden row's label must be predicted; the failures listed."""
    failures = [
        {"text": row["text"], "label": row["label"], "predicted": got}
        for row, got in zip(rows, predicted, strict=True)
        if got != row["label"]
    ]
    detail = f"{len(rows) - len(failures)} of {len(rows)} golden examples keep their label" + (
        f"; lost: {json.dumps(failures[:5], ensure_ascii=False)}" if failures else ""
    )
    return check("golden examples", not failures, len(failures), 0, detail) | {"failures": failures}


def floor_checks(metrics: Mapping[str, float], floors: Mapping[str, float]) -> list[dict]:
    """The spec's metric floors (eval.min_metrics) on the challenger's frozen-set metrics."""
    out = []
    for name, floor in floors.items():
        value = metrics.get(name.removeprefix("test_"))
        if value is None:
            out.append(check(f"floor {name}", False, None, floor, "not measured on the frozen set"))
            continue
        detail = f"{value:.4f} {'>=' if value >= floor else '<'} {floor}"
        out.append(check(f"floor {name}", value >= floor, value, floor, detail))
    return out


def _metric_names(cfg: GateConfig, known: Sequence[str], default: Sequence[str]) -> tuple:
    wanted = list(cfg.metrics) if cfg.metrics is not None else list(default)
    return [m for m in wanted if m in known], [m for m in wanted if m not in known]


def gate_classifier(
    y_true: Sequence[str],
    challenger: Sequence[str],
    champion: Sequence[str] | None,
    labels: Sequence[str],
    cfg: GateConfig,
    floors: Mapping[str, float] | None = None,
    golden: tuple[Sequence[Mapping[str, Any]], Sequence[str]] | None = None,
) -> GateDecision:
    """Decide on predicted labels of both models for the same examples.

    champion None: the first model; only the floors (and golden examples) apply.
    golden: (golden rows with text/label, the challenger's predictions for them).
    """
    if len(y_true) == 0:
        return _decision([check("frozen set", False, 0, 1, "no examples to compare on")], {})
    names = _label_index(labels, y_true, challenger, champion)
    index = {label: i for i, label in enumerate(names)}
    y = _indices(y_true, index)
    models = {"challenger": _indices(challenger, index)}
    if champion is not None:
        models["champion"] = _indices(champion, index)
    k = len(names)
    point = {
        m: confusion_metrics(_confusions(np.ones((1, len(y))), y, p, k)) for m, p in models.items()
    }
    point["support"] = np.bincount(y, minlength=k)
    evidence: dict[str, Any] = {
        "examples": len(y),
        "challenger_metrics": {m: float(point["challenger"][m][0]) for m in CLASSIFIER_METRICS},
    }
    checks = floor_checks(evidence["challenger_metrics"], floors or {})
    if champion is not None:
        checks += _paired_checks(names, y, models, point, cfg, evidence)
    else:
        evidence["note"] = "no champion: first model, only the metric floors apply"
    if golden is not None and golden[0]:
        checks.append(golden_check(*golden))
    return _decision(checks, evidence)


def _paired_checks(
    names: list[str], y: np.ndarray, models: dict, point: dict, cfg: GateConfig, evidence: dict
) -> list[dict[str, Any]]:
    gated, skipped = _metric_names(cfg, CLASSIFIER_METRICS, ("accuracy", "macro_f1"))
    weights = bootstrap_weights(len(y), cfg.bootstrap_samples, cfg.seed)
    boot = {m: confusion_metrics(_confusions(weights, y, p, len(names))) for m, p in models.items()}
    metrics: dict[str, Any] = {}
    for name in CLASSIFIER_METRICS:
        if name == "accuracy":
            correct = {m: p == y for m, p in models.items()}
            metrics[name] = compare_accuracy(
                correct["champion"], correct["challenger"], cfg.confidence
            )
        else:
            metrics[name] = _bootstrap_metric(name, point, boot, cfg.confidence)
    evidence["metrics"] = metrics
    evidence["champion_metrics"] = {m: float(point["champion"][m][0]) for m in CLASSIFIER_METRICS}
    evidence["per_class_recall"] = _recalls(names, point, boot, cfg.confidence)
    evidence["gated"], evidence["skipped_metrics"] = gated, skipped
    evidence["agreement"] = float(np.mean(models["champion"] == models["challenger"]))
    checks = [_non_inferior(n, metrics[n], cfg.margin_for(n), cfg.confidence) for n in gated]
    return checks + _recall_checks(evidence["per_class_recall"], cfg)


# -- generators -------------------------------------------------------------------------------
def compare_scores(
    champion: Sequence[float], challenger: Sequence[float], cfg: GateConfig
) -> dict[str, Any]:
    """Per-example scores of both models (loss, ROUGE): paired bootstrap of the mean diff."""
    a = np.asarray(champion, dtype=np.float64)
    b = np.asarray(challenger, dtype=np.float64)
    weights = bootstrap_weights(len(a), cfg.bootstrap_samples, cfg.seed)
    diffs = weights @ (b - a) / len(a)
    low, high, p = _bounds(diffs, cfg.confidence)
    return {
        "champion": float(a.mean()),
        "challenger": float(b.mean()),
        "diff": float(b.mean() - a.mean()),
        "lower": low,
        "upper": high,
        "p_value": p,
        "test": "paired_bootstrap",
    }


def output_check(text: str, spec: Mapping[str, Any]) -> list[str]:
    """Problems of a generated text against a golden prompt's checks (empty: it passes).

    Keys: ``regex`` (searched), ``contains`` (text or list of texts), ``json`` (true: the
    answer must parse as JSON).
    """
    problems = []
    if spec.get("regex") and not re.search(spec["regex"], text):
        problems.append(f"does not match /{spec['regex']}/")
    contains = spec.get("contains")
    for needle in [contains] if isinstance(contains, str) else contains or []:
        if needle not in text:
            problems.append(f"lacks {needle!r}")
    if spec.get("json"):
        try:
            json.loads(text)
        except ValueError:
            problems.append("is not valid JSON")
    return problems


def golden_prompts_check(rows: Sequence[Mapping[str, Any]], outputs: Sequence[str]) -> dict:
    failures = []
    for row, text in zip(rows, outputs, strict=True):
        problems = output_check(text, row)
        if problems:
            failures.append(
                {"prompt": row.get("prompt"), "output": text[:200], "problems": problems}
            )
    detail = f"{len(rows) - len(failures)} of {len(rows)} golden prompts pass their checks" + (
        f"; failed: {json.dumps(failures[:3], ensure_ascii=False)}" if failures else ""
    )
    return check("golden prompts", not failures, len(failures), 0, detail) | {"failures": failures}


_GENERATOR_DEFAULT = ("loss", "rougeL")
#: Per-example pass / fail metrics of generators (compared like accuracy).
_PASS_FAIL = ("reward_accuracy", "grader_pass_rate")


def gate_generator(
    challenger: Mapping[str, Sequence[float] | Sequence[bool]],
    champion: Mapping[str, Sequence[float] | Sequence[bool]] | None,
    cfg: GateConfig,
    floors: Mapping[str, float] | None = None,
    golden: tuple[Sequence[Mapping[str, Any]], Sequence[str]] | None = None,
) -> GateDecision:
    """Decide on per-example scores: {"loss": [...], "rougeL": [...], "reward": [...],
    "reward_accuracy": [bools], "grader_pass_rate": [bools]} for each model, same examples in
    the same order. Gated by default: loss, rougeL and the pass / fail metrics present."""
    measured = list(challenger)
    means = {m: float(np.mean(np.asarray(v, dtype=np.float64))) for m, v in challenger.items()}
    evidence: dict[str, Any] = {"challenger_metrics": means}
    checks = floor_checks(means, floors or {})
    if champion is not None:
        default = [m for m in (*_GENERATOR_DEFAULT, *_PASS_FAIL) if m in measured]
        gated, skipped = _metric_names(cfg, measured, default)
        metrics = {}
        for name in gated:
            if name in _PASS_FAIL:  # per-example right / wrong: exact McNemar
                a, b = np.asarray(champion[name], bool), np.asarray(challenger[name], bool)
                metrics[name] = compare_accuracy(a, b, cfg.confidence)
            else:
                metrics[name] = compare_scores(champion[name], challenger[name], cfg)
            checks.append(_non_inferior(name, metrics[name], cfg.margin_for(name), cfg.confidence))
        evidence.update(metrics=metrics, gated=gated, skipped_metrics=skipped)
    else:
        evidence["note"] = "no champion: first model, only the metric floors apply"
    if golden is not None and golden[0]:
        checks.append(golden_prompts_check(*golden))
    return _decision(checks, evidence)
