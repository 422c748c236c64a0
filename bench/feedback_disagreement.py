"""Disagreement flagging of feedback keys (honed.monitor.disagreement) on simulated traffic.

    python bench/feedback_disagreement.py [--seeds 200]

Per seed: a pool of 100 texts (3 labels), a model right on 80% of requests, 5 honest keys
with 60 feedback rows each (thumbs-up when the model was right, else the true label; 5% of
their rows a slip to a wrong label) and one attacker key giving a wrong label on FLIPS
requests. Scenarios: the attacker's texts drawn from the same pool (others label them too)
or from its own texts (only the model comparison can judge it), and an honest "expert" key
that only ever sends corrections of the model's errors (the rule's known blind spot: against
the model it looks like the attacker). Prints one JSON object: per scenario, the share of
seeds where the attacker was flagged and the mean number of honest keys flagged per seed.
"""

from __future__ import annotations

import argparse
import json
import random

from honed.monitor.disagreement import judge_keys

LABELS = ["negative", "neutral", "positive"]


def _rows(seed: int, flips: int, overlap: bool, expert: bool) -> list[dict]:
    rng = random.Random(seed)
    pool = [(f"text {i}", rng.choice(LABELS)) for i in range(100)]
    own = [(f"attacker text {i}", rng.choice(LABELS)) for i in range(100)]
    out = []
    keys = [f"user{i}" for i in range(5)] + ["attacker"] + (["expert"] if expert else [])
    for key in keys:
        n = flips if key == "attacker" else 60
        for j in range(n):
            text, truth = rng.choice(pool if overlap or key != "attacker" else own)
            wrong = [lab for lab in LABELS if lab != truth]
            predicted = truth if rng.random() < 0.8 else rng.choice(wrong)
            if key == "expert" and predicted == truth:
                continue  # only corrections of errors
            fb = {"rating": 1, "correction": None} if predicted == truth else {"correction": truth}
            if key == "attacker" or rng.random() < 0.05:
                fb = {"correction": rng.choice(wrong)}
            row = {"key_name": key, "request_id": f"{key}-{j}", "item": 0, "signal": "explicit"}
            row |= {"req_route": "classify", "req_input": text, "req_label": predicted}
            out.append(row | {"rating": None, "correction": None} | fb)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=200)
    args = parser.parse_args()
    results = {}
    for flips in (10, 20, 40):
        for overlap in (True, False):
            for expert in (False, True):
                found, honest = 0, 0
                for seed in range(args.seeds):
                    flagged = {
                        t.key for t in judge_keys(_rows(seed, flips, overlap, expert)) if t.flagged
                    }
                    found += "attacker" in flagged
                    honest += len(flagged - {"attacker"})
                name = f"flips={flips} {'shared' if overlap else 'own'} texts"
                name += " +expert" if expert else ""
                results[name] = {
                    "attacker_flagged": found / args.seeds,
                    "honest_flagged_per_seed": honest / args.seeds,
                }
    print(json.dumps({"seeds": args.seeds, "results": results}, indent=2))


if __name__ == "__main__":
    main()
