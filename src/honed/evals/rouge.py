"""ROUGE-1/2/L/Lsum with Google's ``rouge-score`` package (no hub download, unlike the
``evaluate`` library's metric loader, which wraps this same package).

ROUGE-Lsum is the summary-level LCS: it treats each newline-separated line as a sentence, so
both texts are split into sentences first and joined with newlines. Scores are F-measures in
[0, 1], averaged over the examples (the usual "mean of per-example F1" reporting).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# A sentence ends at . ! or ? followed by whitespace and then an upper-case letter, a digit or
# an opening bracket/quote. Abbreviations like "U.S. Code" split wrongly now and then; that only
# shifts ROUGE-Lsum slightly and keeps us free of NLTK's punkt download.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'`])")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: existing line breaks are kept, long lines are split further."""
    sentences: list[str] = []
    for line in text.splitlines():
        sentences.extend(s.strip() for s in _SENTENCE_END.split(line.strip()) if s.strip())
    return sentences


def _lsum_text(text: str) -> str:
    return "\n".join(split_sentences(text))


def rouge_scores(
    predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True
) -> dict[str, float]:
    """Mean ROUGE F-measures: {"rouge1", "rouge2", "rougeL", "rougeLsum"} in [0, 1].

    An empty prediction scores 0 against a non-empty reference (it is not skipped).
    """
    per_example = rouge_per_example(predictions, references, use_stemmer)
    if not per_example:
        return dict.fromkeys(ROUGE_TYPES, 0.0)
    return {k: sum(s[k] for s in per_example) / len(per_example) for k in ROUGE_TYPES}


def rouge_per_example(
    predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True
) -> list[dict[str, float]]:
    """ROUGE F-measures of each (prediction, reference) pair."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"rouge: {len(predictions)} predictions but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    out = []
    for pred, ref in zip(predictions, references, strict=True):
        # rougeLsum reads sentences from newlines; the other types ignore them.
        scores = scorer.score(_lsum_text(ref), _lsum_text(pred))
        out.append({k: float(scores[k].fmeasure) for k in ROUGE_TYPES})
    return out
