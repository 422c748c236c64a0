"""Drift false alarms per window size, and detection in one window of the minimum size.

    .venv/bin/python bench/drift_false_alarms.py [--seeds 1] [--windows 100] [--sizes 50,100,200]

Per seed, like a training run does: Financial PhraseBank (AllAgree, 2,264 sentences) split
80/20; the reference profile is built from the 80% (train) part with the packaged
all-MiniLM-L6-v2 embedder (``build_reference_profile``: a quarter of it, at most 500 texts, is
held out as the calibration sample). In-domain windows are drawn from the other 20%, which
the profile never saw: ``--windows`` windows at each size (default: the minimum window, 2x,
4x), each checked by ``check_drift`` with the default DriftConfig. A window "alarms" when the
status is ``alert``. Baseline from the same checks: the fixed thresholds alone (what
``honed monitor drift`` did before calibration; the novelty component did not exist).

Detection: ``--shifted`` windows of the minimum size with 30% Alpaca instructions (another
kind of request) mixed into in-domain sentences.

Embeddings are cached in the state folder: the first run encodes ~3,300 texts (a minute or
two on 2 cores), later runs take seconds for that part.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

#: Where the data sets are by default: this repository's data/ and the shared checkout's.
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from honed.monitor import replay
    from honed.monitor.config import DriftConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--windows", type=int, default=100, help="In-domain windows per size.")
    parser.add_argument("--sizes", help="Window sizes (default: min_window, 2x, 4x).")
    parser.add_argument("--shifted", type=int, default=20, help="Mixed windows per seed.")
    parser.add_argument("--mix", type=float, default=0.3, help="Off-domain share of those.")
    replay.add_data_dir_option(parser, REPO)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    cfg = DriftConfig()
    minimum = cfg.min_window
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else [minimum, 2 * minimum, 4 * minimum]
    )
    domain, off = load(replay, replay.data_dirs_of(args))
    totals: dict = {"fa": Counter(), "base": Counter(), "det": 0, "det_base": 0, "fired": Counter()}
    for seed in range(args.seeds):
        run_seed(replay, domain, off, seed, sizes, args, totals)
    print(
        f"\nover {args.seeds} seed(s), default DriftConfig "
        f"(false_alarm_rate {cfg.false_alarm_rate})"
    )
    for n in sizes:
        k = args.windows * args.seeds
        print(
            f"  window {n:>4}: false alarms {totals['fa'][n]}/{k} calibrated | "
            f"{totals['base'][n]}/{k} fixed thresholds"
        )
    k = args.shifted * args.seeds
    fired = ", ".join(f"{c} {v}" for c, v in totals["fired"].most_common())
    print(
        f"  {args.mix:.0%} off-domain in one window of {minimum}: detected {totals['det']}/{k} "
        f"calibrated (components at alert: {fired}) | {totals['det_base']}/{k} fixed thresholds"
    )


def load(replay, data_dirs):
    from honed.models.embed import Embedder

    texts, _ = replay.load_phrasebank(data_dirs=data_dirs)
    alpaca = replay.load_alpaca(limit=1000, data_dirs=data_dirs)
    holder: dict = {}

    def encode(batch):
        holder.setdefault("e", Embedder.packaged())
        return holder["e"].encode(batch)

    start = time.perf_counter()
    domain = replay.Corpus(texts, replay.cached_embeddings(texts, encode))
    off = replay.Corpus(alpaca, replay.cached_embeddings(alpaca, encode))
    print(
        f"PhraseBank {len(texts)}, Alpaca {len(alpaca)} texts "
        f"(embeddings ready in {time.perf_counter() - start:.1f}s)"
    )
    return domain, off


def run_seed(replay, domain, off, seed: int, sizes, args, totals) -> None:
    from honed.evals.profile import ProfileConfig, build_reference_profile
    from honed.monitor.config import DriftConfig

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(domain.texts))
    cut = int(0.8 * len(order))
    train, pool = domain.take(order[:cut]), domain.take(order[cut:])
    start = time.perf_counter()
    profile = build_reference_profile(
        train.texts, embeddings=train.emb, config=ProfileConfig(seed=seed)
    )
    print(
        f"seed {seed}: profile of {len(train.texts)} texts ({profile.meta['calibration_n']} held "
        f"out for calibration) in {time.perf_counter() - start:.1f}s; windows from the other "
        f"{len(pool.texts)}"
    )
    cfg = DriftConfig(seed=seed)
    for n in sizes:
        start = time.perf_counter()
        reports = [
            _check(replay, profile, pool.take(rng.choice(len(pool.texts), n, replace=False)), cfg)
            for _ in range(args.windows)
        ]
        fa = sum(r.status == "alert" for r in reports)
        base = sum(_fixed_alert(r) for r in reports)
        totals["fa"][n] += fa
        totals["base"][n] += base
        worst = _closest(reports)
        print(
            f"  window {n:>4}: {fa}/{len(reports)} false alarms calibrated, {base} with fixed "
            f"thresholds; closest call {worst} ({time.perf_counter() - start:.1f}s)"
        )
    n = sizes[0]
    n_off = round(n * args.mix)
    detected = []
    for _ in range(args.shifted):
        part_in = pool.take(rng.choice(len(pool.texts), n - n_off, replace=False))
        part_off = off.take(rng.choice(len(off.texts), n_off, replace=False))
        mixed = replay.Corpus(
            part_in.texts + part_off.texts, np.concatenate([part_in.emb, part_off.emb])
        )
        detected.append(_check(replay, profile, mixed, cfg))
    totals["det"] += sum(r.status == "alert" for r in detected)
    totals["det_base"] += sum(_fixed_alert(r) for r in detected)
    for r in detected:
        totals["fired"].update(c.name for c in r.components.values() if c.status == "alert")
    novelty = np.mean([r.components["novelty"].value for r in detected])
    print(
        f"  {args.mix:.0%} Alpaca in windows of {n}: {totals['det']} detected so far; mean "
        f"novel share {novelty:.2f} (alert at {detected[0].components['novelty'].alert:.2f})"
    )


def _check(replay, profile, window, cfg):
    from honed.monitor.drift import check_drift

    return check_drift(profile, window.texts, embeddings=window.emb, config=cfg)


def _fixed_alert(report) -> bool:
    """Would the fixed thresholds alone (and the components that existed before) alert?"""
    for comp in report.components.values():
        fixed = comp.details.get("null", {}).get("fixed_alert", comp.alert)
        if comp.name != "novelty" and fixed is not None and comp.value >= fixed:
            return True
    return False


def _closest(reports) -> str:
    """The component that came nearest its alert threshold (value / threshold ratio for
    statistics that start at 0; excess over the null mean for the others)."""
    best, what = -np.inf, ""
    for r in reports:
        for c in r.components.values():
            null = c.details.get("null")
            if not null:
                continue
            ratio = (c.value - null["mean"]) / max(c.alert - null["mean"], 1e-12)
            if ratio > best:
                best, what = ratio, f"{c.name} {c.value:.3f} vs alert {c.alert:.3f}"
    return f"{what} ({best:.0%} of the way from the null mean)"


if __name__ == "__main__":
    main()
