"""Peak training memory of full fine-tuning, LoRA and QLoRA on SmolLM2, same batch.

Each configuration runs in its own process (peak RSS is per process): load the base the way
the method does (fp32; fp32 + LoRA; 4-bit NF4 + LoRA), then train a few AdamW steps on one
fixed batch of random tokens whose second half is supervised (like a completion). Three loss
paths per method:

- ``full_logits``: ``model(input_ids, labels=...)``, which materialises fp32 logits for every
  position: (batch, seq, 49152 vocab) and their gradient;
- ``chunked``: honed's SFT loss (``honed.train.losses``): the LM head and cross-entropy only on
  supervised positions, in chunks of 512 tokens under activation checkpointing, so at most one
  chunk's logits live at a time;
- ``fused``: TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``), which honed's SFT
  path uses through SFTTrainer: the head and the log-softmax run in tiles over the supervised
  positions only, so the (batch, seq, vocab) logits never exist.

The peak is the training-time high-water mark (VmHWM reset after loading), next to the RSS
after loading. QLoRA also reports its base linear weights' bytes (4-bit values + quantization
constants) against the same layers in bf16 (target <= 0.3x).

    .venv/bin/python bench/train_memory.py       # 6 runs of 1 step, batch 2 x 256: ~20 min on
                                                 # 2 heavily shared cores, a few when idle
    .venv/bin/python bench/train_memory.py --methods lora qlora --batch 4 --steps 2
    .venv/bin/python bench/train_memory.py --gradient-checkpointing --batch 4 --seq 512
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


def load(method_name: str, base: str) -> Any:
    from transformers import AutoModelForCausalLM

    from honed.models.config import ModelConfig
    from honed.models.resolve import resolve_model
    from honed.train.config import MethodConfig
    from honed.train.methods import get_method

    path = resolve_model(ModelConfig(base=base)).path
    method = get_method(method_name)
    cfg = MethodConfig(name=method_name, lora={"r": 16, "alpha": 32, "dropout": 0.0})
    model = AutoModelForCausalLM.from_pretrained(str(path), **method.load_kwargs(cfg))
    model.config.use_cache = False
    return method.prepare(model, cfg, "CAUSAL_LM")


def fused_head(model: Any) -> None:
    """TRL's fused LM head, patched in exactly as SFTTrainer does (on the peft base model)."""
    from trl.trainer.utils import add_fused_lm_head

    backbone = model.get_base_model() if hasattr(model, "get_base_model") else model
    add_fused_lm_head(backbone, outputs=("log_probs", "entropy", "is_top1"))


def quantized_linear_bytes(model: Any) -> dict[str, float] | None:
    """Bytes of 4-bit linear weights incl. quantization constants, vs the same layers in bf16."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return None
    stored = bf16 = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        weight = module.weight
        stored += weight.numel() * weight.element_size()
        state = weight.quant_state
        if state is not None:
            stored += state.absmax.numel() * state.absmax.element_size()
            if state.state2 is not None:  # double quantization: constants of the constants
                stored += state.state2.absmax.numel() * state.state2.absmax.element_size()
                stored += state.offset.numel() * state.offset.element_size()
        bf16 += module.in_features * module.out_features * 2
    if not bf16:
        return None
    return {"stored_mb": stored / 2**20, "bf16_mb": bf16 / 2**20, "ratio": stored / bf16}


def one(
    method: str, loss_path: str, base: str, batch: int, seq: int, steps: int, ckpt: bool
) -> dict:
    import torch

    from honed.train.losses import supervised_lm_loss

    torch.manual_seed(0)
    model = load(method, base)
    if loss_path == "fused":
        fused_head(model)
    model.train()
    if ckpt:
        # Keep only each decoder layer's input; recompute the layer in backward. What is left
        # at the peak is then mostly the weights, the optimizer state and the logits.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    backbone = model.get_base_model() if hasattr(model, "get_base_model") else model
    vocab = backbone.config.vocab_size
    ids = torch.randint(10, vocab, (batch, seq))  # (b, seq)
    labels = ids.clone()
    labels[:, : seq // 2] = -100  # the "prompt" half is not supervised
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    loaded = rss_mb("VmRSS")
    reset_peak()
    start = time.perf_counter()
    for _ in range(steps):
        if loss_path == "chunked":  # honed's SFT training loss (honed.train.losses)
            loss = supervised_lm_loss(model, {"input_ids": ids, "labels": labels})
        else:
            # full_logits: (b, seq, vocab) fp32 logits + their gradient; fused: TRL's tiles
            fused = {"fused_lm_head": True} if loss_path == "fused" else {}
            loss = model(input_ids=ids, labels=labels, **fused).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {
        "method": method,
        "loss_path": loss_path,
        "gradient_checkpointing": ckpt,
        "rss_after_load_mb": round(loaded, 1),
        "peak_train_rss_mb": round(rss_mb("VmHWM"), 1),
        "trainable_params": sum(p.numel() for p in params),
        "s_per_step": round((time.perf_counter() - start) / steps, 2),
        "loss": round(float(loss), 4),
        "quantized_linear": quantized_linear_bytes(model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--methods", nargs="+", default=["full", "lora", "qlora"])
    parser.add_argument("--loss-paths", nargs="+", default=["full_logits", "chunked", "fused"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute decoder layers in backward (then the logits dominate the peak)",
    )
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "LOSS_PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        result = one(
            *args.one, args.base, args.batch, args.seq, args.steps, args.gradient_checkpointing
        )
        print("RESULT " + json.dumps(result))
        return
    from honed.models.config import ModelConfig
    from honed.models.resolve import resolve_model

    resolve_model(ModelConfig(base=args.base))  # convert/cache once, before the children run
    results = []
    for method in args.methods:
        for loss_path in args.loss_paths:
            cmd = [sys.executable, __file__, "--one", method, loss_path, "--base", args.base]
            cmd += ["--batch", str(args.batch), "--seq", str(args.seq)]
            cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
            cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if not line:
                print(f"{method}/{loss_path} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            results.append(json.loads(line[0].removeprefix("RESULT ")))
            print(json.dumps(results[-1]), flush=True)
    report(results, args)


def report(results: list[dict], args: argparse.Namespace) -> None:
    by = {(r["method"], r["loss_path"]): r for r in results}
    ckpt = ", gradient checkpointing" if args.gradient_checkpointing else ""
    print(
        f"\npeak training RSS (MiB), batch {args.batch} x {args.seq} tokens, "
        f"{args.steps} steps{ckpt}; ratios against full_logits"
    )
    print(f"{'method':8} " + " ".join(f"{p:>12}" for p in args.loss_paths))
    for method in args.methods:
        peaks = [
            by[(method, p)]["peak_train_rss_mb"] if (method, p) in by else float("nan")
            for p in args.loss_paths
        ]
        cells = [
            f"{v:7.0f}" + (f" {v / peaks[0]:.2f}x" if i else "      ") for i, v in enumerate(peaks)
        ]
        print(f"{method:8} " + " ".join(f"{c:>12}" for c in cells))
    for r in results:
        q = r.get("quantized_linear")
        if q and r["loss_path"] == args.loss_paths[0]:
            print(
                f"QLoRA base linear weights: {q['stored_mb']:.1f} MiB vs {q['bf16_mb']:.1f} MiB "
                f"in bf16 = {q['ratio']:.3f}x (target <= 0.3x)"
            )


if __name__ == "__main__":
    main()
