"""Training throughput and memory: honed's classification path vs the plain Trainer recipe.

Same model (packaged all-MiniLM-L6-v2), same data (Financial PhraseBank all-agree, the demo's
train split), same batch size, learning rate and number of samples, measured in one run. Each
variant runs in its own subprocess so peak RSS is its own.

- ours:  honed's path: dynamic padding (DataCollatorWithPadding) + length-grouped batches.
- plain: the guide's recipe: tokenizer(padding="max_length", max_length=128), default sampler.

    .venv/bin/python bench/train_classification.py            # 1 epoch each (~1,626 samples)
    .venv/bin/python bench/train_classification.py --quality  # also the full demo spec's
                                                              # test metrics vs baselines
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "financial-sentiment.yaml"


def _train_rows():
    from honed.spec import load_spec
    from honed.train.tasks import get_task

    spec = load_spec(SPEC)
    return spec, get_task("classification").prepare_data(spec)


def _dataset(rows, tokenizer, label2id, plain: bool):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"text": [r["text"] for r in rows], "labels": [label2id[r["label"]] for r in rows]}
    )
    if plain:
        kwargs = {"padding": "max_length", "truncation": True, "max_length": 128}
    else:
        kwargs = {"truncation": True, "max_length": 128}

    def enc(batch):
        out = tokenizer(batch["text"], **kwargs)
        out["length"] = [len(ids) for ids in out["input_ids"]]
        return out

    return ds.map(enc, batched=True, remove_columns=["text"])


def run_variant(variant: str, epochs: float, threads: int) -> dict:
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    torch.set_num_threads(threads)
    spec, data = _train_rows()
    from honed.models.packaged import packaged_path

    path = str(packaged_path("all-minilm-l6-v2"))
    labels = data.labels
    label2id = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(path)
    plain = variant == "plain"
    if plain:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    else:  # honed's own head choice (mean pooling for this sentence-transformers base)
        from honed.models.heads import load_classifier, resolve_pooling

        pooling = resolve_pooling(spec.model.pooling, Path(path))
        model = load_classifier(path, pooling, num_labels=len(labels))
    train = _dataset(data.train, tokenizer, label2id, plain)
    args = TrainingArguments(
        output_dir=f"/tmp/honed-bench-{variant}",
        num_train_epochs=epochs,
        per_device_train_batch_size=spec.training.batch_size,
        learning_rate=spec.training.learning_rate,
        train_sampling_strategy="random" if plain else "group_by_length",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=42,
        logging_steps=50,
    )
    collator = default_data_collator if plain else DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    real_tokens = int(sum(train["length"]) * epochs)
    return {
        "variant": variant,
        "samples": int(len(train) * epochs),
        "seconds": round(seconds, 2),
        "samples_per_s": round(len(train) * epochs / seconds, 2),
        "real_tokens_per_s": round(real_tokens / seconds, 1),
        "final_train_loss": round(result.training_loss, 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _child(variant: str, epochs: float, threads: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", variant, "--epochs", str(epochs),
         "--threads", str(threads)],
        capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def quality() -> None:
    from honed.pipeline.run import train_and_evaluate
    from honed.spec import load_spec

    result = train_and_evaluate(
        load_spec(SPEC), output_dir=Path("/tmp/honed-bench-quality"), register=False,
        overwrite=True,
    )  # fmt: skip
    m = result.metrics
    print(f"quality  tuned: accuracy {m['test_accuracy']:.4f}  macro_f1 {m['test_macro_f1']:.4f}")
    for name, base in m["baselines"].items():
        print(f"quality  {name}: accuracy {base['accuracy']:.4f}  macro_f1 {base['macro_f1']:.4f}")
    print(f"quality  wall seconds (data+train+eval+baselines): {m['wall_seconds']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quality", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.epochs, args.threads)))
        return
    ours = _child("ours", args.epochs, args.threads)
    plain = _child("plain", args.epochs, args.threads)
    for row in (ours, plain):
        print(json.dumps(row))
    print(
        f"training samples/s: honed {ours['samples_per_s']} vs plain Trainer recipe "
        f"{plain['samples_per_s']} -> {ours['samples_per_s'] / plain['samples_per_s']:.2f}x; "
        f"peak RSS {ours['peak_rss_mib']} MiB vs {plain['peak_rss_mib']} MiB"
    )
    if args.quality:
        quality()


if __name__ == "__main__":
    main()
