"""Streamed output redaction (`pii_output`) against redacting the whole answer at once.

    .venv/bin/python bench/output_guards.py [--texts 200] [--join 5] [--window 64] [--seed 0]

Texts: the shared synthetic PII sentences (`shared/data/security/pii/pii_synthetic.json`)
that hold a structured entity (e-mail, card, phone, IBAN, SSN, IP), `--join` of them to an
answer (several windows long, so streams are cut mid-answer), each streamed through
`honed.serve.http.output_filter.ChoiceStream` in random 1-6 character deltas (token-sized),
as the server does for a streamed answer. Figures:
  * agreement: the streamed output equals the whole-text redaction (same detector);
  * leaks: labelled structured values still present in the output, streamed vs whole (the
    difference is what streaming costs; the rest is the detector's own recall);
  * time per delta (p50 / p95) and per text (streamed, and whole at once), and the
    characters held back (lag) when the first chunk leaves and on average.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("shared/data/security/pii/pii_synthetic.json")
STRUCTURED = {"EMAIL_ADDRESS", "CREDIT_CARD", "PHONE_NUMBER", "IBAN_CODE", "US_SSN", "IP_ADDRESS"}


def load_texts(n: int, seed: int) -> list[tuple[str, list[str]]]:
    for base in (ROOT, ROOT.parent, Path("/work")):
        if (base / DATA).is_file():
            rows = json.loads((base / DATA).read_text())
            break
    else:
        sys.exit(f"not found: {DATA}")
    picked = [
        (r["full_text"], [s["entity_value"] for s in r["spans"] if s["entity_type"] in STRUCTURED])
        for r in rows
    ]
    picked = [p for p in picked if p[1]]
    random.Random(seed).shuffle(picked)
    return picked[:n]


def answers(texts: list[tuple[str, list[str]]], k: int) -> list[tuple[str, list[str]]]:
    """`k` sentences per answer, joined by spaces, with all their labelled values."""
    return [
        (" ".join(t for t, _ in texts[i : i + k]), [v for _, vs in texts[i : i + k] for v in vs])
        for i in range(0, len(texts), k)
    ]


def deltas(text: str, rng: random.Random) -> list[str]:
    out, at = [], 0
    while at < len(text):
        step = rng.randint(1, 6)
        out.append(text[at : at + step])
        at += step
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=200)
    ap.add_argument("--join", type=int, default=5, help="sentences per answer")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from honed.security.guards_config import GuardConfig
    from honed.serve.http.guards import GuardSet
    from honed.serve.http.output_filter import OutputScreen

    started = time.perf_counter()
    guards = GuardSet([GuardConfig(kind="pii_output", window_chars=args.window)])
    build_s = time.perf_counter() - started
    rng = random.Random(args.seed)
    texts = answers(load_texts(args.texts, args.seed), args.join)
    agree = leaks_stream = leaks_whole = values = 0
    per_delta, per_text, per_whole, lags, first_lags = [], [], [], [], []
    for text, secrets in texts:
        a = time.perf_counter()
        whole, _ = OutputScreen(guards).whole(0, text)
        per_whole.append(time.perf_counter() - a)
        one = OutputScreen(guards).stream(0)
        sent, received, first = [], 0, None
        t0 = time.perf_counter()
        for d in deltas(text, rng):
            a = time.perf_counter()
            out, _ = one.feed(d, [])
            per_delta.append(time.perf_counter() - a)
            received += len(d)
            sent.append(out)
            lags.append(received - sum(len(s) for s in sent))
            if out and first is None:
                first = received
        sent.append(one.end()[0])
        per_text.append(time.perf_counter() - t0)
        first_lags.append(first if first is not None else len(text))
        streamed = "".join(sent)
        agree += streamed == whole
        values += len(secrets)
        leaks_stream += sum(v in streamed for v in secrets)
        leaks_whole += sum(v in whole for v in secrets)
    ms = sorted(x * 1000 for x in per_delta)
    result = {
        "answers": len(texts),
        "window_chars": args.window,
        "agreement_stream_vs_whole": round(agree / len(texts), 4),
        "structured_values": values,
        "leaked_streamed": leaks_stream,
        "leaked_whole": leaks_whole,
        "ms_per_delta_p50": round(statistics.median(ms), 3),
        "ms_per_delta_p95": round(ms[int(0.95 * (len(ms) - 1))], 3),
        "ms_per_text_mean": round(1000 * statistics.mean(per_text), 2),
        "ms_per_text_whole_mean": round(1000 * statistics.mean(per_whole), 2),
        "chars_received_before_first_chunk_median": statistics.median(first_lags),
        "chars_held_back_mean": round(statistics.mean(lags), 1),
        "text_chars_mean": round(statistics.mean(len(t) for t, _ in texts), 1),
        "detector_build_s": round(build_s, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
