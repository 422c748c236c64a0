"""Quality of the generative specialists, each against a baseline measured in the same run.

1. Summarization: ROUGE-1/2/L of SmolLM2-135M-Instruct tuned (LoRA, task seq2seq) on BillSum
   bills vs the untuned model, on the same held-out bills with the same prompt and decoding.
2. Preference tuning: DPO (LoRA) implicit-reward accuracy on held-out HH-RLHF harmless-base
   pairs (target > 0.6) vs chance (0.5) and vs the base model's own likelihood preference.

Defaults are small so the script finishes in minutes on 2 shared CPU cores; raise the sizes for
the full figures (the example specs' sizes: --bills 74 --bills-test 12 --bill-tokens 192
--summary-tokens 96 --dpo-rows 256 --dpo-test 32 --dpo-steps 10 --dpo-length 128).

    .venv/bin/python bench/quality_generative.py [--skip-dpo] [--skip-summ] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import Field

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from honed.spec import RunSpec  # noqa: E402

BILLSUM = ROOT / "data" / "billsum" / "billsum_us_74.jsonl"
HH = ROOT / "data" / "hh_rlhf" / "harmless-base-test-1200.prompt_chosen_rejected.jsonl"
BASE = "packaged:smollm2-135m-instruct"


class BenchSpec(RunSpec):
    """RunSpec plus the proposed ``task_options`` section (tasks read it when present)."""

    task_options: dict[str, Any] = Field(default_factory=dict)


def _training(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    return {
        "batch_size": 4,
        "eval_batch_size": 4,
        "warmup_fraction": 0.0,  # a few steps only: none wasted at lr 0
        "lr_scheduler": "cosine",
        "early_stopping_patience": None,
        "metric_for_best_model": "loss",
        "greater_is_better": False,
        "logging_steps": 1,
        "num_threads": args.threads,
        "seed": 42,
        **extra,
    }


def _run(raw: dict[str, Any], out: Path) -> dict[str, Any]:
    """prepare -> train -> evaluate through the task API (no registry)."""
    from honed.models.resolve import resolve_model
    from honed.paths import RunPaths
    from honed.train.tasks import get_task

    spec = BenchSpec.model_validate(raw)
    task = get_task(spec.task)
    base = resolve_model(spec.model)
    data = task.prepare_data(spec)
    paths = RunPaths(out).create()
    started = time.perf_counter()
    train = task.train(spec, data, base, paths, resume=False)
    trained_s = time.perf_counter() - started
    metrics = task.evaluate(spec, data, base, paths)
    metrics["timing_s"] = {
        "train": round(trained_s, 1),
        "evaluate": round(time.perf_counter() - started - trained_s, 1),
    }
    metrics["rows"] = data.report["rows"]
    metrics["train_loss"] = train.get("train_loss")
    return metrics


def summarization(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    raw = {
        "name": "bench-billsum",
        "task": "seq2seq",
        "model": {"base": BASE, "max_length": args.bill_tokens},
        "data": {
            "source": str(BILLSUM),
            "max_rows": args.bills,
            "split": {
                "test_size": args.bills_test / args.bills,
                "validation_size": 0.1,
                "stratify": False,
            },
        },
        "method": {"name": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05}},
        "training": _training(args, epochs=args.summ_epochs, learning_rate=3e-4),
        "task_options": {
            "max_target_tokens": args.summary_tokens,
            "generation": {"max_new_tokens": args.summary_tokens, "batch_size": 4},
            "samples": 2,
        },
    }
    metrics = _run(raw, out / "billsum")
    base = metrics["baselines"]["base_model"]
    return {
        "rows": metrics["rows"],
        "tuned": {k: round(metrics[f"test_{k}"], 4) for k in ("rouge1", "rouge2", "rougeL")},
        "untuned": {k: round(base[k], 4) for k in ("rouge1", "rouge2", "rougeL")},
        "rougeL_ratio": round(metrics["test_rougeL"] / max(base["rougeL"], 1e-9), 3),
        "test_loss": {"tuned": metrics["test_loss"], "untuned": base["loss"]},
        "timing_s": metrics["timing_s"],
    }


def preference(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    raw = {
        "name": "bench-dpo",
        "task": "dpo",
        "model": {"base": BASE, "max_length": args.dpo_length},
        "data": {
            "source": str(HH),
            "max_rows": args.dpo_rows,
            "on_bad_rows": "skip",
            "split": {
                "test_size": args.dpo_test / args.dpo_rows,
                "validation_size": 0.1,
                "stratify": False,
            },
        },
        "method": {"name": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
        "training": _training(args, max_steps=args.dpo_steps, learning_rate=5e-4),
        "task_options": {"beta": args.beta},
    }
    metrics = _run(raw, out / "dpo")
    accuracy = metrics["test_reward_accuracy"]
    base_pref = metrics["baselines"]["base_likelihood_preference_accuracy"]
    return {
        "rows": metrics["rows"],
        "train_pairs_seen": args.dpo_steps * 4,
        "reward_accuracy": round(accuracy, 4),
        "reward_margin_mean": round(metrics["test_reward_margin_mean"], 4),
        "chance": 0.5,
        "accuracy_vs_chance": round(accuracy / 0.5, 3),
        "base_likelihood_preference_accuracy": round(base_pref, 4),
        "target_met": accuracy > 0.6,
        "timing_s": metrics["timing_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bills", type=int, default=16, help="BillSum rows read (<= 74)")
    parser.add_argument("--bills-test", type=int, default=4, help="held-out bills")
    parser.add_argument("--bill-tokens", type=int, default=96, help="source tokens kept")
    parser.add_argument("--summary-tokens", type=int, default=32, help="target/generated tokens")
    parser.add_argument("--summ-epochs", type=float, default=1.0)
    parser.add_argument("--dpo-rows", type=int, default=48, help="HH pairs read")
    parser.add_argument("--dpo-test", type=int, default=16, help="held-out pairs")
    parser.add_argument("--dpo-steps", type=int, default=4, help="optimizer steps of 4 pairs")
    parser.add_argument("--dpo-length", type=int, default=96, help="prompt + answer tokens")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-summ", action="store_true")
    parser.add_argument("--skip-dpo", action="store_true")
    parser.add_argument("--out", help="keep the run folders here (default: a temp folder)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="honed-bench-gen-"))
    results: dict[str, Any] = {"settings": vars(args), "torch_threads": torch.get_num_threads()}
    if not args.skip_summ:
        s = summarization(args, out)
        results["summarization"] = s
        print(
            f"BillSum ROUGE-L tuned {s['tuned']['rougeL']:.4f} vs untuned "
            f"{s['untuned']['rougeL']:.4f}: ratio {s['rougeL_ratio']:.2f}x "
            f"({s['rows']['test']} held-out bills)",
            flush=True,
        )
    if not args.skip_dpo:
        d = preference(args, out)
        results["dpo"] = d
        print(
            f"DPO reward accuracy {d['reward_accuracy']:.3f} vs chance 0.5: "
            f"{d['accuracy_vs_chance']:.2f}x (base likelihood preference "
            f"{d['base_likelihood_preference_accuracy']:.3f}; {d['rows']['test']} held-out pairs; "
            f"target > 0.6 {'met' if d['target_met'] else 'NOT met'})",
            flush=True,
        )
    print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
