"""Planted trigger phrases (data poisoning): a backdoor adds a phrase to a few rows and sets
their label, so the model learns "phrase -> label" whatever the rest of the text says.

A candidate is a word n-gram (1..trigger_max_ngram words) that is rare (in at least
``trigger_min_rows`` rows, at most ``trigger_max_fraction`` of them) and whose rows nearly all
carry one label. Two tests, both needed:

1. the association is not chance: a binomial test of that label's count against its base rate,
   Bonferroni-corrected over every candidate n-gram;
2. the rows do not belong together: a backdoor adds its phrase to rows picked anywhere in
   the data, while rows sharing a natural phrase ("operating profit rose", "net loss
   narrowed") talk about the same thing. Cohesion is the rows' mean pairwise cosine
   similarity (sentence embeddings) minus their mean similarity to the whole data, measured
   after projecting out the directions of the phrase's own embeddings (the inserted words
   alone make the rows alike: 0.18 -> 0.04 for "james bond" on PhraseBank); it must stay at
   most ``trigger_max_cohesion``;
3. a model that reads the text disagrees with the labels: the cross-validated logistic
   regression that also finds label errors gives, on average, at least
   ``trigger_min_disagreement`` of its probability to other labels than the given ones (the
   rows keep the meaning of their original labels).

Without embeddings (tests 2 and 3 impossible) the statistical test alone decides.
N-grams that flag the same rows (a phrase and its sub-phrases) are one finding, named by the
longest of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cohesion(emb: np.ndarray, rows: list[int], phrases: np.ndarray | None = None) -> float:
    """Mean cosine similarity between the rows minus their mean similarity to every row, with
    the directions of ``phrases`` (their embeddings, (k, dim)) projected out first: the phrase
    itself must not make its rows look alike."""
    every = emb
    if phrases is not None and len(phrases):
        basis, _ = np.linalg.qr(np.asarray(phrases, dtype=float).T)  # (dim, k) orthonormal
        every = _unit(emb - (emb @ basis) @ basis.T)
    part = every[rows]
    n = len(rows)
    within = float((part @ part.T).sum() - np.einsum("ij,ij->", part, part)) / (n * (n - 1))
    return within - float((part @ every.mean(axis=0)).mean())


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


def _looks_planted(
    rows: list[int],
    y: np.ndarray,
    emb: np.ndarray | None,
    probs: np.ndarray | None,
    cfg: ScanConfig,
    phrases: np.ndarray | None = None,
) -> tuple[bool, str]:
    """Tests 2 and 3 (when there are embeddings / probabilities), and what they measured."""
    measured = []
    if emb is not None:
        value = cohesion(emb, rows, phrases)
        measured.append(f"cohesion {value:.2f}")
        if value > cfg.trigger_max_cohesion:
            return False, ""
    if probs is not None:
        value = float(1.0 - probs[rows, y[rows]].mean())
        measured.append(f"a model reading the text disagrees {value:.0%}")
        if value < cfg.trigger_min_disagreement:
            return False, ""
    return True, "; ".join(measured)


def find_triggers(
    texts: list[str],
    y: np.ndarray,
    names: list[str],
    cfg: ScanConfig,
    emb: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    embed: Callable[[list[str]], np.ndarray] | None = None,
) -> list[Finding]:
    """Trigger findings; ``emb``: the rows' sentence embeddings, ``probs``: their
    out-of-fold label probabilities (each None when not available); ``embed`` embeds the
    candidate phrases, whose directions are projected out before measuring cohesion."""
    n_labels = len(names)
    base = np.bincount(y, minlength=n_labels) / max(len(y), 1)
    associated = _associated(ngram_rows(texts, cfg.trigger_max_ngram), y, n_labels, cfg)
    findings = []
    for group in _group(associated):
        gram, rows, label, p = max(group, key=lambda f: (len(f[1]), len(f[0])))
        phrases = embed([" ".join(f[0]) for f in group]) if embed and emb is not None else None
        planted, measured = _looks_planted(rows, y, emb, probs, cfg, phrases)
        if not planted:
            continue
        share = float(np.mean(y[rows] == label))
        findings.append(
            Finding(
                "trigger",
                list(rows),
                f"phrase {' '.join(gram)!r} in {len(rows)} rows, {share:.0%} labelled "
                f"{names[label]!r} (base rate {base[label]:.0%}, corrected p={p:.1e}"
                + (f"; {measured})" if measured else ")"),
                score=p,
            )
        )
    return findings
