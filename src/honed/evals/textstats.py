"""Cheap text statistics for drift checks: lengths, out-of-vocabulary rate, language share.

No models and no network: the language guess counts stopwords of a few European languages and
the share of non-Latin letters. It tells "English financial news" from "German chat" or
"Cyrillic text", which is what a drift signal needs; it is not a language identifier.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

_WORD_RE = re.compile(r"[^\W\d_]+", re.UNICODE)  # runs of letters

# A few dozen of the most frequent function words per language (lower case).
STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        [
            "the",
            "of",
            "and",
            "to",
            "in",
            "is",
            "that",
            "for",
            "it",
            "as",
            "was",
            "with",
            "be",
            "by",
            "on",
            "not",
            "he",
            "this",
            "are",
            "or",
            "his",
            "from",
            "at",
            "which",
            "but",
            "have",
            "an",
            "they",
            "you",
            "were",
            "her",
            "she",
            "there",
            "been",
            "one",
            "all",
            "we",
            "their",
            "has",
            "would",
            "its",
            "will",
            "what",
            "if",
            "can",
            "when",
            "who",
            "more",
            "no",
            "out",
            "up",
            "so",
            "said",
        ]
    ),
    "de": frozenset(
        [
            "der",
            "die",
            "und",
            "in",
            "den",
            "von",
            "zu",
            "das",
            "mit",
            "sich",
            "des",
            "auf",
            "für",
            "ist",
            "im",
            "dem",
            "nicht",
            "ein",
            "eine",
            "als",
            "auch",
            "es",
            "an",
            "werden",
            "aus",
            "er",
            "hat",
            "dass",
            "sie",
            "nach",
            "wird",
            "bei",
            "einer",
            "um",
            "am",
            "sind",
            "noch",
            "wie",
            "einem",
            "über",
            "einen",
            "so",
            "zum",
            "war",
            "haben",
            "nur",
            "oder",
            "aber",
            "vor",
            "zur",
            "bis",
            "mehr",
            "durch",
            "man",
            "ich",
            "du",
            "wir",
            "ihr",
        ]
    ),
    "fr": frozenset(
        [
            "le",
            "la",
            "les",
            "de",
            "des",
            "du",
            "et",
            "en",
            "un",
            "une",
            "est",
            "que",
            "qui",
            "dans",
            "pour",
            "pas",
            "sur",
            "au",
            "il",
            "elle",
            "avec",
            "ce",
            "se",
            "par",
            "plus",
            "ne",
            "sont",
            "mais",
            "ou",
            "aux",
            "nous",
            "vous",
            "ils",
            "cette",
            "été",
            "être",
            "fait",
            "comme",
            "son",
            "sa",
            "ses",
        ]
    ),
    "es": frozenset(
        [
            "el",
            "la",
            "los",
            "las",
            "de",
            "del",
            "y",
            "en",
            "un",
            "una",
            "es",
            "que",
            "por",
            "con",
            "para",
            "no",
            "se",
            "su",
            "al",
            "lo",
            "como",
            "más",
            "pero",
            "sus",
            "le",
            "ya",
            "o",
            "fue",
            "este",
            "ha",
            "sí",
            "porque",
            "esta",
            "entre",
            "cuando",
            "muy",
            "sin",
            "sobre",
            "también",
        ]
    ),
    "it": frozenset(
        [
            "il",
            "lo",
            "la",
            "i",
            "gli",
            "le",
            "di",
            "del",
            "della",
            "e",
            "è",
            "in",
            "un",
            "una",
            "che",
            "per",
            "con",
            "non",
            "si",
            "da",
            "al",
            "alla",
            "sono",
            "come",
            "più",
            "ma",
            "anche",
            "questo",
            "nel",
            "nella",
            "dei",
            "delle",
            "ha",
            "essere",
        ]
    ),
    "nl": frozenset(
        [
            "de",
            "het",
            "een",
            "en",
            "van",
            "in",
            "is",
            "dat",
            "op",
            "te",
            "zijn",
            "met",
            "voor",
            "niet",
            "aan",
            "er",
            "ook",
            "als",
            "bij",
            "maar",
            "om",
            "uit",
            "dan",
            "nog",
            "wel",
            "naar",
            "heeft",
            "worden",
            "kan",
            "deze",
            "dit",
        ]
    ),
}
LANGUAGES = (*STOPWORDS, "non_latin", "unknown")
# stopword -> indices (in STOPWORDS order) of the languages listing it
_STOP_LANGS: dict[str, tuple[int, ...]] = {}
for _j, _stop in enumerate(STOPWORDS.values()):
    for _word in _stop:
        _STOP_LANGS[_word] = (*_STOP_LANGS.get(_word, ()), _j)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD_RE.findall(text)]


def guess_language(text: str, tokens: list[str] | None = None) -> str:
    """One of :data:`LANGUAGES` by stopword hits; ``non_latin`` when most letters are
    outside Latin script, ``unknown`` when no stopword matches. ``tokens``: ``words(text)``
    when the caller has them already."""
    if not text.isascii():  # ASCII text is Latin: skip the per-character scan
        letters = [c for c in text if c.isalpha()]
        if letters and sum(not _is_latin(c) for c in letters) > len(letters) / 2:
            return "non_latin"
    tokens = words(text) if tokens is None else tokens
    # One dict lookup per token instead of one set lookup per token and language (the
    # streamed drift check runs this on every logged text).
    hits = [0] * len(STOPWORDS)
    for token in tokens:
        for j in _STOP_LANGS.get(token, ()):
            hits[j] += 1
    best, best_hits = "unknown", 0
    for lang, count in zip(STOPWORDS, hits, strict=True):
        if count > best_hits:  # ties: the first language in STOPWORDS order
            best, best_hits = lang, count
    return best


def _is_latin(char: str) -> bool:
    # Basic Latin + Latin-1 + Latin Extended-A/B cover English, German, French, Spanish, ...
    return ord(char) < 0x250


def language_shares(texts: Sequence[str]) -> dict[str, float]:
    counts = Counter(guess_language(t) for t in texts)
    n = max(len(texts), 1)
    return {lang: counts.get(lang, 0) / n for lang in LANGUAGES}


def analyse(
    texts: Sequence[str], vocab: set[str] | frozenset[str]
) -> tuple[np.ndarray, float, dict[str, float]]:
    """Words per text (n,), OOV rate against ``vocab`` and language shares, tokenising each
    text once (a 100k-request window costs a few seconds, not three passes of that)."""
    lengths, unknown, langs = analyse_counts(texts, vocab)
    total = int(lengths.sum())  # word counts: exact in float64
    n = max(len(texts), 1)
    shares = {lang: langs.get(lang, 0) / n for lang in LANGUAGES}
    return lengths, (unknown / total if total else 0.0), shares


def analyse_counts(
    texts: Sequence[str], vocab: set[str] | frozenset[str]
) -> tuple[np.ndarray, int, Counter[str]]:
    """:func:`analyse` as counts, which add up over chunks of a window: words per text (n,),
    out-of-vocabulary words, texts per language."""
    lengths = np.empty(len(texts), dtype=np.float64)
    langs: Counter[str] = Counter()
    unknown = 0
    for i, text in enumerate(texts):
        tokens = words(text)
        lengths[i] = len(tokens)
        unknown += sum(t not in vocab for t in tokens)
        langs[guess_language(text, tokens)] += 1
    return lengths, unknown, langs


def word_lengths(texts: Sequence[str]) -> np.ndarray:
    """Words per text, shape (n_texts,)."""
    return np.array([len(words(t)) for t in texts], dtype=np.float64)


def build_vocab(texts: Iterable[str], max_size: int) -> list[str]:
    counts = Counter(w for t in texts for w in words(t))
    return [w for w, _ in counts.most_common(max_size)]


def oov_rate(texts: Sequence[str], vocab: set[str] | frozenset[str]) -> float:
    """Share of word tokens not in ``vocab`` (the unknown-token rate of a word vocabulary)."""
    total = unknown = 0
    for text in texts:
        tokens = words(text)
        total += len(tokens)
        unknown += sum(t not in vocab for t in tokens)
    return unknown / total if total else 0.0


def unk_token_rate(texts: Sequence[str], tokenizer) -> float:
    """Share of subword tokens mapped to the tokenizer's unknown token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        raise ValueError("tokenizer has no unk_token_id: pass a word vocabulary instead")
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    total = sum(len(x) for x in ids)
    return sum(sum(i == unk for i in x) for x in ids) / total if total else 0.0
