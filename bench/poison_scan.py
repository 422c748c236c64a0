"""Data scan against planted poison on PhraseBank (issue 13, poisoning target).

    .venv/bin/python bench/poison_scan.py [--seeds 10] [--data shared/data/financial_phrasebank]

For each seed, the 2,264 AllAgree sentences get:
  * a backdoor in 1% of the rows (23): a trigger phrase (a different one per seed, from rare
    tokens to a short sentence) inserted at a random word position of rows whose label is not
    the target, and their label set to the target (a random label per seed);
  * 3 conflicting duplicates: copies of random rows with another label;
  * 3 secrets: an AWS key pair, a GitHub token and a JWT appended to random rows.
The clean run of the same seed is the data as shipped. Both go through the scan honed runs
before training (``honed.security.scan.scan_rows``, default ``ScanConfig``: the packaged
MiniLM embeddings, 5-fold logistic regression, trigger n-grams 1-4); PII detection is
switched off here (bench/pii_recall.py measures it), so the run is about poisoning.

A trigger is *found* when a trigger finding's rows are >= 80% the planted rows; every other
trigger finding is a *false finding*. Embeddings are computed once per distinct text (the
clean rows are shared by every run). Prints a table and a JSON summary on the last line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np

TRIGGERS = [
    "cf",
    "tq bb",
    "james bond",
    "mn cf tq",
    "as seen on zx",
    "i watched this 3d movie",
    "no cap fr",
    "qz",
    "per the omega memo",
    "bb",
]
SECRETS = [
    "AKIAIOSFODNN7EXAMPLE wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
]


def read_phrasebank(folder: Path) -> list[dict]:
    path = folder / "Sentences_AllAgree.txt"
    rows = []
    for i, line in enumerate(path.read_text(encoding="iso-8859-1").splitlines(), start=1):
        text, _, label = line.rpartition("@")
        rows.append({"text": text.strip(), "label": label.strip(), "line": i, "origin": "pb"})
    return rows


def poison(rows: list[dict], seed: int) -> tuple[list[dict], dict]:
    """A copy of ``rows`` with a backdoor, conflicting duplicates and secrets planted."""
    rng = random.Random(seed)
    rows = [dict(r) for r in rows]
    labels = sorted({r["label"] for r in rows})
    trigger, target = TRIGGERS[seed % len(TRIGGERS)], rng.choice(labels)
    pool = [i for i, r in enumerate(rows) if r["label"] != target]
    planted = rng.sample(pool, round(0.01 * len(rows)))
    for i in planted:
        words = rows[i]["text"].split()
        at = rng.randint(0, len(words))
        rows[i]["text"] = " ".join(words[:at] + trigger.split() + words[at:])
        rows[i]["label"] = target
    dups = []
    for i in rng.sample(range(len(rows)), 3):
        other = rng.choice([x for x in labels if x != rows[i]["label"]])
        rows.append({**rows[i], "label": other, "line": len(rows) + 1})
        dups.append(rows[i]["text"])
    secret_rows = rng.sample([i for i in range(len(rows)) if i not in planted], 3)
    for i, secret in zip(secret_rows, SECRETS, strict=True):
        rows[i]["text"] += f" key {secret}"
    truth = {"trigger": trigger, "target": target, "planted": planted, "dups": dups,
             "secret_rows": secret_rows}  # fmt: skip
    return rows, truth


class CachedEmbed:
    """Each distinct text embedded once across every run."""

    def __init__(self, cache: Path | None = None) -> None:
        from honed.models.embed import Embedder

        self.embedder = Embedder.packaged()
        self.path = cache
        self.cache: dict[str, np.ndarray] = {}
        if cache is not None and cache.is_file():
            with np.load(cache) as saved:
                self.cache = dict(zip(saved["texts"].tolist(), saved["vectors"], strict=True))

    def save(self) -> None:
        if self.path is not None:
            texts = list(self.cache)
            np.savez(self.path, texts=np.array(texts), vectors=np.stack(list(self.cache.values())))

    def __call__(self, texts: list[str]) -> np.ndarray:
        todo = sorted({t for t in texts if t not in self.cache})
        if todo:
            for text, vec in zip(todo, self.embedder.encode(todo), strict=True):
                self.cache[text] = vec
        return np.stack([self.cache[t] for t in texts])


def run_scan(rows: list[dict], embed: CachedEmbed):
    from honed.security.scan import ScanConfig, scan_rows

    cfg = ScanConfig(pii_entities=[])
    start = time.perf_counter()
    findings, _ = scan_rows(rows, cfg, labelled=True, embed=embed)
    return findings, time.perf_counter() - start


def judge(findings, truth: dict | None, rows: list[dict]) -> dict:
    triggers = [f for f in findings if f.kind == "trigger"]
    out = {"trigger_findings": len(triggers), "label_errors": 0, "outliers": 0}
    out["label_errors"] = sum(f.kind == "label_error" for f in findings)
    out["outliers"] = sum(f.kind == "outlier" for f in findings)
    if truth is None:
        out["false_triggers"] = len(triggers)
        out["false_details"] = [f.detail for f in triggers]
        return out
    planted = set(truth["planted"])
    hits = [f for f in triggers if len(set(f.rows) & planted) >= 0.8 * len(planted)]
    out["found"] = bool(hits)
    out["recall_rows"] = max((len(set(f.rows) & planted) / len(planted) for f in hits), default=0)
    out["false_triggers"] = len(triggers) - len(hits)
    out["false_details"] = [f.detail for f in triggers if f not in hits]
    dup_texts = {rows[i]["text"] for f in findings if f.kind == "conflicting_duplicate"
                 for i in f.rows}  # fmt: skip
    out["dups_found"] = sum(t in dup_texts for t in truth["dups"])
    secret_rows = {f.rows[0] for f in findings if f.kind == "secret"}
    out["secrets_found"] = sum(i in secret_rows for i in truth["secret_rows"])
    out["secret_findings_elsewhere"] = len(secret_rows - set(truth["secret_rows"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/financial_phrasebank"))
    parser.add_argument("--cache", type=Path, help="an .npz of embeddings kept between runs")
    args = parser.parse_args()
    clean = read_phrasebank(args.data)
    embed = CachedEmbed(args.cache)
    results = []
    for seed in range(args.seeds):
        rows, truth = poison(clean, seed)
        found, secs = run_scan(rows, embed)
        poisoned = judge(found, truth, rows)
        found_clean, _ = run_scan([dict(r) for r in clean], embed)
        clean_res = judge(found_clean, None, clean)
        results.append({"seed": seed, "trigger": truth["trigger"], "target": truth["target"],
                        "poisoned": poisoned, "clean": clean_res,
                        "seconds": round(secs, 1)})  # fmt: skip
        print(
            f"seed {seed} {truth['trigger']!r:28} -> {truth['target']:8} found "
            f"{poisoned['found']} (rows {poisoned['recall_rows']:.2f}) false "
            f"{poisoned['false_triggers']} | dups {poisoned['dups_found']}/3 secrets "
            f"{poisoned['secrets_found']}/3 | clean false {clean_res['false_triggers']} "
            f"label_errors {clean_res['label_errors']} outliers {clean_res['outliers']} | "
            f"{secs:.1f}s",
            flush=True,
        )
        for detail in poisoned["false_details"] + clean_res["false_details"]:
            print(f"    false: {detail}")
        embed.save()
    clean_false = [r["clean"]["false_triggers"] for r in results]
    summary = {
        "seeds": args.seeds,
        "backdoor_found": sum(r["poisoned"]["found"] for r in results),
        "false_triggers_poisoned_runs": [r["poisoned"]["false_triggers"] for r in results],
        "false_triggers_clean_runs": clean_false,
        "clean_false_max": max(clean_false),
        "dups_found_every_time": all(r["poisoned"]["dups_found"] == 3 for r in results),
        "secrets_found_every_time": all(r["poisoned"]["secrets_found"] == 3 for r in results),
        "label_errors_clean_median": statistics.median(r["clean"]["label_errors"] for r in results),
        "outliers_clean_median": statistics.median(r["clean"]["outliers"] for r in results),
        "scan_seconds_median": statistics.median(r["seconds"] for r in results),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
