"""Generate data/rft/arithmetic_json.jsonl: short arithmetic questions whose answer must come
back as JSON {"answer": <int>}. Deterministic (seed 2026): `python data/rft/make_arithmetic.py`."""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 2026
ROWS = 600
TEMPLATES = (
    'What is {a} {op} {b}? Answer in JSON with the key "answer".',
    'Compute {a} {op} {b}. Reply as JSON with the key "answer".',
    '{a} {op} {b} = ? Give the result as JSON with the key "answer".',
)


def rows(n: int = ROWS, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        op = rng.choice("+-")
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        if op == "-" and b > a:
            a, b = b, a
        template = rng.choice(TEMPLATES)
        prompt = template.format(a=a, op=op, b=b)
        if prompt in seen:
            continue
        seen.add(prompt)
        answer = a + b if op == "+" else a - b
        out.append({"prompt": prompt, "answer": answer, "a": a, "b": b, "op": op})
    return out


if __name__ == "__main__":
    path = Path(__file__).with_name("arithmetic_json.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()), encoding="utf-8")
    print(f"wrote {path} ({ROWS} rows, seed {SEED})")
