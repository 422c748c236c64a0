"""Prompt-injection guard: recall at <= 5% false positives on the held-out test split, AUC, and
the latency the guard adds to one request on CPU.

    honed run examples/prompt-injection-guard.yaml            # trains runs/prompt-injection-guard
    .venv/bin/python bench/injection_guard.py [--run runs/prompt-injection-guard | NAME@ALIAS]

Thresholds are chosen on the run's VALIDATION split and read once on the TEST split, which
the guard never trained on (the run's eval/frozen_test.jsonl), by two rules: 'fpr' (the lowest
threshold whose validation false-positive rate stays within --max-fpr: the most recall that
budget buys) and 'recall' (the highest threshold whose validation recall reaches
--min-recall: the fewest false positives at that recall). Reported for the model alone, the
heuristics alone (honed.security.injection.heuristic_findings non-empty) and both combined
(either fires), in float32 and with int8 dynamic quantization, scored exactly as the server's
guard scores (InjectionDetector). Latency: one text per call, --threads torch threads, wall
time and this process's CPU time (on a shared machine the wall time includes waiting for a
core; the CPU time is what the request costs).

Reference: LLM Guard's PromptInjection scanner is published at 46% recall on deepset's
prompt-injections set (the set this sample comes from).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

LLM_GUARD_RECALL = 0.46


def _splits(run: Path) -> tuple[list[dict], list[dict]]:
    """(validation, test) rows of the run: the split rebuilt from the run's spec (same data,
    same seed), checked against the test split the run froze (eval/frozen_test.jsonl)."""
    from honed.data.frozen import read_eval_set
    from honed.spec import load_spec
    from honed.train.tasks import get_task

    spec = load_spec(run / "spec.yaml")
    data = get_task(spec.task).prepare_data(spec)
    frozen = read_eval_set(run / "eval" / "frozen_test.jsonl", "frozen test split")
    if sorted(r["text"] for r in data.test) != sorted(r["text"] for r in frozen.rows):
        sys.exit(f"{run}: the rebuilt test split differs from the run's frozen test split")
    return data.validation, data.test


def _threshold_fpr(scores: list[float], labels: list[int], max_fpr: float) -> float:
    """Rule "fpr": the lowest threshold whose false-positive rate on these rows is <= max_fpr
    (the most recall that false-positive budget buys)."""
    benign = sorted((s for s, y in zip(scores, labels, strict=True) if y == 0), reverse=True)
    allowed = int(max_fpr * len(benign))  # benign rows that may score at or above it
    if allowed >= len(benign):
        return 0.0
    return min(1.0, benign[allowed] + 1e-6)  # just above the first one that must stay below


def _threshold_recall(scores: list[float], labels: list[int], min_recall: float) -> float:
    """Rule "recall": the highest threshold whose recall on these rows is >= min_recall (the
    fewest false positives at that recall)."""
    injections = sorted(s for s, y in zip(scores, labels, strict=True) if y == 1)
    misses = int((1.0 - min_recall) * len(injections) + 1e-9)  # may fall below it
    return injections[misses]


def _rates(flags: list[bool], labels: list[int]) -> dict[str, float]:
    pos = sum(labels)
    neg = len(labels) - pos
    tp = sum(f and y == 1 for f, y in zip(flags, labels, strict=True))
    fp = sum(f and y == 0 for f, y in zip(flags, labels, strict=True))
    return {"recall": tp / pos, "fpr": fp / neg, "tp": tp, "fp": fp, "pos": pos, "neg": neg}


def _latency_ms(fn, texts: list[str], n: int) -> dict[str, float]:
    """p50 / p95 wall time and CPU time (this process) of one call, in ms."""
    for text in texts[:10]:  # warm-up
        fn(text)
    wall, cpu = [], []
    for i in range(n):
        text = texts[i % len(texts)]
        w, c = time.perf_counter(), time.process_time()
        fn(text)
        cpu.append((time.process_time() - c) * 1000)
        wall.append((time.perf_counter() - w) * 1000)
    wall.sort()
    cpu.sort()
    q50, q95 = n // 2, int(n * 0.95)
    return {"p50": wall[q50], "p95": wall[q95], "cpu_p50": cpu[q50], "cpu_p95": cpu[q95]}


def _rules(v: dict, t: dict, args: argparse.Namespace) -> dict:
    """Both threshold rules, for the model alone and combined with the heuristics, chosen on
    validation (v) and read on test (t)."""
    out = {}
    choose = {
        "fpr": lambda s, y: _threshold_fpr(s, y, args.max_fpr),
        "recall": lambda s, y: _threshold_recall(s, y, args.min_recall),
    }
    for rule, pick in choose.items():
        for kind in ("model", "combined"):
            thr = pick(v[kind], v["y"])
            out[f"{kind}@{rule}"] = {
                "threshold": thr,
                "validation": _rates([s >= thr for s in v[kind]], v["y"]),
                "test": _rates([s >= thr for s in t[kind]], t["y"]),
            }
    out["model@0.5"] = {"threshold": 0.5, "test": _rates([s >= 0.5 for s in t["model"]], t["y"])}
    out["heuristics"] = {"test": _rates(t["heuristics"], t["y"])}
    return out


def _precision(run: Path, quantize: bool, rows: dict, args: argparse.Namespace) -> dict:
    from sklearn.metrics import roc_auc_score

    from honed.security.injection import InjectionDetector

    det = InjectionDetector(run, threshold=0.5, quantize=quantize)
    positive = det.labels[det.positive]
    scored = {}
    for name, (texts, heur, split) in rows.items():
        y = [int(r["label"] == positive) for r in split]
        model = det.score(texts)
        # Combined score: a heuristic finding counts as certain (1.0).
        combined = [1.0 if h else s for s, h in zip(model, heur, strict=True)]
        scored[name] = {"y": y, "model": model, "combined": combined, "heuristics": heur}
    t = scored["test"]
    texts = rows["test"][0]
    return {
        "rules": _rules(scored["validation"], t, args),
        "auc_model": roc_auc_score(t["y"], t["model"]),
        "auc_combined": roc_auc_score(t["y"], t["combined"]),
        "latency_ms": _latency_ms(lambda x: det.score([x]), texts, args.latency_n),
    }


def evaluate(args: argparse.Namespace) -> dict:
    import torch

    from honed.registry.store import resolve_ref
    from honed.security.injection import heuristic_findings

    torch.set_num_threads(args.threads)
    run = Path(resolve_ref(args.run))
    validation, test = _splits(run)
    rows = {}
    for name, split in (("validation", validation), ("test", test)):
        texts = [r["text"] for r in split]
        rows[name] = (texts, [bool(heuristic_findings(x)) for x in texts], split)
    return {
        "run": str(run),
        "threads": args.threads,
        "rows": {
            "validation": len(validation),
            "test": len(test),
            "test_injections": sum(r["label"] == "injection" for r in test),
        },
        "float32": _precision(run, False, rows, args),
        "int8": _precision(run, True, rows, args),
        "latency_ms_heuristics": _latency_ms(heuristic_findings, rows["test"][0], 3000),
    }


def _print(r: dict, args: argparse.Namespace) -> None:
    print(f"run {r['run']}  (torch threads: {r['threads']})")
    print(
        f"held-out test: {r['rows']['test']} rows, {r['rows']['test_injections']} injections; "
        f"thresholds chosen on validation ({r['rows']['validation']} rows): rule 'fpr' = "
        f"validation FPR <= {args.max_fpr:.0%}, rule 'recall' = validation recall >= "
        f"{args.min_recall:.0%}; target: test recall >= 0.9 at FPR <= 5%"
    )
    for precision in ("float32", "int8"):
        p = r[precision]
        print(f"[{precision}]  AUC model {p['auc_model']:.4f}, combined {p['auc_combined']:.4f}")
        for name, m in p["rules"].items():
            test = m["test"]
            met = test["recall"] >= 0.9 and test["fpr"] <= 0.05
            thr = f"thr {m['threshold']:.4f}" if "threshold" in m else " " * 10
            print(
                f"  {name:18s} {thr}  recall {test['recall']:.3f} ({test['tp']}/{test['pos']})  "
                f"FPR {test['fpr']:.3f} ({test['fp']}/{test['neg']})  "
                f"{'met' if met else 'not met'}"
            )
        lat = p["latency_ms"]
        print(
            f"  model latency, one text: wall p50 {lat['p50']:.2f} ms p95 {lat['p95']:.2f} ms; "
            f"CPU time p50 {lat['cpu_p50']:.2f} ms p95 {lat['cpu_p95']:.2f} ms"
        )
    h = r["latency_ms_heuristics"]
    print(
        f"heuristics latency, one text: wall p50 {h['p50'] * 1000:.1f} us p95 "
        f"{h['p95'] * 1000:.1f} us"
    )
    print(f"reference: LLM Guard's published recall on deepset's set: {LLM_GUARD_RECALL:.0%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", default="runs/prompt-injection-guard", help="run folder or NAME@ALIAS"
    )
    parser.add_argument("--max-fpr", type=float, default=0.05, help="rule 'fpr' budget")
    parser.add_argument("--min-recall", type=float, default=0.9, help="rule 'recall' floor")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--latency-n", type=int, default=300, help="timed single-text calls")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    result = evaluate(args)
    _print(result, args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
