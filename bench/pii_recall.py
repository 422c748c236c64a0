"""PII detection quality: recall and precision per entity type, false masking, latency.

    .venv/bin/python bench/pii_recall.py [--ner runs/pii-ner] [--generated 100] [--out FILE]

- **Held-out synthetic sentences**: the test split of examples/pii-ner.yaml (the same
  `prepare_data` call `honed run` makes, so the same rows, seed 42), which the NER never trained
  on. Gold spans are Presidio's labels (GPE counted as LOCATION). A gold span is found when a
  detected span of the same type overlaps it (recall); a detected span is right when it overlaps
  a gold span of its type (precision); `masked` is the share of the gold span's characters
  hidden by any detected span (what redaction needs, whatever the type).
- **Generated structured examples** (``--generated`` per type): the synthetic set holds few IP
  addresses, SSNs and IBANs (8, 11, 14 in all 1,000 rows); valid cards (Luhn, 12-19 digits,
  several groupings), e-mails, phones in national and international formats, IBANs (mod-97,
  five countries), SSNs and IPv4/IPv6 in sentence templates. Written by the author of the
  recognizers: a check of the formats, not an independent sample.
- **False masking on PhraseBank** (2,264 all-agree sentences, patterns only): sentences with any
  span masked, minus the hand-checked sentences holding real contact data (press-release phone
  numbers, listed below by line).
- **Latency** per sentence on the held-out sentences (patterns only; with the NER, one torch
  thread by default), after the one-off build (spaCy's import, the model's load), which is
  reported apart.
- **NER on PhraseBank**: sentences in which the NER masks a name, place or address (news
  text names real people, places and companies: not all of it is false masking).

Without ``--ner`` only the pattern recognizers are measured (names and addresses: not measured).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from honed.security.pii import NER_ENTITIES, STRUCTURED, PiiDetector, PiiSpan  # noqa: E402

SPEC = ROOT / "examples" / "pii-ner.yaml"
PHRASEBANK = ROOT.parent / "shared" / "data" / "financial_phrasebank" / "Sentences_AllAgree.txt"
GOLD_NAMES = {"GPE": "LOCATION"}
#: PhraseBank lines (1-based) that hold real contact data: masking them is right.
REAL_CONTACT_LINES = {307, 393, 487, 496, 551, 913, 918, 1018, 1351, 1354}
TARGETS = {**dict.fromkeys(STRUCTURED, 0.95), **dict.fromkeys(NER_ENTITIES, 0.85)}


# --------------------------------------------------------------------------------------------
# Scoring


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and a[1] > b[0]


def _masked_share(text: str, gold: dict, found: list[PiiSpan]) -> float:
    chars = [i for i in range(gold["start"], gold["end"]) if not text[i].isspace()]
    hidden = sum(any(s.start <= i < s.end for s in found) for i in chars)
    return hidden / max(len(chars), 1)


class Tally:
    def __init__(self) -> None:
        self.gold: Counter = Counter()
        self.found: Counter = Counter()
        self.predicted: Counter = Counter()
        self.right: Counter = Counter()
        self.masked: dict[str, list[float]] = {}
        self.misses: list[dict] = []

    def add(self, text: str, gold: list[dict], found: list[PiiSpan], types: set[str]) -> None:
        for g in gold:
            kind = g["entity_type"]
            if kind not in types:
                continue
            self.gold[kind] += 1
            span = (g["start"], g["end"])
            if any(s.entity == kind and _overlaps((s.start, s.end), span) for s in found):
                self.found[kind] += 1
            elif len(self.misses) < 40:
                self.misses.append({"type": kind, "value": text[span[0] : span[1]]})
            self.masked.setdefault(kind, []).append(_masked_share(text, g, found))
        for s in found:
            if s.entity not in types:
                continue
            self.predicted[s.entity] += 1
            same = [g for g in gold if g["entity_type"] == s.entity]
            if any(_overlaps((s.start, s.end), (g["start"], g["end"])) for g in same):
                self.right[s.entity] += 1

    def table(self) -> dict[str, dict]:
        out = {}
        for kind in sorted(set(self.gold) | set(self.predicted)):
            n, p = self.gold[kind], self.predicted[kind]
            recall = self.found[kind] / n if n else None
            out[kind] = {
                "n": n,
                "recall": recall,
                "precision": self.right[kind] / p if p else None,
                "masked": statistics.mean(self.masked[kind]) if self.masked.get(kind) else None,
                "target": TARGETS.get(kind),
                "met": None if recall is None else recall >= TARGETS.get(kind, 0),
            }
        return out


# --------------------------------------------------------------------------------------------
# Data


def held_out_rows() -> list[dict]:
    """The example's test split with every gold span (the task keeps only NER types)."""
    from honed.spec import load_spec
    from honed.train.tasks import get_task

    spec = load_spec(SPEC)
    test_texts = {r["text"] for r in get_task("ner").prepare_data(spec).test}
    raw = json.loads(Path(spec.data.resolve_source(spec.base_dir)).read_text(encoding="utf-8"))
    rows = []
    for rec in raw:
        if rec["full_text"] in test_texts:
            spans = [
                {
                    "entity_type": GOLD_NAMES.get(s["entity_type"], s["entity_type"]),
                    "start": s["start_position"],
                    "end": s["end_position"],
                }
                for s in rec["spans"]
            ]
            rows.append({"text": rec["full_text"], "spans": spans})
    return rows


def _luhn_complete(digits: str) -> str:
    for check in string.digits:
        number = digits + check
        total = 0
        for i, c in enumerate(reversed(number)):
            d = int(c)
            if i % 2 == 1:
                d = d * 2 - 9 if d > 4 else d * 2
            total += d
        if total % 10 == 0:
            return number
    raise AssertionError("unreachable")


def _card(rng: random.Random) -> str:
    length = rng.choice([12, 13, 15, 16, 16, 16, 19])
    prefix = rng.choice(["4", "51", "55", "34", "37", "6011", "35", "2131", "5018"])
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    number = _luhn_complete(body)
    if length == 16 and rng.random() < 0.6:
        sep = rng.choice([" ", "-"])
        return sep.join(number[i : i + 4] for i in range(0, 16, 4))
    return number


def _iban(rng: random.Random) -> str:
    country, length = rng.choice([("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14), ("ES", 20)])
    bban = "".join(rng.choice(string.digits) for _ in range(length))
    if country in ("GB", "NL"):
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + bban[4:]
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    iban = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    if rng.random() < 0.5:
        return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return iban


def _phone(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    return rng.choice(
        [
            f"{rng.randint(201, 989)}-{d(3)}-{d(4)}",
            f"({rng.randint(201, 989)}) {d(3)}-{d(4)}",
            f"+1 {rng.randint(201, 989)} {d(3)} {d(4)}",
            f"+44 20 {d(4)} {d(4)}",
            f"+49 30 {d(8)}",
            f"+358 9 {d(3)} {d(4)}",
            f"0{d(3)} {d(6)}",
            f"0{d(1)}.{d(2)}.{d(2)}.{d(2)}.{d(2)}",
            f"{rng.randint(201, 989)}.{d(3)}.{d(4)}",
            f"{rng.randint(2, 9)}{d(9)}",
        ]
    )


def _ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    return ":".join(f"{rng.randint(0, 65535):x}" for _ in range(8))


def _email(rng: random.Random) -> str:
    user = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))
    domain = rng.choice(["example.com", "mail.fi", "corp.co.uk"])
    return f"{user}.{rng.choice(['smith', 'k', 'ng'])}@{domain}"


GENERATORS = {
    "CREDIT_CARD": (
        _card,
        ["Please charge my card {} today.", "Card number: {}", "I paid with {} ."],
    ),
    "IBAN_CODE": (_iban, ["Send the refund to {} please.", "IBAN: {}", "Account {} is mine."]),
    "PHONE_NUMBER": (_phone, ["Call me at {} tomorrow.", "My phone is {}.", "Mobile: {}"]),
    "US_SSN": (_ssn, ["My SSN is {}.", "social security number {} on the form", "SSN: {}"]),
    "IP_ADDRESS": (_ip, ["The login came from {} last night.", "Server {} is down.", "IP: {}"]),
    "EMAIL_ADDRESS": (_email, ["Write to {} for details.", "E-mail: {}", "cc {} please"]),
}


def generated_rows(per_type: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for kind, (make, templates) in GENERATORS.items():
        for _ in range(per_type):
            value = make(rng)
            template = rng.choice(templates)
            start = template.index("{}")
            text = template.format(value)
            rows.append(
                {
                    "text": text,
                    "spans": [{"entity_type": kind, "start": start, "end": start + len(value)}],
                }
            )
    return rows


# --------------------------------------------------------------------------------------------
# Runs


def score(detector: PiiDetector, rows: list[dict], types: set[str]) -> tuple[dict, list[float]]:
    tally, latencies = Tally(), []
    for row in rows:
        started = time.perf_counter()
        found = detector.find(row["text"])
        latencies.append((time.perf_counter() - started) * 1000)
        tally.add(row["text"], row["spans"], found, types)
    return {"per_type": tally.table(), "misses": tally.misses}, latencies


def false_masking(detector: PiiDetector) -> dict:
    lines = PHRASEBANK.read_bytes().decode("iso-8859-1").splitlines()
    masked, wrong = [], []
    for number, line in enumerate(lines, start=1):
        sentence = line.rpartition("@")[0]
        found = detector.find(sentence)
        if found:
            hit = {
                "line": number,
                "spans": [(s.entity, sentence[s.start : s.end]) for s in found],
            }
            masked.append(hit)
            if number not in REAL_CONTACT_LINES:
                wrong.append(hit)
    return {
        "sentences": len(lines),
        "masked": len(masked),
        "real_contact_data": sorted(REAL_CONTACT_LINES),
        "false_masked": len(wrong),
        "false_masking_rate": len(wrong) / len(lines),
        "target": 0.002,
        "met": len(wrong) / len(lines) < 0.002,
        "false_examples": wrong[:20],
    }


def ner_masking(detector: PiiDetector) -> dict:
    """PhraseBank sentences in which the NER masks something, by type: news names people,
    places and companies, so this is not all false masking; it says what the log would lose."""
    lines = PHRASEBANK.read_bytes().decode("iso-8859-1").splitlines()
    by_type: Counter = Counter()
    any_span = 0
    for line in lines:
        found = {s.entity for s in detector.find(line.rpartition("@")[0])} & set(NER_ENTITIES)
        by_type.update(found)
        any_span += bool(found)
    return {"sentences": len(lines), "with_ner_span": any_span, "by_type": dict(by_type)}


def _latency(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "mean_ms": round(statistics.mean(values), 2),
        "p50_ms": round(ordered[len(ordered) // 2], 2),
        "p95_ms": round(ordered[int(len(ordered) * 0.95)], 2),
    }


def _timed_build(detector: PiiDetector) -> float:
    started = time.perf_counter()
    detector.find("build 212-555-0199 Maria Rossi")
    return round(time.perf_counter() - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ner", type=Path, help="a honed ner run folder (examples/pii-ner.yaml)")
    parser.add_argument("--generated", type=int, default=100, help="generated rows per type")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pii_recall.json")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the NER)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)  # on shared cores more threads only contend

    patterns = PiiDetector()
    report: dict = {"build_s": {"patterns": _timed_build(patterns)}}
    rows = held_out_rows()
    report["held_out_rows"] = len(rows)
    report["patterns"], lat = score(patterns, rows, set(STRUCTURED))
    report["latency"] = {"patterns": _latency(lat)}
    report["generated"], _ = score(patterns, generated_rows(args.generated), set(STRUCTURED))
    report["phrasebank"] = false_masking(patterns)
    if args.ner:
        detector = PiiDetector(args.ner)
        report["build_s"]["with_ner"] = _timed_build(detector)
        report["with_ner"], lat = score(detector, rows, set(STRUCTURED) | set(NER_ENTITIES))
        report["latency"]["with_ner"] = _latency(lat)
        report["phrasebank_with_ner"] = ner_masking(detector)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
