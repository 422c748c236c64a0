"""Planted trigger phrases (data poisoning): a backdoor adds a phrase to a few rows and sets
their label, so the model learns "phrase -> label" whatever the rest of the text says.

A candidate is a word n-gram (1..trigger_max_ngram words) that is rare (in at least
``trigger_min_rows`` rows, at most ``trigger_max_fraction`` of them) and whose rows nearly all
carry one label. Two tests, both needed:

1. the association is not chance: a binomial test of that label's count against its base rate,
   Bonferroni-corrected over every candidate n-gram;
2. the label does not come from the meaning of the text: natural phrases ("profit rose") are
   pure too, but a model that reads the sentence agrees with their labels. The model: a
   logistic regression over the rows' sentence embeddings, fitted on every row *without* the
   phrase (so it cannot learn the phrase -> label shortcut) and asked about the rows with it.
   A trigger's rows keep the meaning of their original labels: the mean probability the model
   gives to another label than the given one must reach ``trigger_min_disagreement``.

N-grams that flag the same rows (a phrase and its sub-phrases) are one finding, named by the
longest of them.
"""

from __future__ import annotations

import copy
import re
import warnings
from typing import Any

import numpy as np

from honed.data.frozen import normalise
from honed.security.scan.config import ScanConfig
from honed.security.scan.findings import Finding

_WORD = re.compile(r"[a-z0-9]+")


def ngram_rows(texts: list[str], max_n: int) -> dict[tuple[str, ...], list[int]]:
    """n-gram -> the rows (indexes) containing it, each row counted once."""
    index: dict[tuple[str, ...], list[int]] = {}
    for i, text in enumerate(texts):
        words = _WORD.findall(normalise(text))
        grams = {
            tuple(words[s : s + n]) for n in range(1, max_n + 1) for s in range(len(words) - n + 1)
        }
        for gram in grams:
            index.setdefault(gram, []).append(i)
    return index


def _associated(
    index: dict[tuple[str, ...], list[int]], y: np.ndarray, n_labels: int, cfg: ScanConfig
) -> list[tuple[tuple[str, ...], list[int], int, float]]:
    """(n-gram, rows, label, corrected p-value) of rare n-grams with a significant, near-pure
    label association."""
    from scipy.stats import binom

    n = len(y)
    base = np.bincount(y, minlength=n_labels) / n
    most = max(cfg.trigger_min_rows, int(cfg.trigger_max_fraction * n))
    candidates = {g: r for g, r in index.items() if cfg.trigger_min_rows <= len(r) <= most}
    out = []
    for gram, rows in candidates.items():
        counts = np.bincount(y[rows], minlength=n_labels)
        label = int(counts.argmax())
        if counts[label] / len(rows) < cfg.trigger_min_purity:
            continue
        p = float(binom.sf(counts[label] - 1, len(rows), base[label])) * len(candidates)
        if p <= cfg.trigger_alpha:
            out.append((gram, rows, label, min(p, 1.0)))
    return out


class HeldOut:
    """A logistic regression over the embeddings, refitted without a group of rows to ask it
    about them. The refit starts from the model fitted on every row (the group is at most
    ``trigger_max_fraction`` of them), so it takes a few iterations."""

    def __init__(self, emb: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        self.emb, self.y = emb, y
        self.full = LogisticRegression(max_iter=300).fit(emb, y)

    def disagreement(self, rows: list[int]) -> float:
        """Mean probability of another label than the given one for ``rows``."""
        rest = np.ones(len(self.y), dtype=bool)
        rest[rows] = False
        if set(self.y[rest].tolist()) != set(self.full.classes_.tolist()):
            return float("nan")  # a label only occurs in these rows
        model = copy.deepcopy(self.full).set_params(warm_start=True, max_iter=50)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a short refit may stop before full convergence
            model.fit(self.emb[rest], self.y[rest])
        probs = model.predict_proba(self.emb[rows])
        column = {label: j for j, label in enumerate(model.classes_.tolist())}
        given = probs[np.arange(len(rows)), [column[v] for v in self.y[rows].tolist()]]
        return float(1.0 - given.mean())


def _group(flagged: list[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
    """Flagged n-grams whose row sets mostly overlap (Jaccard >= 0.8) as one group."""
    groups: list[list[tuple[Any, ...]]] = []
    for item in sorted(flagged, key=lambda f: (-len(f[1]), -len(f[0]))):
        rows = set(item[1])
        for group in groups:
            head = set(group[0][1])
            if len(rows & head) / len(rows | head) >= 0.8:
                group.append(item)
                break
        else:
            groups.append([item])
    return groups


def find_triggers(
    texts: list[str], y: np.ndarray, names: list[str], emb: np.ndarray | None, cfg: ScanConfig
) -> list[Finding]:
    """Trigger findings; ``emb``: the rows' sentence embeddings (None: the statistical test
    alone decides)."""
    n_labels = len(names)
    base = np.bincount(y, minlength=n_labels) / max(len(y), 1)
    associated = _associated(ngram_rows(texts, cfg.trigger_max_ngram), y, n_labels, cfg)
    held_out = HeldOut(emb, y) if emb is not None and associated else None
    findings = []
    for group in _group(associated):
        gram, rows, label, p = max(group, key=lambda f: (len(f[1]), len(f[0])))
        disagreement = held_out.disagreement(rows) if held_out else float("nan")
        if held_out and not disagreement >= cfg.trigger_min_disagreement:
            continue
        share = float(np.mean(y[rows] == label))
        findings.append(
            Finding(
                "trigger",
                list(rows),
                f"phrase {' '.join(gram)!r} in {len(rows)} rows, {share:.0%} labelled "
                f"{names[label]!r} (base rate {base[label]:.0%}, corrected p={p:.1e}; "
                f"a model reading the text disagrees {disagreement:.0%})",
                score=p,
            )
        )
    return findings
