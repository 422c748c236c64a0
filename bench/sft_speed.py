"""SFT training speed: honed's SFT path against TRL's SFTTrainer with its default settings.

Both runs train LoRA on the same base and the same rows for one epoch, in this process:

- baseline: ``SFTConfig`` defaults (padded batches, no packing, gradient checkpointing on,
  bf16 autocast on), completion-only loss (TRL's default for prompt/completion rows);
- honed: ``honed.train.tasks.sft`` with its defaults (on CPU: length-grouped padded batches;
  ``--packing``: best-fit-decreasing packing into padding-free rows), completion-only chunked
  loss, no gradient checkpointing, bf16 autocast.

Reported: real (non-padding) tokens per second of training, the ratio, the held-out
completion loss of each tuned model on the same validation rows (equal loss = same learning),
and model-FLOPs utilisation against a bf16/fp32 GEMM peak measured here.

    .venv/bin/python bench/sft_speed.py           # SmolLM2, 40 rows read (28 train): ~7 min on
                                                  # 2 shared cores (load ~6), less when idle
    .venv/bin/python bench/sft_speed.py --rows 96 --base /path/to/causal-lm
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "alpaca" / "alpaca_2000.json"


def gemm_peak(threads: int, size: int = 1024, repeats: int = 10) -> dict[str, float]:
    """Best measured FLOP/s of a square matmul in fp32 and bf16 (the MFU denominator)."""
    import torch

    torch.set_num_threads(threads)
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        peaks[str(dtype).removeprefix("torch.")] = 2 * size**3 / best
    return peaks


def make_spec(
    base: str,
    rows: int,
    max_length: int,
    bf16: bool,
    threads: int,
    chunked: bool = True,
    packing: bool | str = "auto",
) -> Any:
    from honed.spec import parse_spec

    return parse_spec(
        {
            "name": "bench-sft",
            "task": "sft",
            "model": {"base": base, "max_length": max_length},
            "data": {
                "source": str(DATA),
                "max_rows": rows,
                "on_bad_rows": "skip",
                "split": {"test_size": 0.1, "validation_size": 0.2, "seed": 0},
            },
            "method": {"name": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
            "training": {
                "epochs": 1,
                "batch_size": 4,
                "eval_batch_size": 8,
                "learning_rate": 2e-4,
                "early_stopping_patience": None,
                "bf16": "on" if bf16 else "off",
                "num_threads": threads,
                "logging_steps": 1000,
                "chunked_lm_loss": chunked,
                "packing": packing,
            },
        },
        source="bench",
    )


class TokenCounter:
    """Wraps a collator; counts real tokens (attention mask, or every token when padding-free)."""

    def __init__(self, collator: Any):
        self.collator, self.tokens = collator, 0

    def __call__(self, examples: list) -> Any:
        batch = self.collator(examples)
        mask = batch.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        return batch


def timed_train(trainer: Any) -> dict[str, float]:
    counter = TokenCounter(trainer.data_collator)
    trainer.data_collator = counter
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 1),
        "steps": trainer.state.global_step,
        "tokens": counter.tokens,
        "tokens_per_s": round(counter.tokens / seconds, 1),
        "train_loss": round(result.training_loss, 4),
    }


def baseline_trainer(spec: Any, data: Any, base: Any, out: Path) -> Any:
    """TRL SFTTrainer, SFTConfig defaults except what CPU and the shared budget require."""
    from trl import SFTConfig, SFTTrainer

    from honed.train.tasks import sft

    tokenizer = sft.chat_tokenizer(base.path)
    model = sft.SftTask().load_model(spec, base)  # same LoRA-wrapped base as ours
    args = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=spec.training.batch_size,
        num_train_epochs=1,
        learning_rate=spec.training.learning_rate,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        seed=spec.training.seed,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft._dataset(data.train),
        processing_class=tokenizer,
    )


def heldout(trainer: Any, tokenizer: Any, rows: list) -> float:
    from honed.evals.generative import completion_loss

    return completion_loss(trainer.model, tokenizer, rows, batch_size=8)["loss"]


def flops_per_token(trainer: Any) -> float:
    """~4·N per token for LoRA: forward 2N, backward 2N for activation grads (frozen weights get
    no weight-gradient GEMMs); N = the base's parameters outside the embedding lookup, plus the
    (tied) LM head, which is a real GEMM."""
    model = trainer.model
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    n = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)
    n += model.get_output_embeddings().weight.numel()
    return 4.0 * n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=40, help="Rows read (train ~70%%).")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-bf16", action="store_true", help="fp32 for our path")
    parser.add_argument(
        "--packing",
        action="store_true",
        help="our path with packed padding-free rows (default: honed's 'auto', off on CPU)",
    )
    parser.add_argument(
        "--trl-loss", action="store_true", help="our path with TRL's loss, not the chunked one"
    )
    args = parser.parse_args()

    import torch

    from honed.models.resolve import resolve_model
    from honed.paths import RunPaths
    from honed.train import common
    from honed.train.tasks import sft

    torch.set_num_threads(args.threads)
    spec = make_spec(
        args.base,
        args.rows,
        args.max_length,
        not args.no_bf16,
        args.threads,
        not args.trl_loss,
        True if args.packing else "auto",
    )
    base = resolve_model(spec.model)
    data = sft.TASK.prepare_data(spec)
    out = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    results: dict[str, Any] = {"rows": len(data.train), "gemm_peak_flops": gemm_peak(args.threads)}

    common.setup_runtime(spec.training)
    ours, tokenizer = sft.TASK.build_trainer(spec, data, base, RunPaths(out / "ours"))
    ours.args.eval_strategy = ours.args.save_strategy = "no"
    ours.args.load_best_model_at_end = False
    results["honed"] = timed_train(ours)
    results["honed"]["heldout_loss"] = heldout(ours, tokenizer, data.validation)
    per_token = flops_per_token(ours)
    del ours

    common.setup_runtime(spec.training)
    trl_default = baseline_trainer(spec, data, base, out / "trl")
    results["trl_defaults"] = timed_train(trl_default)
    results["trl_defaults"]["heldout_loss"] = heldout(trl_default, tokenizer, data.validation)

    peak = results["gemm_peak_flops"]["bfloat16" if not args.no_bf16 else "float32"]
    for name in ("honed", "trl_defaults"):
        r = results[name]
        r["mfu"] = round(per_token * r["tokens_per_s"] / peak, 4)
    results["speedup_tokens_per_s"] = round(
        results["honed"]["tokens_per_s"] / results["trl_defaults"]["tokens_per_s"], 2
    )
    print(json.dumps(results, indent=2))
    print(
        f"honed SFT {results['honed']['tokens_per_s']} tok/s vs TRL defaults "
        f"{results['trl_defaults']['tokens_per_s']} tok/s: {results['speedup_tokens_per_s']}x; "
        f"held-out loss {results['honed']['heldout_loss']} vs "
        f"{results['trl_defaults']['heldout_loss']}; MFU {results['honed']['mfu']:.1%} vs "
        f"{results['trl_defaults']['mfu']:.1%} of a {peak / 1e9:.0f} GFLOP/s GEMM peak"
    )


if __name__ == "__main__":
    main()
