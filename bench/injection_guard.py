"""Prompt-injection guard: recall at <= 5% false positives on the held-out test split, AUC, and
the latency the guard adds to one request on CPU.

    honed run examples/prompt-injection-guard.yaml            # trains runs/prompt-injection-guard
    .venv/bin/python bench/injection_guard.py [--run runs/prompt-injection-guard | NAME@ALIAS]

The threshold is chosen on the run's VALIDATION split (the lowest score threshold whose
validation false-positive rate stays within --max-fpr, i.e. the most recall that budget buys)
and then read once on the TEST split, which the guard never trained on (the run's
eval/frozen_test.jsonl). Three rules are reported: the model alone (score >= threshold), the
heuristics alone (honed.security.injection.heuristic_findings non-empty), and both combined
(either fires; the threshold is chosen for the combination on validation). The model is
scored exactly as the server's guard scores it: InjectionDetector, int8 dynamic quantization
unless --no-quantize, one text per call for the latency figures, --threads torch threads.

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


def _threshold(scores: list[float], labels: list[int], max_fpr: float) -> float:
    """The lowest threshold whose false-positive rate on these rows is <= max_fpr."""
    benign = sorted((s for s, y in zip(scores, labels, strict=True) if y == 0), reverse=True)
    allowed = int(max_fpr * len(benign))  # benign rows that may score at or above it
    if allowed >= len(benign):
        return 0.0
    # Just above the first benign score that must stay below the threshold.
    return min(1.0, benign[allowed] + 1e-6)


def _rates(flags: list[bool], labels: list[int]) -> dict[str, float]:
    pos = sum(labels)
    neg = len(labels) - pos
    tp = sum(f and y == 1 for f, y in zip(flags, labels, strict=True))
    fp = sum(f and y == 0 for f, y in zip(flags, labels, strict=True))
    return {"recall": tp / pos, "fpr": fp / neg, "tp": tp, "fp": fp, "pos": pos, "neg": neg}


def _latency_ms(fn, texts: list[str], n: int) -> dict[str, float]:
    for text in texts[:10]:  # warm-up
        fn(text)
    times = []
    for i in range(n):
        text = texts[i % len(texts)]
        start = time.perf_counter()
        fn(text)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"p50": times[len(times) // 2], "p95": times[int(len(times) * 0.95)]}


def evaluate(args: argparse.Namespace) -> dict:
    import torch
    from sklearn.metrics import roc_auc_score

    from honed.registry.store import resolve_ref
    from honed.security.injection import InjectionDetector, heuristic_findings

    torch.set_num_threads(args.threads)
    run = Path(resolve_ref(args.run))
    validation, test = _splits(run)
    det = InjectionDetector(run, threshold=0.5, quantize=not args.no_quantize)
    positive = det.labels[det.positive]

    def labelled(rows: list[dict]) -> tuple[list[str], list[int], list[float], list[bool]]:
        texts = [r["text"] for r in rows]
        labels = [int(r["label"] == positive) for r in rows]
        return texts, labels, det.score(texts), [bool(heuristic_findings(t)) for t in texts]

    _, v_y, v_score, v_heur = labelled(validation)
    t_texts, t_y, t_score, t_heur = labelled(test)
    # Combined score: a heuristic finding counts as certain (1.0).
    v_comb = [1.0 if h else s for s, h in zip(v_score, v_heur, strict=True)]
    t_comb = [1.0 if h else s for s, h in zip(t_score, t_heur, strict=True)]
    thr_model = _threshold(v_score, v_y, args.max_fpr)
    thr_comb = _threshold(v_comb, v_y, args.max_fpr)
    result = {
        "run": str(run),
        "quantized": not args.no_quantize,
        "threads": args.threads,
        "rows": {"validation": len(v_y), "test": len(t_y), "test_injections": sum(t_y)},
        "threshold_model": thr_model,
        "threshold_combined": thr_comb,
        "validation": {
            "model": _rates([s >= thr_model for s in v_score], v_y),
            "combined": _rates([s >= thr_comb for s in v_comb], v_y),
        },
        "test": {
            "model": _rates([s >= thr_model for s in t_score], t_y),
            "heuristics": _rates(t_heur, t_y),
            "combined": _rates([s >= thr_comb for s in t_comb], t_y),
            "model_at_0.5": _rates([s >= 0.5 for s in t_score], t_y),
        },
        "auc_model": roc_auc_score(t_y, t_score),
        "auc_combined": roc_auc_score(t_y, t_comb),
        "latency_ms": {
            "model": _latency_ms(lambda t: det.score([t]), t_texts, args.latency_n),
            "heuristics": _latency_ms(heuristic_findings, t_texts, args.latency_n * 10),
        },
    }
    return result


def _print(r: dict, max_fpr: float) -> None:
    test = r["test"]
    print(f"run {r['run']}  (int8: {r['quantized']}, torch threads: {r['threads']})")
    print(
        f"held-out test: {r['rows']['test']} rows, {r['rows']['test_injections']} injections; "
        f"thresholds chosen on validation ({r['rows']['validation']} rows) for "
        f"<= {max_fpr:.0%} false positives: model {r['threshold_model']:.4f}, "
        f"combined {r['threshold_combined']:.4f}"
    )
    for name in ("model", "heuristics", "combined", "model_at_0.5"):
        m = test[name]
        met = m["recall"] >= 0.9 and m["fpr"] <= max_fpr
        print(
            f"  {name:13s} recall {m['recall']:.3f} ({m['tp']}/{m['pos']})  "
            f"FPR {m['fpr']:.3f} ({m['fp']}/{m['neg']})  target {'met' if met else 'not met'}"
        )
    print(f"  AUC model {r['auc_model']:.4f}, combined {r['auc_combined']:.4f}")
    lat = r["latency_ms"]
    print(
        f"  added latency per request (one text, CPU): model p50 {lat['model']['p50']:.2f} ms "
        f"p95 {lat['model']['p95']:.2f} ms; heuristics p50 {lat['heuristics']['p50'] * 1000:.1f} "
        f"us p95 {lat['heuristics']['p95'] * 1000:.1f} us"
    )
    print(f"  reference: LLM Guard's published recall on deepset's set: {LLM_GUARD_RECALL:.0%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", default="runs/prompt-injection-guard", help="run folder or NAME@ALIAS"
    )
    parser.add_argument("--max-fpr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--latency-n", type=int, default=300, help="timed single-text calls")
    parser.add_argument("--no-quantize", action="store_true", help="float32 instead of int8")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    result = evaluate(args)
    _print(result, args.max_fpr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
