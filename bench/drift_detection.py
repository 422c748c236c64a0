"""Drift detection rate and false-alarm rate on real text.

    .venv/bin/python bench/drift_detection.py [--seeds 5] [--window 250] [--mix 0.3]

In-domain: Financial PhraseBank sentences (AllAgree). Per seed: a reference profile from 1,200
sentences (all-MiniLM-L6-v2 embeddings), ten in-domain windows drawn from the held-out
sentences, and shifted windows where ``mix`` of the texts are off-domain: Alpaca instructions
(English, another task) and German texts (another language). A window "alarms" when the
overall drift status is ``alert``.

Figures: detection rate (shifted windows that alarm) and false-alarm rate (in-domain windows
that alarm). Baseline from the same runs: the text-statistics components alone (length PSI,
OOV rate, language share; no embeddings), reported as a ratio.
Embeddings are cached in the state folder: the first run encodes ~3,400 texts (a minute or
two on 2 cores), later runs take seconds.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

#: Where the data sets are by default: this repository's data/ and the shared checkout's.
REPO = Path(__file__).resolve().parents[1]
EMBEDDING_COMPONENTS = ("embedding_cells", "embedding_pca", "domain_classifier", "novelty")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from honed.monitor import replay

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--window", type=int, default=300)
    parser.add_argument("--mix", type=float, default=0.3)
    parser.add_argument("--shifted", type=int, default=3, help="Shifted windows per seed.")
    replay.add_data_dir_option(parser, REPO)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    corpora = load_corpora(replay, replay.data_dirs_of(args))
    print(
        f"window {args.window}, mix {args.mix:.0%}, seeds {args.seeds}, "
        f"10 in-domain + {args.shifted} shifted windows per seed"
    )
    for name in ("alpaca", "german"):
        run_scenario(replay, corpora["domain"], corpora[name], name, args)


def load_corpora(replay, data_dirs) -> dict:
    from honed.models.embed import Embedder

    texts, _ = replay.load_phrasebank(data_dirs=data_dirs)
    sources = {
        "domain": texts,
        "alpaca": replay.load_alpaca(limit=1000, data_dirs=data_dirs),
        "german": replay.load_german(data_dirs=data_dirs),
    }
    embedder = None

    def encode(batch: list[str]):
        nonlocal embedder
        embedder = embedder or Embedder.packaged()
        return embedder.encode(batch)

    start = time.perf_counter()
    out = {k: replay.Corpus(v, replay.cached_embeddings(v, encode)) for k, v in sources.items()}
    sizes = ", ".join(f"{k} {len(c.texts)}" for k, c in out.items())
    print(f"texts: {sizes} (embeddings ready in {time.perf_counter() - start:.1f}s)")
    return out


def run_scenario(replay, domain, off, name: str, args) -> None:
    from honed.monitor.drift import ALERT, DriftConfig, overall_status

    text_only = DriftConfig(ignore=EMBEDDING_COMPONENTS)
    counts = {"det": 0, "fa": 0, "det_base": 0, "fa_base": 0, "n_shift": 0, "n_in": 0}
    start = time.perf_counter()
    for seed in range(args.seeds):
        trial = replay.run_trial(
            domain, off, seed, window=args.window, n_shifted=args.shifted, mix=args.mix
        )
        for key, reports in (("det", trial.shifted), ("fa", trial.in_domain)):
            counts[key] += sum(r.status == ALERT for r in reports)
            counts[f"{key}_base"] += sum(
                overall_status(r.components, text_only) == ALERT for r in reports
            )
        counts["n_shift"] += len(trial.shifted)
        counts["n_in"] += len(trial.in_domain)
    elapsed = time.perf_counter() - start
    det, fa = counts["det"] / counts["n_shift"], counts["fa"] / counts["n_in"]
    det_b, fa_b = counts["det_base"] / counts["n_shift"], counts["fa_base"] / counts["n_in"]
    ratio = f"{det / det_b:.2f}x" if det_b else "inf (baseline detects none)"
    print(
        f"[{name}] detection {det:.0%} ({counts['det']}/{counts['n_shift']}), "
        f"false alarms {fa:.0%} ({counts['fa']}/{counts['n_in']}) | baseline text-stats only: "
        f"detection {det_b:.0%}, false alarms {fa_b:.0%} | detection ratio {ratio} "
        f"| {elapsed / (counts['n_shift'] + counts['n_in']):.2f}s per check"
    )


if __name__ == "__main__":
    main()
