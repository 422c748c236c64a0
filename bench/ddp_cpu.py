"""DDP on CPU: two processes (`honed launch`, torchrun + gloo) against one process on the same
cores, with the same global batch and seed, in one run.

Prints the training throughput of each (the Trainer's train_samples_per_second: training
steps only, not start-up; median of --repeat alternated pairs), the final logged training
loss of each and their relative difference, and the largest weight difference after the last
step. On one CPU machine two processes share the cores the single process already used, so
expect no gain: the point is that the results agree.

    .venv/bin/python bench/ddp_cpu.py                       # tiny random BERT, 3 epochs
    .venv/bin/python bench/ddp_cpu.py --layers 4 --hidden 128 --per-label 200 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers builds the tiny model and data


def _model(folder: Path, layers: int, hidden: int) -> Path:
    from tests.helpers import tiny_bert_folder

    tiny_bert_folder(folder, num_layers=layers, hidden=hidden)
    config = json.loads((folder / "config.json").read_text())
    # Dropout off: each process draws its own masks, so only then can the runs agree exactly.
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _spec(root: Path, model: Path, data: Path, name: str, batch: int, strategy: str, args) -> Path:
    from tests.helpers import classification_spec_dict

    body = classification_spec_dict(model, data, root / "runs" / name)
    body["name"] = f"bench-{name}"
    body["training"].update(
        batch_size=batch,
        epochs=args.epochs,
        learning_rate=3e-3,
        logging_steps=1,
        group_by_length=False,
        early_stopping_patience=None,
        num_threads=args.threads_per_process * (2 if strategy == "none" else 1),
        distributed={"strategy": strategy},
    )
    body["eval"]["baselines"] = ["majority"]
    body["scan"] = {"enabled": False}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def _run(argv: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HONED_HOME": str(cwd / "home")}
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")


def _result(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    history = json.loads((run / "log_history.json").read_text())
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return {
        "samples_per_s": metrics["train"]["train_samples_per_second"],
        "final_loss": losses[-1],
        "steps": len(losses),
        "wall_seconds": metrics["wall_seconds"],
    }


def _last_checkpoint(run: Path) -> Path:
    ckpts = sorted((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name[11:]))
    return ckpts[-1] / "model.safetensors"


def _max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    left, right = load_file(str(a)), load_file(str(b))
    return max((left[k] - right[k]).abs().max().item() for k in left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/honed-bench-ddp"))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument(
        "--per-label", type=int, default=100, help="rows per label (3 labels; 192 train rows)"
    )
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch", type=int, default=16, help="global batch size")
    parser.add_argument("--threads-per-process", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="alternated pairs of runs")
    args = parser.parse_args()
    from tests.helpers import write_phrasebank

    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    model = _model(root / "model", args.layers, args.hidden)
    data = write_phrasebank(root / "phrases.txt", n_per_label=args.per_label)
    one = _spec(root, model, data, "one", args.batch, "none", args)
    two = _spec(root, model, data, "two", args.batch // 2, "ddp", args)
    honed = [sys.executable, "-m", "honed"]
    rates: dict[str, list[float]] = {"one": [], "two": []}
    # Alternated pairs: on a shared machine the load drifts; each pair sees about the same.
    for _ in range(args.repeat):
        _run([*honed, "run", str(one), "--no-register", "--overwrite"], root)
        rates["one"].append(_result(root / "runs" / "one")["samples_per_s"])
        _run([*honed, "launch", str(two), "--processes", "2", "--no-register", "--overwrite"], root)
        rates["two"].append(_result(root / "runs" / "two")["samples_per_s"])
    single, double = _result(root / "runs" / "one"), _result(root / "runs" / "two")
    one_rate, two_rate = statistics.median(rates["one"]), statistics.median(rates["two"])
    report = {
        "model": f"random BERT {args.layers} layers, hidden {args.hidden}",
        "global_batch": args.batch,
        "cpu_count": os.cpu_count(),
        "one_process": single,
        "two_processes_ddp": double,
        "samples_per_s_each_repeat": rates,
        "speedup_median": round(two_rate / one_rate, 3),
        "final_loss_rel_diff": abs(double["final_loss"] - single["final_loss"])
        / single["final_loss"],
        "max_weight_diff_last_step": _max_diff(
            _last_checkpoint(root / "runs" / "one"), _last_checkpoint(root / "runs" / "two")
        ),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
