"""``honed run``: resolve the base, prepare data, train, evaluate, write the run folder and
register the model with its lineage."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from honed.errors import HonedError
from honed.paths import RunPaths
from honed.pipeline.card import render_card
from honed.spec import RunSpec

if TYPE_CHECKING:
    from honed.data.dataset import SplitData
    from honed.models.resolve import ResolvedModel

_MARKER = "metrics.json"  # present once a run finished
logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    paths: RunPaths
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    version: str | None = None
    run_id: str | None = None
    gate_failures: list[str] | None = None
    data_report: dict[str, Any] | None = None
    #: False on the other processes of a multi-process run: they trained, nothing else.
    main_process: bool = True


def default_output_dir(spec: RunSpec) -> Path:
    return Path(spec.output_dir) if spec.output_dir else Path("runs") / spec.name


def _prepare_folder(root: Path, resume: bool, overwrite: bool) -> RunPaths:
    """Refuse to clobber a finished run unless asked; --resume keeps checkpoints."""
    if root.exists() and not resume:
        if (root / _MARKER).exists() and not overwrite:
            raise HonedError(
                f"{root} holds a finished run; pass --overwrite to replace it "
                "(registered versions keep their own copy) or set output_dir"
            )
        if overwrite:
            shutil.rmtree(root)
    return RunPaths(root).create()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)  # atomic: a crash never leaves half a file


def gate(metrics: dict[str, Any], floors: dict[str, float]) -> list[str]:
    """Failures of the spec's metric floors (eval.min_metrics)."""
    failures = []
    for name, floor in floors.items():
        value = metrics.get(name, metrics.get(f"test_{name}"))
        if not isinstance(value, int | float):
            failures.append(f"{name}: not measured")
        elif value < floor:
            failures.append(f"{name} {value:.4f} < {floor}")
    return failures


def _write_profile(paths: RunPaths, data, outputs: dict[str, Any], embedder: Any = None) -> None:
    """The reference profile drift checks compare traffic with (evals/profile.py), built from
    the scanned (cleaned) training rows.

    Embeddings come from the packaged all-MiniLM-L6-v2 whatever the base, so profiles of
    different models are comparable (``embedder``: the scan's, when it embedded with that
    model already). A profile that cannot be built is reported, not fatal.
    """
    from honed.evals.profile import ProfileError, write_run_profile
    from honed.models.embed import Embedder

    try:
        write_run_profile(
            paths.root,
            data.train,
            predictions=outputs.get("predictions"),
            confidences=outputs.get("confidences"),
            embedder=embedder or Embedder.packaged(),
        )
    except (ProfileError, HonedError) as err:
        logger.warning("no reference profile written: %s", err)


def scan_before_training(spec: RunSpec, data: SplitData, base_path: Path) -> Any:
    """The data scan (security.scan) on the prepared rows, in place: 'drop' and 'redact'
    findings are applied, 'fail' findings stop the run (ScanFailed, a DataError). Returns the
    packaged-MiniLM embedder it used, for the reference profile (None otherwise)."""
    from honed.pipeline.scan import scan_data, scan_embedder, summary_lines

    labelled = spec.scan.enabled and spec.task == "classification"
    embedder = scan_embedder(spec, base_path) if labelled else None
    outcome = scan_data(spec, data, embedder)
    if outcome is not None and outcome.findings:
        logger.warning("\n".join(summary_lines(outcome)))
    if outcome is not None:
        outcome.raise_on_fail()
    return embedder if spec.scan.embeddings == "packaged" else None


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k.startswith("test_") and isinstance(v, float)}


@dataclass
class _Prepared:
    """What the main process prepares before training and hands to the others."""

    base: ResolvedModel
    data: SplitData
    paths: RunPaths


def _prepare(
    spec: RunSpec, task: Any, root: Path, resume: bool, overwrite: bool
) -> tuple[_Prepared, Any, dict[str, Any]]:
    """Check, resolve, prepare, scan the data and prepare the run folder (the main process
    only). Returns what every process trains on, the scan's embedder and the lineage."""
    from honed.models.resolve import resolve_model
    from honed.pipeline.check import check_data
    from honed.pipeline.evalsets import choose_eval_sets, write_eval_sets
    from honed.registry.lineage import build_lineage, portable_report
    from honed.train.methods import get_method

    check_data(spec)  # the same quick check as `honed validate`, before the base is fetched
    base = resolve_model(spec.model)
    sets = choose_eval_sets(spec, task)
    # Only tasks that take a frozen set get one (choose_eval_sets refuses it for the others).
    data = task.prepare_data(spec, frozen=sets.frozen) if sets.frozen else task.prepare_data(spec)
    # Everything below (training, evaluation files, profile, report, card) sees cleaned rows.
    embedder = scan_before_training(spec, data, base.path)
    paths = _prepare_folder(root, resume, overwrite)
    write_eval_sets(spec, paths, data, sets)
    _write_json(paths.data_report, portable_report(data.report, paths.root))
    lineage = build_lineage(
        spec, base, data, get_method(spec.method.name).is_adapter, root=paths.root
    )
    return _Prepared(base, data, paths), embedder, lineage


def train_and_evaluate(
    spec: RunSpec,
    output_dir: Path | None = None,
    resume: bool = False,
    register: bool = True,
    overwrite: bool = False,
) -> RunResult:
    """The whole run. Under torchrun / ``accelerate launch`` the main process prepares the
    data and the run folder alone and hands the rows to the others (one read of the data and
    the registry, one scan, rows identical on every process by construction, not by the
    determinism of every step); all processes train; then the others leave and the main
    process evaluates, writes the run folder and registers. The others get a RunResult with
    ``main_process=False`` and empty metrics."""
    from honed.train import distributed as dist
    from honed.train.common import name_adapter_base
    from honed.train.tasks import get_task

    task = get_task(spec.task)
    started = time.perf_counter()
    dist.check_engine(spec.training.distributed)
    dist.init_process_group(spec.training.distributed)
    local: dict[str, Any] = {}
    root = Path(output_dir or default_output_dir(spec))

    def on_main() -> _Prepared:
        prepared, local["embedder"], local["lineage"] = _prepare(
            spec, task, root, resume, overwrite
        )
        return prepared

    prepared = dist.share_from_main(on_main)
    base, data, paths = prepared.base, prepared.data, prepared.paths
    train_metrics = task.train(spec, data, base, paths, resume)
    dist.leave_process_group()
    if not dist.is_main_process():
        return RunResult(paths, {}, {}, main_process=False)
    lineage = local["lineage"]
    name_adapter_base(paths.model_dir, lineage["base_model"])
    # Written before evaluation: loading an adapter folder needs its base model's lineage.
    _write_json(paths.lineage, lineage)
    metrics = task.evaluate(spec, data, base, paths)
    _write_profile(paths, data, metrics.pop("reference_outputs", None) or {}, local["embedder"])
    metrics["train"] = {k: v for k, v in train_metrics.items() if k != "log_history"}
    metrics["wall_seconds"] = round(time.perf_counter() - started, 1)
    metrics["processes"] = dist.world_size()
    lineage["metrics"] = _summary(metrics)
    _write_json(paths.metrics, metrics)
    _write_json(paths.lineage, lineage)
    _write_json(paths.root / "log_history.json", train_metrics.get("log_history", []))
    paths.spec.write_text(yaml.safe_dump(lineage["spec"], sort_keys=False))
    paths.card.write_text(render_card(spec, metrics, data.report, lineage), encoding="utf-8")
    result = RunResult(
        paths,
        metrics,
        lineage,
        gate_failures=gate(metrics, spec.eval.min_metrics),
        data_report=data.report,
    )
    if register and spec.registry.enabled and not result.gate_failures:
        _register(spec, result, data, train_metrics.get("log_history") or [])
    return result


def _register(
    spec: RunSpec, result: RunResult, data: SplitData, history: list[dict[str, Any]]
) -> None:
    """An MLflow run (params, every metric, training curves, data splits) and a new version."""
    from honed.registry.lineage import lineage_tags
    from honed.registry.store import Registry, dataset_inputs

    registry = Registry(spec.registry)
    tags = lineage_tags(result.lineage)
    splits = {name: data.split(name) for name in ("train", "validation", "test")}
    run_id, uri = registry.log_run(
        spec.registry.experiment or spec.name,
        spec.name,
        result.paths.root,
        params=result.lineage["spec"],
        metrics=result.metrics,
        tags=tags,
        history=history,
        datasets=dataset_inputs(splits, spec.data_source(), spec.name),
    )
    result.run_id = run_id
    result.version = registry.register(
        spec.registered_name(), uri, run_id, tags, spec.registry.alias_on_register
    )
