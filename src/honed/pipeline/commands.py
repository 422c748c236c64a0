"""CLI: ``honed run``, ``honed validate``, ``honed predict``, ``honed methods``, ``honed merge``
and ``honed score``: the commands that take a model by registry ref, so they live above the
registry (train/ never imports it)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="data -> train -> evaluate -> register, from one spec",
        description="Check the spec and its data, resolve the base model, prepare and split "
        "the data, train, evaluate on the test split against baselines, write the run folder "
        "(model, card, metrics, lineage) and register the model unless a metric floor fails "
        "(exit 3).",
    )
    run.add_argument("spec", type=Path, help="YAML run spec")
    run.add_argument("--output-dir", type=Path, help="run folder (default: runs/NAME)")
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace a finished run folder")
    run.add_argument("--no-register", action="store_true", help="skip the model registry")
    run.set_defaults(func=cmd_run)

    train = sub.add_parser(
        "train",
        help="alias of `run` (kept for muscle memory)",
        description="The same as `honed run`: data -> train -> evaluate -> register.",
    )
    for action in run._actions[1:]:
        train._add_action(action)
    train.set_defaults(func=cmd_run)

    validate = sub.add_parser(
        "validate",
        help="check a spec and its data without running it",
        description="Validate the spec's fields, then read the first rows of its data file "
        "with the configured format and encoding and check the fields the task needs are "
        "there. Nothing is trained or downloaded.",
    )
    validate.add_argument("spec", type=Path, help="YAML run spec")
    validate.set_defaults(func=cmd_validate)

    predict = sub.add_parser(
        "predict",
        help="label texts with a trained classifier",
        description="Print label, score and text per line (or JSON lines with every label's "
        "score) for texts given as arguments or read from a file.",
    )
    predict.add_argument("model", help="run folder, or registry ref NAME@ALIAS / NAME/VERSION")
    predict.add_argument("texts", nargs="*", help="texts to classify")
    predict.add_argument("--file", type=Path, help="one text per line ('-' for stdin)")
    predict.add_argument("--json", action="store_true", help="print JSON lines")
    predict.set_defaults(func=cmd_predict)

    methods = sub.add_parser(
        "methods",
        help="list registered tasks and methods",
        description="The task and method names a spec's `task:` and `method.name:` accept.",
    )
    methods.set_defaults(func=cmd_methods)

    schema = sub.add_parser(
        "spec-schema",
        help="print the spec's JSON schema (every field)",
        description="The JSON schema of a run spec, with each field's type, default and "
        "description (for editors and documentation).",
    )
    schema.set_defaults(func=cmd_schema)

    _register_merge(sub)
    register_score(sub)
    register_launch(sub, run)


def cmd_validate(args: argparse.Namespace) -> int:
    from honed.pipeline.check import check_data
    from honed.spec import load_spec

    spec = load_spec(args.spec)
    data = check_data(spec)
    print(f"{args.spec}: ok ({spec.task} / {spec.method.name} on {spec.model.base})")
    print(f"  data: {data.source} ({data.rows_sampled} row(s) checked)")
    return 0


def _print_result(result) -> None:
    from honed.data.sources import summary_lines

    m = result.metrics
    print(f"\nrun folder: {result.paths.root}")
    for key in sorted(k for k in m if k.startswith("test_")):
        print(f"  {key:24s} {m[key]:.4f}")
    for name, base in (m.get("baselines") or {}).items():
        # Each task reports its own baseline metrics; show the headline numbers it has.
        shown = (
            {k: v for k, v in base.items() if isinstance(v, float)}
            if isinstance(base, dict)
            else {"value": base}
        )
        figures = "  ".join(f"{k} {v:.4f}" for k, v in list(shown.items())[:3])
        print(f"  baseline {name:15s} {figures}")
    lines = summary_lines(getattr(result, "data_report", None) or {})
    if lines:
        print("data sources:")
        print("\n".join(lines))
    if result.version:
        print(f"registered: {result.lineage['name']} version {result.version}")


def cmd_run(args: argparse.Namespace) -> int:
    from honed.pipeline.run import train_and_evaluate
    from honed.spec import load_spec

    spec = load_spec(args.spec)
    result = train_and_evaluate(
        spec,
        output_dir=args.output_dir,
        resume=args.resume,
        register=not args.no_register,
        overwrite=args.overwrite,
    )
    if not result.main_process:
        return 0  # another process of a multi-process run: the main one reports
    _print_result(result)
    if result.gate_failures:
        print("gate failed (model saved, not registered): " + "; ".join(result.gate_failures))
        return 3
    return 0


def _read_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.texts)
    if args.file:
        handle = sys.stdin if str(args.file) == "-" else args.file.open(encoding="utf-8")
        with handle:
            texts += [line.rstrip("\n") for line in handle if line.strip()]
    return texts


def cmd_predict(args: argparse.Namespace) -> int:
    from honed.errors import HonedError
    from honed.models.predict import Predictor
    from honed.registry.store import resolve_ref

    texts = _read_texts(args)
    if not texts:
        raise HonedError("predict: give texts as arguments or --file")
    predictor = Predictor.from_folder(resolve_ref(args.model))
    for text, pred in zip(texts, predictor.predict(texts), strict=True):
        if args.json:
            print(json.dumps({"text": text, **pred}))
        else:
            print(f"{pred['label']}\t{pred['score']:.4f}\t{text}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from honed.train.methods import available_methods
    from honed.train.tasks import available_tasks

    print("tasks:   " + ", ".join(available_tasks()))
    print("methods: " + ", ".join(available_methods()))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from honed.spec import RunSpec

    print(json.dumps(RunSpec.model_json_schema(), indent=2))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from honed.registry.store import resolve_ref
    from honed.train.merge import merge_adapter

    adapter = resolve_ref(args.ref)
    out = merge_adapter(adapter, args.out, force=args.force)
    print(f"merged {adapter} -> {out}")
    return 0


def _register_merge(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "merge",
        help="Merge a LoRA/QLoRA adapter into its base: one standalone model folder.",
        description="Load the adapter's base (checking its digest), apply the adapter, "
        "merge_and_unload and save a plain model folder with the tokenizer and a lineage.json "
        "that points to the base digest and the adapter. A QLoRA adapter's 4-bit base is "
        "dequantized first (a warning explains the quality cost).",
    )
    parser.add_argument("ref", help="Adapter folder, NAME@ALIAS or NAME/VERSION.")
    parser.add_argument("--out", required=True, help="Folder to write the merged model into.")
    parser.add_argument("--force", action="store_true", help="Replace a non-empty --out folder.")
    parser.set_defaults(func=_merge)


def _score_command(args: argparse.Namespace) -> int:
    from honed.errors import HonedError
    from honed.registry.store import resolve_ref
    from honed.train.score import load_reward_model, read_pairs, score_rows

    if bool(args.file) == (args.prompt is not None or args.response is not None):
        raise HonedError("give either --file, or --prompt and --response")
    if not args.file and (args.prompt is None or args.response is None):
        raise HonedError("--prompt and --response go together")
    rows = (
        read_pairs(Path(args.file))
        if args.file
        else [{"prompt": args.prompt, "response": args.response}]
    )
    scorer = load_reward_model(resolve_ref(args.model))
    if args.max_length:
        scorer.max_length = args.max_length
    for row in score_rows(scorer, rows):
        print(json.dumps(row, ensure_ascii=False))
    sys.stdout.flush()
    return 0


def register_score(sub: argparse._SubParsersAction) -> None:
    """Add ``honed score``: rewards from a trained reward model."""
    parser = sub.add_parser(
        "score",
        help="Score prompt/response pairs with a trained reward model.",
        description="Print a reward per response (JSON lines). With a jsonl file of "
        "prompt/chosen/rejected rows, also the pairwise accuracy.",
    )
    parser.add_argument("model", help="Reward model folder, NAME@ALIAS or NAME/VERSION.")
    parser.add_argument("--prompt", help="The prompt (conversation so far).")
    parser.add_argument("--response", help="The response to score.")
    parser.add_argument(
        "--file", help="jsonl: {prompt, response} or {prompt, chosen, rejected} per line."
    )
    parser.add_argument(
        "--max-length", type=int, default=None, help="Token limit; default: the training one."
    )
    parser.set_defaults(func=_score_command)


def register_launch(sub: argparse._SubParsersAction, run: argparse.ArgumentParser) -> None:
    """Add ``honed launch``: ``honed run`` on several processes (Accelerate or torchrun)."""
    parser = sub.add_parser(
        "launch",
        help="`honed run` on several processes (DDP, FSDP, DeepSpeed ZeRO)",
        description="Render the Accelerate config (and the DeepSpeed JSON for strategy "
        "deepspeed) from the spec's training.distributed and start `honed run SPEC` on "
        "several processes: `accelerate launch --config_file ... -m honed run SPEC` on GPUs, "
        "`torchrun --nproc-per-node N -m honed run SPEC` on CPU (Accelerate starts several "
        "CPU processes only through mpirun). The main process prepares the data, writes the "
        "run folder, evaluates and registers; every process trains. With --render-only, "
        "write the configs into --out and print the command instead.",
    )
    parser.add_argument("spec", type=Path, help="YAML run spec")
    parser.add_argument(
        "--processes",
        type=int,
        help="processes on this machine (default: training.distributed.num_processes, "
        "else one per GPU, else 2)",
    )
    parser.add_argument(
        "--launcher",
        choices=("auto", "accelerate", "torchrun"),
        default="auto",
        help="auto: accelerate with GPUs, torchrun on CPU",
    )
    parser.add_argument("--render-only", action="store_true", help="write configs, print command")
    parser.add_argument("--out", type=Path, help="folder for the rendered configs")
    # The run's own flags, passed through to each process's `honed run`.
    for action in run._actions[2:]:
        parser._add_action(action)
    parser.set_defaults(func=cmd_launch)


def _run_flags(args: argparse.Namespace) -> list[str]:
    flags = [f"--output-dir={args.output_dir}"] if args.output_dir else []
    for name in ("resume", "overwrite", "no_register"):
        if getattr(args, name):
            flags.append("--" + name.replace("_", "-"))
    return flags


def render_launch_files(spec, out: Path, processes: int) -> Path:
    """Write accelerate.yaml (+ deepspeed.json) for the spec into ``out``; the YAML's path."""
    import yaml

    from honed.train.common import use_bf16
    from honed.train.distributed import render_accelerate_config, render_deepspeed_config

    cfg = spec.training.distributed
    out.mkdir(parents=True, exist_ok=True)
    ds_file = out.resolve() / "deepspeed.json"
    accel = render_accelerate_config(
        cfg, processes=processes, bf16=use_bf16(spec.training), deepspeed_config_file=str(ds_file)
    )
    if cfg.strategy == "deepspeed":
        ds_file.write_text(json.dumps(render_deepspeed_config(cfg), indent=2) + "\n")
    config_file = out / "accelerate.yaml"
    config_file.write_text(yaml.safe_dump(accel, sort_keys=False), encoding="utf-8")
    return config_file


def _check_launch(args: argparse.Namespace, spec) -> None:
    from honed.errors import HonedError

    if spec.training.distributed.strategy == "none":
        raise HonedError(
            f"{args.spec}: training.distributed.strategy is 'none'; set it to ddp, fsdp or "
            "deepspeed to launch several processes (or use `honed run`)"
        )
    if args.processes is not None and args.processes < 1:
        raise HonedError("--processes must be at least 1")
    if args.render_only and args.out is None:
        raise HonedError("--render-only needs --out DIR for the rendered configs")


def cmd_launch(args: argparse.Namespace) -> int:
    import shlex
    import subprocess
    import tempfile

    import torch

    from honed.spec import load_spec
    from honed.train.distributed import check_engine, default_processes, launch_argv

    spec = load_spec(args.spec)
    _check_launch(args, spec)
    if not args.render_only:  # configs rendered here may be for another machine (a GPU node)
        check_engine(spec.training.distributed)
    nproc = args.processes or default_processes(spec.training.distributed)
    out = args.out or Path(tempfile.mkdtemp(prefix="honed-launch-"))
    config_file = render_launch_files(spec, out, nproc)
    launcher = args.launcher
    if launcher == "auto":
        launcher = "accelerate" if torch.cuda.is_available() else "torchrun"
    argv = launch_argv(
        str(args.spec),
        nproc,
        str(config_file) if launcher == "accelerate" else None,
        _run_flags(args),
        standalone=spec.training.distributed.num_machines == 1,
    )
    if args.render_only:
        print(f"wrote {', '.join(str(p) for p in sorted(out.iterdir()))}")
        print(shlex.join(argv))
        return 0
    # This environment's launcher, whatever PATH says.
    head = (
        [str(Path(sys.executable).with_name("accelerate"))]
        if launcher == "accelerate"
        else [sys.executable, "-m", "torch.distributed.run"]
    )
    return subprocess.run(head + argv[1:], check=False).returncode
