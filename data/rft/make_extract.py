"""Generate data/rft/extract_json.jsonl: short notes holding two numbers, and a question whose
answer (one of them) must come back as JSON {"answer": <int>}. Deterministic (seed 2026):
`python data/rft/make_extract.py`."""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 2026
ROWS = 600
CITIES = ("Lyon", "Porto", "Leeds", "Graz", "Turin", "Ghent", "Bergen", "Malaga", "Krakow")
# (note, question): {x} is asked for, {y} is the distractor.
TEMPLATES = (
    ("The parcel weighs {x} kg and ships to {city} in {y} days.", "How many kg does it weigh?"),
    ("The parcel ships to {city} in {x} days and weighs {y} kg.", "In how many days does it ship?"),
    ("The hotel in {city} has {x} rooms on {y} floors.", "How many rooms does it have?"),
    ("The hotel in {city} has {y} rooms on {x} floors.", "How many floors does it have?"),
    ("{x} people joined the {city} meetup, which lasted {y} minutes.", "How many people joined?"),
    (
        "The {city} meetup lasted {x} minutes and {y} people joined.",
        "How many minutes did it last?",
    ),
    ("The train to {city} leaves from platform {x} with {y} carriages.", "Which platform?"),
    ("The train to {city} has {x} carriages and leaves from platform {y}.", "How many carriages?"),
)
ASK = ' Reply only with JSON of the form {"answer": number}.'


def rows(n: int = ROWS, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        note, question = rng.choice(TEMPLATES)
        x, y = rng.sample(range(2, 99), 2)
        prompt = note.format(x=x, y=y, city=rng.choice(CITIES)) + " " + question + ASK
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append({"prompt": prompt, "answer": x, "distractor": y})
    return out


if __name__ == "__main__":
    path = Path(__file__).with_name("extract_json.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()), encoding="utf-8")
    print(f"wrote {path} ({ROWS} rows, seed {SEED})")
