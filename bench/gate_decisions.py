"""Decision quality of the promotion gate: simulated challengers against a real champion.

    .venv/bin/python bench/gate_decisions.py [--challengers 20] [--size 453] [--reps 30]
                                             [--sizes 453,906,1812,3624]

Target (issue 12): over >= 20 challengers, half truly better and half truly worse by 1-3
accuracy points, every worse one is refused and >= 90% of the better ones are promoted.

The champion is real: frozen all-MiniLM-L6-v2 mean embeddings + logistic regression (honed's
``embeddings_logreg`` baseline) on Financial PhraseBank AllAgree (2,264 sentences); every
sentence gets an out-of-fold prediction (5-fold cross-validation), so the champion's errors are
those of a real model on unseen text. These 2,264 sentences with the champion's answers are the
*population*; a model's *true* accuracy is its accuracy over the population.

A challenger is a *true model* drawn from a population of models, not a prediction vector
edited to a target score. Its true difference ``delta`` is drawn uniformly from +1..+3 points
(better half) or -3..-1 points (worse half) and its churn (share of sentences where it answers
differently from the champion) uniformly from |delta| + 2..6 points (retrained models disagree
on more than the net difference). From (delta, churn) follow two rates: on sentences the
champion gets right, the challenger errs with probability p_break(i) (higher where the champion
was unsure: proportional to 1 - its top probability) and answers the champion's second choice;
on sentences it gets wrong, the challenger fixes them with probability p_fix and otherwise
keeps the champion's wrong label. The rates are set so that the population-level difference is
exactly delta and the population-level churn exactly churn.

The gate never sees delta. It sees one frozen set: ``size`` sentences drawn from the population
(without replacement up to 2,264, with replacement beyond, for the set-size sweep), the
champion's answers on them, and one draw of each challenger's answers (independent Bernoulli
flips with the rates above). It decides with the default ``GateConfig`` (accuracy and macro-F1
not worse beyond 0.005 at 95% one-sided confidence, no class recall drop > 0.05). The headline
run is repetition 0 at the realistic size (the 20% test split: 453 sentences); the rates below
it average ``reps`` independent repetitions (new frozen set, new challengers) per set size.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LABELS = ["negative", "neutral", "positive"]


@dataclass
class Population:
    y: np.ndarray  # (N,) true label index
    pred: np.ndarray  # (N,) champion's label index
    second: np.ndarray  # (N,) champion's second choice
    unsure: np.ndarray  # (N,) 1 - champion's top probability

    @property
    def right(self) -> np.ndarray:
        return self.pred == self.y


def champion_population(data_dirs) -> Population:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from honed.models.embed import Embedder
    from honed.monitor import replay

    texts, labels = replay.load_phrasebank(data_dirs=data_dirs)
    embedder = None

    def encode(batch):
        nonlocal embedder
        embedder = embedder or Embedder.packaged()
        return embedder.encode(batch)

    start = time.perf_counter()
    x = replay.cached_embeddings(texts, encode)
    y = np.array([LABELS.index(label) for label in labels])
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    proba = cross_val_predict(
        LogisticRegression(max_iter=2000, C=10.0), x, y, cv=folds, method="predict_proba"
    )
    order = np.argsort(-proba, axis=1)
    pop = Population(y, order[:, 0], order[:, 1], 1 - proba.max(axis=1))
    print(
        f"population: {len(y)} PhraseBank AllAgree sentences; champion (MiniLM + logistic "
        f"regression, out-of-fold) accuracy {pop.right.mean():.4f} "
        f"({time.perf_counter() - start:.0f}s)"
    )
    return pop


def _scaled(weights: np.ndarray, mean: float) -> np.ndarray:
    """min(1, s * weights) with s chosen so that the mean is `mean` (bisection)."""
    low, high = 0.0, 1.0 / max(weights.min(), 1e-9)
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if np.minimum(1, mid * weights).mean() < mean else (low, mid)
    return np.minimum(1, high * weights)


@dataclass
class TrueModel:
    delta: float  # true accuracy difference over the population
    churn: float
    p_flip: np.ndarray  # (N,) probability of answering differently from the champion


def true_challenger(pop: Population, delta: float, churn: float) -> TrueModel:
    right = pop.right
    a = right.mean()
    flip = np.zeros(len(pop.y))
    # Population identities: a * mean(p_break) = (churn - delta) / 2,
    #                        (1 - a) * p_fix   = (churn + delta) / 2.
    flip[right] = _scaled(pop.unsure[right] + 1e-3, (churn - delta) / 2 / a)
    flip[~right] = (churn + delta) / 2 / (1 - a)
    realised = (flip[~right].sum() - flip[right].sum()) / len(flip)
    return TrueModel(float(realised), float(flip.mean()), flip)


def answers(pop: Population, model: TrueModel, idx: np.ndarray, rng) -> np.ndarray:
    """One draw of the challenger's labels on the frozen set `idx`."""
    flips = rng.random(len(idx)) < model.p_flip[idx]
    right = pop.right[idx]
    changed = np.where(right, pop.second[idx], pop.y[idx])  # break -> 2nd choice; fix -> truth
    return np.where(flips, changed, pop.pred[idx])


def draw_models(pop: Population, count: int, rng) -> list[TrueModel]:
    models = []
    for j in range(count):
        sign = 1 if j < count // 2 else -1
        size = rng.uniform(0.01, 0.03)
        churn = rng.uniform(size + 0.02, size + 0.06)
        models.append(true_challenger(pop, sign * size, churn))
    return models


def run_once(pop: Population, size: int, count: int, seed: int, configs: dict) -> list[dict]:
    from honed.evals.gate import gate_classifier

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(pop.y), size, replace=size > len(pop.y))
    y = [LABELS[i] for i in pop.y[idx]]
    champion = [LABELS[i] for i in pop.pred[idx]]
    rows = []
    for model in draw_models(pop, count, rng):
        challenger = [LABELS[i] for i in answers(pop, model, idx, rng)]
        row = {"delta": model.delta, "churn": model.churn}
        for name, cfg in configs.items():
            decision = gate_classifier(y, challenger, champion, LABELS, cfg)
            acc = decision.evidence["metrics"]["accuracy"]
            row[name] = {
                "passed": decision.passed,
                "failed": [
                    c["name"].split()[0]
                    + ("" if "recall" not in c["name"] else ":" + c["name"].split()[-1])
                    for c in decision.failed
                ],
                "observed": acc["diff"],
                "lower": acc["lower"],
                "p": acc["p_value"],
            }
        rows.append(row)
    return rows


def confusion(rows: list[dict], name: str) -> dict[str, int]:
    out = {"better_promoted": 0, "better_refused": 0, "worse_promoted": 0, "worse_refused": 0}
    for row in rows:
        truth = "better" if row["delta"] > 0 else "worse"
        out[f"{truth}_{'promoted' if row[name]['passed'] else 'refused'}"] += 1
    return out


def print_headline(rows: list[dict], size: int) -> None:
    print(
        f"\nheadline: one frozen set of {size} sentences, {len(rows)} challengers "
        "(default GateConfig)"
    )
    print("  true delta  churn  observed  95% lower  McNemar p  decision  failed checks")
    for row in rows:
        d = row["default"]
        print(
            f"  {row['delta']:+.4f}     {row['churn']:.3f}  {d['observed']:+.4f}   "
            f"{d['lower']:+.4f}    {d['p']:.3g}".ljust(58)
            + f"{'promoted' if d['passed'] else 'refused':9s} {','.join(d['failed'])}"
        )
    c = confusion(rows, "default")
    print("\n                 promoted  refused")
    print(f"  truly better   {c['better_promoted']:8d} {c['better_refused']:8d}")
    print(f"  truly worse    {c['worse_promoted']:8d} {c['worse_refused']:8d}")
    better = c["better_promoted"] + c["better_refused"]
    print(
        f"  targets: every worse refused: {'MET' if c['worse_promoted'] == 0 else 'MISSED'}; "
        f">= 90% of better promoted: {c['better_promoted']}/{better} = "
        f"{c['better_promoted'] / better:.0%} "
        f"{'MET' if c['better_promoted'] >= 0.9 * better else 'MISSED'}"
    )


def sweep(pop: Population, sizes: list[int], reps: int, count: int, configs: dict) -> None:
    print(f"\nrates over {reps} repetitions per set size (new frozen set and challengers each):")
    print(
        "  size  rule            P(promote|better)  P(promote|worse)  reps all-worse-refused"
        "  reps >=90%-better  reps both"
    )
    for size in sizes:
        runs = [run_once(pop, size, count, 1000 * size + r, configs) for r in range(reps)]
        for name in configs:
            cs = [confusion(rows, name) for rows in runs]
            better = sum(c["better_promoted"] for c in cs) / sum(
                c["better_promoted"] + c["better_refused"] for c in cs
            )
            worse = sum(c["worse_promoted"] for c in cs) / sum(
                c["worse_promoted"] + c["worse_refused"] for c in cs
            )
            all_worse = np.mean([c["worse_promoted"] == 0 for c in cs])
            most_better = np.mean(
                [
                    c["better_promoted"] >= 0.9 * (c["better_promoted"] + c["better_refused"])
                    for c in cs
                ]
            )
            both = np.mean(
                [
                    c["worse_promoted"] == 0
                    and c["better_promoted"] >= 0.9 * (c["better_promoted"] + c["better_refused"])
                    for c in cs
                ]
            )
            print(
                f"  {size:5d} {name:15s} {better:17.3f} {worse:17.4f} {all_worse:22.2f}"
                f" {most_better:18.2f} {both:10.2f}"
            )


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from honed.evals.config import GateConfig
    from honed.monitor import replay

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--challengers", type=int, default=20)
    parser.add_argument("--size", type=int, default=453, help="Frozen set size (headline).")
    parser.add_argument("--reps", type=int, default=30, help="Repetitions per size (rates).")
    parser.add_argument("--sizes", default="453,906,1812,3624", help="Sizes of the sweep.")
    replay.add_data_dir_option(parser, REPO)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    pop = champion_population(replay.data_dirs_of(args))
    configs = {
        "default": GateConfig(),
        # What the accuracy test alone decides (diagnostic: the cost of the other checks).
        "accuracy-only": GateConfig(metrics=["accuracy"], max_recall_drop=None),
    }
    print_headline(run_once(pop, args.size, args.challengers, 0, configs), args.size)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.reps > 0 and sizes:
        sweep(pop, sizes, args.reps, args.challengers, configs)


if __name__ == "__main__":
    main()
