"""Prompt-injection screening: cheap heuristics and a classifier trained by honed itself.

Two layers, used by the server's input guards (honed.serve.http.guards) and by
``bench/injection_guard.py``:

- ``heuristic_findings(text)``: precompiled regular expressions and a character scan, a few
  microseconds per short text, no model. Each finding is a stable reason code (see ``REASONS``)
  so logs and metrics stay low-cardinality and never echo the user's text.
- ``InjectionDetector``: a classification run folder (``examples/prompt-injection-guard.yaml``)
  loaded through honed's own ``Predictor`` (optionally int8 dynamic quantization of the
  encoder on CPU), one lock around tokenizer + forward (fast tokenizers are not safe to share
  across threads), probability of the injection label out.

The heuristics see what a small classifier misses by construction: tokens that only mean
something to the serving model's chat template, characters the tokenizer drops, payloads hidden
in base64 or hex. The classifier sees what patterns miss: paraphrased overrides, role play that
takes the assistant over, prompt-leak requests in many wordings.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from honed.errors import ModelError
from honed.models.quantize import quantize_int8

#: Reason codes ``heuristic_findings`` returns, with what each means.
REASONS = {
    "override_phrase": "asks to ignore / forget / replace earlier instructions, or to reveal "
    "the system prompt (English and German; the commonest forms in a few more languages)",
    "role_takeover": "tells the assistant it is now someone else ('you are now', 'du bist jetzt')",
    "role_token": "chat-template control tokens (<|im_start|>system, [INST], <<SYS>>, ...), "
    "'System:' lines, a fake end of the prompt ('=====END')",
    "unicode_tags": "Unicode tag characters (U+E0000-E007F): invisible ASCII",
    "invisible_chars": "zero-width characters inside Latin words",
    "bidi_control": "bidirectional override / embedding / isolate controls",
    "spaced_letters": "a sentence spelt out letter by letter ('I g n o r e ...')",
    "encoded_payload": "a base64 or hex blob that decodes to an override phrase or role token",
}

_W = r"(?:[\w'’-]+[\s,.:;!-]+)"  # one word and what follows it (bounded uses only)
_SEP = r"[\s,.:;!-]+"
_EN_TAIL = (
    rf"\b{_SEP}{_W}{{0,4}}?(?:previous|prior|preceding|above|earlier|former|initial|original"
    rf"|all|any|every|your|the){_SEP}{_W}{{0,3}}?(?:instructions?|prompts?|orders?|commands?"
    r"|directions?|directives?|rules?|guidelines?|tasks?|assignments?|context|information"
    r"|documents?|text|messages?|constraints?)\b"
)
_DE_TAIL = (
    rf"\b{_SEP}{_W}{{0,4}}?(?:vorherigen|bisherigen|obigen|vorangehenden|vorangegangenen"
    rf"|vorigen|früheren|alle|alles|deine|ihre|die){_SEP}{_W}{{0,3}}?(?:anweisungen|befehle"
    r"|aufgaben|aufträge|instruktionen|angaben|informationen|regeln|vorgaben|ausführungen"
    r"|dokumente|texte?)\b"
)

# Rules run on the lower-cased NFKC text. Every pattern starts with a literal, which Python's
# `re` finds with a fast substring search; a pattern starting with \b or an alternation is
# tried at every character instead (~0.2 us each, 100x slower on clean text). So alternations
# are expanded into one pattern per leading word, and the word boundary before the match is
# checked afterwards (`_Rule.search`).
_OVERRIDE_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    # ignore / disregard / forget ... (all) (previous|above|...) instructions
    (
        (
            "ignor(?:e|ing)",
            "disregard",
            "forget",
            "skip",
            "drop",
            "overlook",
            "bypass",
            "override",
            "abandon",
            "leave",
        ),
        _EN_TAIL,
    ),
    (("ignore", "disregard"), r"\s+(?:the\s+)?(?:above|previous|everything)\b"),
    (("forget",), r"\s+(?:about\s+)?(?:everything|all\s+(?:that|of\s+(?:the|that)|previous))"),
    (("system", "initial", "original", "hidden", "secret"), r"\s*-?\s*prompts?\b"),
    (
        ("reveal", "show", "print", "output", "repeat", "display", "tell me"),
        r"\s+(?:me\s+)?(?:all\s+)?(?:of\s+)?(?:your|the|above|this)\s+(?:\w+\s+)?"
        r"(?:prompts?|instructions|system\s+message)\b",
    ),
    (("what was written", "what is written"), r"\s+(?:at\s+the\s+beginning|above)\b"),
    (("what are your",), r"\s+(?:instructions|rules|system|initial)\b"),
    (
        ("new", "further", "additional"),
        r"\s+(?:tasks?|instructions?)\s+(?:follow|are\s+(?:as\s+)?follows?|are\s+followed)"
        r"\s*[.:!]",  # ends the sentence: "new instructions follow." introduces them
    ),
    (("focus", "concentrate"), r"\s+on\s+(?:your|the)\s+new\s+task\b"),
    (("developer", "god", "dan", "jailbreak"), r"\s+mode\b"),
    (("do anything now",), ""),
    # German: ignoriere / vergiss ... (alle) (vorherigen|bisherigen|obigen) Anweisungen
    (
        (
            "ignorier\\w*",
            "vergiss",
            "vergessen\\s+sie",
            "missachte\\w*",
            "verwirf",
            "überspring\\w*",
            "lass\\w*",
        ),
        _DE_TAIL,
    ),
    (("vergiss", "vergessen sie"), r"\s+(?:bitte\s+)?(?:alles|alle)\b"),
    (("ignorier",), r"\w*\s+(?:alles|die\s+obigen)\b"),
    (("obigen",), r"\s+(?:\w+\s+){0,2}?ignorier"),
    (
        ("abweichend",),
        r"\s+(?:zu|von)\s+(?:den\s+)?(?:vorherigen|bisherigen)\s+(?:instruktionen"
        r"|anweisungen)",
    ),
    (("system",), r"-?\s?anweisung"),
    (("neue", "weitere"), r"\s+(?:aufgaben|anweisungen)\s+folgen\s*[.:!]"),
    (("nun folgen", "jetzt folgen"), r"\s+(?:neue|weitere)\b"),
    (("zeig",), r"e?\s+(?:mir\s+)?(?:alle\s+)?(?:deine|ihre|den)\s+(?:\w+\s+)?prompt"),
    # The same request in a few more languages attackers use to slip past English filters.
    (("olvid",), r"[ae]\w*\s+tod[ao]s?\b"),
    (("ignora",), r"\s+(?:todas?|tutte?|le\s+istruzioni)\b"),
    (("oublie",), r"z?\s+(?:tout|toutes\s+les\s+instructions)\b"),
    (("zaboravi",), r"\s+sve\b"),
    (("забуд",), r"\w*\s+(?:все|всё)\b"),
)
_TAKEOVER_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        (
            "you are now",
            "now you are",
            "imagine you are",
            "du bist jetzt",
            "du bist nun",
            "du bist ab sofort",
            "jetzt bist du",
            "nun bist du",
        ),
        r"\b",
    ),
    (("from now on",), r",?\s+you\b"),
    (("i want you to", "please"), r"\s+act\s+as\b"),
    (("pretend",), r"\s+(?:to\s+be|you\s+are|you\s+can)\b"),
    (("you are role",), r"-?\s?playing\s+as\b"),
    (("stell dir vor",), r",?\s+du\s+bist\b"),
    (("dass sie als",), r"\s+[\w-]+\s+(?:fungieren|agieren|auftreten)\b"),
)
# (literal, tail, whether it must start a line)
_ROLE_RULES: tuple[tuple[str, str, bool], ...] = (
    (
        "<|",
        r"(?:im_start|im_end|im_sep|system|user|assistant|endoftext|eot_id|start_header_id"
        r"|end_header_id|begin_of_text)\|>",
        False,
    ),
    ("[inst]", "", False),
    ("[/inst]", "", False),
    ("<<", r"\s*/?sys\s*>>", False),
    ("<start_of_turn>", "", False),
    ("<end_of_turn>", "", False),
    ("##", r"#*\s*(?:system|instruction|assistant)\s*:", True),
    ("system", r"\s*:\s", True),
    ("assistant", r"\s*:\s", True),
    ("====", r"=*\s*end\b", False),  # a fake end of the prompt
)


@dataclass(frozen=True)
class _Rule:
    """A pattern that starts with a literal; the boundary checks run only on a match."""

    literal: str  # what every match starts with: a substring test skips most texts
    regex: re.Pattern[str]
    word_start: bool = True  # the match must not start inside a word
    line_start: bool = False  # only whitespace may precede it on its line

    def search(self, low: str) -> bool:
        if self.literal not in low:
            return False
        for found in self.regex.finditer(low):
            at = found.start()
            if self.word_start and at and (low[at - 1].isalnum() or low[at - 1] == "_"):
                continue
            if self.line_start and low[low.rfind("\n", 0, at) + 1 : at].strip():
                continue
            return True
        return False


def _phrase_rules(table: tuple[tuple[tuple[str, ...], str], ...]) -> tuple[_Rule, ...]:
    def rule(lead: str, tail: str) -> _Rule:
        literal = re.split(r"[\\(]", lead, maxsplit=1)[0]  # up to the first regex syntax
        head = lead if literal != lead else re.escape(lead)
        return _Rule(literal, re.compile(head + tail))

    return tuple(rule(lead, tail) for leads, tail in table for lead in leads)


def _indexed(
    checks: tuple[tuple[str, tuple[_Rule, ...]], ...],
) -> tuple[tuple[str, tuple[tuple[str, _Rule], ...]], ...]:
    """(literal, its (reason, rule) pairs): one substring test per literal, then only the
    rules whose literal occurs run (per-rule Python calls cost more than the searches)."""
    index: dict[str, list[tuple[str, _Rule]]] = {}
    for reason, rules in checks:
        for rule in rules:
            index.setdefault(rule.literal, []).append((reason, rule))
    return tuple((literal, tuple(pairs)) for literal, pairs in index.items())


_PHRASE_INDEX = _indexed(
    (
        ("override_phrase", _phrase_rules(_OVERRIDE_RULES)),
        ("role_takeover", _phrase_rules(_TAKEOVER_RULES)),
        (
            "role_token",
            tuple(
                _Rule(lit, re.compile(re.escape(lit) + tail), word_start=False, line_start=line)
                for lit, tail, line in _ROLE_RULES
            ),
        ),
    )
)
_TAGS_RE = re.compile("[\U000e0000-\U000e007f]")
_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u180e"
_INVISIBLE_RE = re.compile(f"[{_INVISIBLE}]")
# Zero-width characters between two Latin letters or digits split words the tokenizer would
# otherwise see ("ig\u200bnore"); between Khmer or Thai letters (word separators there) or
# inside emoji sequences they are ordinary text.
_ZERO_WIDTH_RE = re.compile(f"[A-Za-z0-9][{_INVISIBLE}]+[A-Za-z0-9]")
_BASE64_RE = re.compile(r"[A-Za-z0-9+/_-]{24,}={0,2}")
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2}){12,}")
# Spelt-out letters: ten single letters in a row (the pattern starts with a literal space).
_SPACED_RE = re.compile(r" (?:[^\W\d_] ){9}[^\W\d_](?!\w)")
#: Work bound for the encoded-payload check on very long inputs.
_MAX_BLOBS = 8
_MAX_BLOB_CHARS = 8192


def _decode_blob(blob: str) -> str | None:
    """The printable text a base64 / hex blob hides, or None."""
    if _HEX_RE.fullmatch(blob):
        raw = bytes.fromhex(blob)
    else:
        padded = blob + "=" * (-len(blob) % 4)
        try:
            raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    printable = sum(ch.isprintable() or ch.isspace() for ch in text)
    return text if text and printable / len(text) > 0.9 else None


def _encoded_payload(text: str) -> bool:
    if max(map(len, text.split()), default=0) < 24:
        return False  # no blob long enough to hide a phrase
    blobs = [*_HEX_RE.findall(text), *_BASE64_RE.findall(text)][:_MAX_BLOBS]
    for blob in blobs:
        decoded = _decode_blob(blob[:_MAX_BLOB_CHARS])
        if decoded and _phrase_reasons(decoded):
            return True
    return False


def _phrase_reasons(text: str) -> list[str]:
    low = unicodedata.normalize("NFKC", text).lower()
    hits = [pairs for literal, pairs in _PHRASE_INDEX if literal in low]
    found: set[str] = set()
    for pairs in hits:
        found.update(r for r, rule in pairs if r not in found and rule.search(low))
    if _SPACED_RE.search(low):
        found.add("spaced_letters")
    return [r for r in REASONS if r in found]


def _character_reasons(text: str) -> list[str]:
    """Invisible characters; the caller has ruled out pure-ASCII text (it has none)."""
    found = []
    if max(text) >= "\U000e0000" and _TAGS_RE.search(text):
        found.append("unicode_tags")
    if any(ch in text for ch in _INVISIBLE) and _ZERO_WIDTH_RE.search(text):
        found.append("invisible_chars")
    if any(ch in text for ch in _BIDI):
        found.append("bidi_control")
    return found


def heuristic_findings(text: str) -> list[str]:
    """Reason codes (keys of ``REASONS``) why ``text`` looks like an injection; empty: clean.

    Phrases are matched on the lower-cased NFKC form with tag and zero-width characters
    removed, so full-width letters or a zero-width space inside "ignore" hide nothing."""
    found: list[str] = []
    visible = text
    if not text.isascii():
        found += _character_reasons(text)
        visible = _INVISIBLE_RE.sub("", _TAGS_RE.sub("", text))
    found += _phrase_reasons(visible)
    if "unicode_tags" in found:
        # Tag characters mirror ASCII (U+E0041 is an invisible 'A'): read what they spell.
        hidden = "".join(chr(ord(c) - 0xE0000) for c in _TAGS_RE.findall(text))
        found += [r for r in _phrase_reasons(hidden) if r not in found]
    if _encoded_payload(text):
        found.append("encoded_payload")
    return found


class InjectionDetector:
    """Probability that a text is a prompt injection, from a honed classification run folder.

    ``threshold``: the score at or above which ``flags`` says injection (choose it on
    validation data: ``bench/injection_guard.py`` prints the one for the shipped example).
    ``quantize``: int8 dynamic quantization (CPU only; off by default: on the shipped guard it
    moved scores enough that a threshold chosen for float32 no longer holds, so choose the
    threshold again with the same setting). ``max_length``:
    token limit per text (default: the run's ``model.max_length``); longer texts are
    truncated. ``positive_label``: the injection label's name (default ``injection`` when the
    folder has it, else the label with id 1 of a two-label model).
    """

    def __init__(
        self,
        model_dir: Path | str,
        threshold: float = 0.5,
        device: str = "cpu",
        *,
        quantize: bool = False,
        max_length: int | None = None,
        positive_label: str | None = None,
    ) -> None:
        from honed.models.predict import Predictor

        if not 0.0 <= threshold <= 1.0:
            raise ModelError(f"injection threshold must be within [0, 1], got {threshold}")
        predictor = Predictor.from_folder(model_dir, merge=True)
        self.labels = list(predictor.labels)
        self.positive = _positive_index(self.labels, positive_label, model_dir)
        self.threshold = threshold
        self.device = device
        self.max_length = max_length or predictor.max_length
        self.tokenizer = predictor.tokenizer
        model = predictor.model.to(device).eval()
        if quantize and not device.startswith("cpu"):
            raise ModelError(f"int8 injection-detector quantization runs on CPU only: {device!r}")
        self.model = quantize_int8(model) if quantize else model
        self._lock = threading.Lock()

    def score(self, texts: Sequence[str], batch_size: int = 32) -> list[float]:
        """Probability of the injection label for each text, in order."""
        scores: list[float] = []
        for start in range(0, len(texts), batch_size):
            scores += self._batch(list(texts[start : start + batch_size]))
        return scores

    def flags(self, texts: Sequence[str]) -> list[bool]:
        """Whether each text scores at or above the threshold."""
        return [s >= self.threshold for s in self.score(texts)]

    def _batch(self, texts: list[str]) -> list[float]:
        # Blank text carries no instruction (and some tokenizers give it no tokens at all).
        keep = [i for i, text in enumerate(texts) if text.strip()]
        scores = [0.0] * len(texts)
        for i, score in zip(keep, self._forward([texts[i] for i in keep]), strict=True):
            scores[i] = score
        return scores

    def _forward(self, texts: list[str]) -> list[float]:
        import torch

        if not texts:
            return []
        with self._lock, torch.inference_mode():
            batch = self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            logits = self.model(**batch).logits.float()
        return logits.softmax(-1)[:, self.positive].tolist()


def _positive_index(labels: list[str], wanted: str | None, folder: Path | str) -> int:
    if wanted is not None:
        if wanted not in labels:
            raise ModelError(f"{folder}: no label {wanted!r} (labels: {labels})")
        return labels.index(wanted)
    if "injection" in labels:
        return labels.index("injection")
    if len(labels) == 2:
        return 1
    raise ModelError(
        f"{folder}: cannot tell which of {labels} means injection: pass positive_label"
    )
