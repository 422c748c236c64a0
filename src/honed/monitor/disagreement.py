"""Which API keys' label corrections disagree with everyone else: flagged before training.

Once the loop retrains from feedback, one key flipping labels is a poisoning attack. Each
key's classification feedback is compared two ways:

- **consensus**: on the same normalised text (case-folded, whitespace collapsed), the label
  this key gave vs the majority label of the OTHER keys that gave one (one vote per key, its
  latest); a row counts only where another key labelled the same text;
- **model**: on texts no other key labelled, the label this key gave vs the label the served
  model predicted. Where peers exist they are the better reference: a correction is meant to
  disagree with the model, so a key sending only corrections of real errors (an expert
  reviewer) disagrees with the model on every row yet agrees with its peers. Where no peer
  labelled a text, the model is the only reference there is; the baseline is then how often
  the other keys disagree with the model over all their rows. Known blind spot: an honest
  key that only corrects errors, on texts nobody else labels, looks like a flipper there.

A row's label is its correction, or (a thumbs-up without one) the predicted label it
confirms. Honest users disagree with the model on the requests it got wrong and now and then
with each other; a key that flips labels disagrees far more often than the others do.

Rule, per key and per comparison: with ``n`` comparable rows, ``d`` of them disagreeing, and
``p`` the pooled disagreement rate of all OTHER keys (add-one smoothed, so the key judged
never lifts its own baseline), the key is flagged when ``n >= min_rows``, ``d/n - p >=
min_excess`` and the one-sided binomial test ``P(X >= d | n, p)`` is below ``alpha`` divided by
the number of tests (Bonferroni over keys x comparisons). The effect-size floor keeps a
large honest key with a slightly higher rate from being flagged on significance alone.
Feedback without a key (a server without keys) is neither judged nor counted as a vote.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from scipy.stats import binom

COMPARISONS = ("consensus", "model")


@dataclass(frozen=True)
class TrustRule:
    """Thresholds of the disagreement rule (see the module docstring)."""

    min_rows: int = 10  # comparable rows a key needs before it can be judged
    alpha: float = 0.001  # family-wise false-flag rate (Bonferroni over keys x comparisons)
    min_excess: float = 0.25  # how far above the others' rate a flagged key must be


@dataclass
class Comparison:
    n: int = 0  # comparable rows
    disagree: int = 0
    baseline: float | None = None  # the other keys' pooled disagreement rate
    p_value: float | None = None
    flagged: bool = False

    @property
    def rate(self) -> float | None:
        return self.disagree / self.n if self.n else None


@dataclass
class KeyTrust:
    key: str
    rows: int  # classification feedback rows with a label
    consensus: Comparison = field(default_factory=Comparison)
    model: Comparison = field(default_factory=Comparison)
    # All its rows against the model: what the other keys' model baseline is pooled from.
    model_all: Comparison = field(default_factory=Comparison)

    @property
    def flagged(self) -> bool:
        return self.consensus.flagged or self.model.flagged

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "rows": self.rows, "flagged": self.flagged}
        for name in COMPARISONS:
            comp = getattr(self, name)
            out[name] = asdict(comp) | {"rate": comp.rate}
        out["model_all_rows"] = {"n": self.model_all.n, "disagree": self.model_all.disagree}
        return out


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def labelled(fb: dict[str, Any]) -> str | None:
    """The label an explicit classification feedback row asserts; None when it asserts none
    (a thumbs-down without a correction says only "not that")."""
    if (fb.get("signal") or "explicit") != "explicit" or not fb.get("key_name"):
        return None
    if not (fb.get("req_route") == "classify" or fb.get("req_label") is not None):
        return None
    correction = (fb.get("correction") or fb.get("preferred") or "").strip()
    if correction:
        return correction
    return fb.get("req_label") if fb.get("rating") == 1 else None


def judge_keys(feedback: list[dict[str, Any]], rule: TrustRule | None = None) -> list[KeyTrust]:
    """Per key, its agreement with the others and with the model (feedback rows as from
    :meth:`~honed.monitor.feedback.FeedbackStore.joined`, oldest first); keys sorted."""
    rule = rule or TrustRule()
    # (key, request, item) -> (text, label, predicted): a key's latest word on an item.
    latest: dict[tuple, tuple[str, str, str | None]] = {}
    for fb in feedback:
        label = labelled(fb)
        if label is not None and fb.get("req_input"):
            where = (fb["key_name"], fb["request_id"], fb.get("item", 0))
            latest[where] = (normalise(fb["req_input"]), label, fb.get("req_label"))
    votes: dict[str, dict[str, str]] = defaultdict(dict)  # text -> key -> latest label
    for (key, *_), (text, label, _) in latest.items():
        votes[text][key] = label
    trust: dict[str, KeyTrust] = {}
    for (key, *_), (text, label, predicted) in latest.items():
        t = trust.setdefault(key, KeyTrust(key, 0))
        t.rows += 1
        others = Counter(lab for k, lab in votes[text].items() if k != key)
        if others:
            top = max(others.values())
            t.consensus.n += 1
            t.consensus.disagree += label not in {lab for lab, c in others.items() if c == top}
        if predicted is not None:
            t.model_all.n += 1
            t.model_all.disagree += label != predicted
            if not others:
                t.model.n += 1
                t.model.disagree += label != predicted
    judged = sorted(trust.values(), key=lambda t: t.key)
    tests = max(1, sum(c.n >= rule.min_rows for t in judged for c in (t.consensus, t.model)))
    _test(judged, "consensus", "consensus", rule, tests)
    _test(judged, "model", "model_all", rule, tests)
    return judged


def _test(keys: list[KeyTrust], name: str, pool: str, rule: TrustRule, tests: int) -> None:
    """Binomial test of each key's disagreement (its comparison ``name``) against the other
    keys' pooled rate (their comparison ``pool``); ``tests``: the Bonferroni divisor."""
    pooled = [getattr(t, pool) for t in keys]
    total_n = sum(c.n for c in pooled)
    total_d = sum(c.disagree for c in pooled)
    for t, own in zip(keys, pooled, strict=True):
        comp = getattr(t, name)
        other_n, other_d = total_n - own.n, total_d - own.disagree
        if comp.n == 0 or other_n == 0:
            continue  # nobody to compare with
        comp.baseline = (other_d + 1) / (other_n + 2)
        comp.p_value = float(binom.sf(comp.disagree - 1, comp.n, comp.baseline))
        comp.flagged = (
            comp.n >= rule.min_rows
            and comp.rate - comp.baseline >= rule.min_excess
            and comp.p_value < rule.alpha / tests
        )
