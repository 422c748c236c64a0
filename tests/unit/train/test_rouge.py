"""ROUGE-1/2/L/Lsum via rouge-score, with newline-split sentences for Lsum."""

from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from honed.evals.rouge import ROUGE_TYPES, rouge_per_example, rouge_scores, split_sentences


def test_identical_texts_score_one() -> None:
    text = "The bill amends the Water Act. It requires a report to Congress."
    scores = rouge_scores([text], [text])
    assert set(scores) == set(ROUGE_TYPES)
    assert all(v == pytest.approx(1.0) for v in scores.values())


def test_matches_rouge_score_package() -> None:
    pred, ref = "the cat sat on the mat", "the cat lay on the red mat"
    direct = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(
        ref, pred
    )
    ours = rouge_scores([pred], [ref])
    for key in ("rouge1", "rouge2", "rougeL"):
        assert ours[key] == pytest.approx(direct[key].fmeasure)


def test_lsum_uses_sentences() -> None:
    # Same sentences in swapped order: LCS over the whole text (rougeL) loses one sentence,
    # the summary-level LCS (rougeLsum) matches each sentence separately.
    ref = "The act funds water projects. The secretary must report each year."
    pred = "The secretary must report each year. The act funds water projects."
    scores = rouge_scores([pred], [ref])
    assert scores["rougeLsum"] == pytest.approx(1.0)
    assert scores["rougeL"] < 0.8


def test_split_sentences_keeps_lines_and_splits_long_ones() -> None:
    text = "Amends the Act. Requires a report.\n(2) Authorizes grants"
    assert split_sentences(text) == [
        "Amends the Act.",
        "Requires a report.",
        "(2) Authorizes grants",
    ]


def test_empty_prediction_scores_zero_and_mean_over_examples() -> None:
    per = rouge_per_example(["", "grants for water"], ["grants for water", "grants for water"])
    assert per[0]["rouge1"] == 0.0 and per[1]["rouge1"] == pytest.approx(1.0)
    assert rouge_scores(["", "grants for water"], ["grants for water"] * 2)["rouge1"] == 0.5


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge_scores(["a", "b"], ["a"])


def test_no_examples_gives_zeros() -> None:
    assert rouge_scores([], []) == dict.fromkeys(ROUGE_TYPES, 0.0)
