"""The gate on two model folders: predict both on the same frozen set in one run, decide.

``gate_folders(challenger, champion, cfg)`` is what ``honed.pipeline.gate.gate_challenger`` and
``honed models promote`` call once references are resolved to folders. The frozen set is the
champion's (``RunPaths(champion).frozen_eval``); a champion without one falls back to the
challenger's, and the evidence says so. Golden examples: the champion's and the challenger's
golden files together (every must-keep example of either).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from honed.errors import HonedError
from honed.evals.config import GateConfig
from honed.evals.gate import (
    GateDecision,
    floor_checks,
    gate_classifier,
    gate_generator,
    golden_check,
)
from honed.paths import RunPaths, read_lineage
from honed.state import state_dir


def read_jsonl(path: Path, setting: str) -> list[dict[str, Any]]:
    """The rows of a frozen set or golden file (clear errors: file, line, what is wrong)."""
    from honed.data.frozen import read_eval_set

    return read_eval_set(path, setting, fields=()).rows


def frozen_set(challenger: Path, champion: Path | None) -> tuple[Path, list[dict], str | None]:
    """(path, rows, note): the champion's frozen set, else the challenger's (noted)."""
    if champion is not None and RunPaths(champion).frozen_eval.is_file():
        path = RunPaths(champion).frozen_eval
        return path, read_jsonl(path, "frozen set"), None
    path = RunPaths(challenger).frozen_eval
    if not path.is_file():
        raise HonedError(
            f"no frozen evaluation set: neither {champion or '(no champion)'} nor {challenger} "
            "has eval/frozen_test.jsonl; train with a honed that writes it, or pass a folder "
            "that has one"
        )
    note = (
        "the champion has no frozen set: the challenger's was used"
        if champion is not None
        else "first model: its own frozen set"
    )
    return path, read_jsonl(path, "frozen set"), note


def golden_rows(*folders: Path | None) -> list[dict[str, Any]]:
    """Golden rows of every folder given, first occurrence of a text / prompt kept."""
    seen: set[str] = set()
    rows = []
    for folder in folders:
        if folder is None or not RunPaths(folder).golden.is_file():
            continue
        for row in read_jsonl(RunPaths(folder).golden, "golden set"):
            key = json.dumps(row.get("text", row.get("prompt")), sort_keys=True)
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def spec_of(folder: Path) -> dict[str, Any]:
    """The spec a folder was trained with (spec.yaml, else lineage.json's copy)."""
    path = RunPaths(folder).spec
    if path.is_file():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            return loaded
    return read_lineage(folder).get("spec") or {}


def gate_settings(folder: Path) -> tuple[GateConfig, dict[str, float]]:
    """The gate config (eval.gate) and metric floors (eval.min_metrics) of a folder's spec;
    defaults when the spec has none."""
    from pydantic import ValidationError

    section = spec_of(folder).get("eval") or {}
    try:
        cfg = GateConfig(**(section.get("gate") or {}))
    except ValidationError as err:
        raise HonedError(f"{folder}: eval.gate in its spec is invalid: {err}") from None
    return cfg, {str(k): float(v) for k, v in (section.get("min_metrics") or {}).items()}


def _task(folder: Path) -> str:
    return str(spec_of(folder).get("task") or "classification")


def gate_folders(
    challenger: Path,
    champion: Path | None,
    cfg: GateConfig,
    floors: Mapping[str, float] | None = None,
    reward_loader: Any = None,
) -> GateDecision:
    """Predict both models on the same frozen set and decide (champion None: floors only).
    ``reward_loader``: loads the reward models of ``reward_model`` graders (task grpo; see
    honed.evals.graders.RewardLoader); without one such graders are a clear error."""
    golden = golden_rows(champion, challenger)
    task = _task(challenger)
    if champion is None and not RunPaths(challenger).frozen_eval.is_file():
        return _floors_only(challenger, cfg, floors or {}, golden, task)
    path, rows, note = frozen_set(challenger, champion)
    if task == "classification":
        decision = _gate_classifiers(challenger, champion, rows, golden, cfg, floors)
    else:
        scorer = _Graded.of(challenger, reward_loader) if task == "grpo" else None
        decision = _gate_generators(challenger, champion, rows, golden, cfg, floors, scorer)
    decision.evidence["frozen_set"] = {"path": str(path), "examples": len(rows), "note": note}
    decision.evidence["task"] = task
    decision.evidence["models"] = {"challenger": str(challenger), "champion": str(champion)}
    decision.evidence["config"] = cfg.model_dump()
    return decision


def _floors_only(
    challenger: Path, cfg: GateConfig, floors: Mapping[str, float], golden: list, task: str
) -> GateDecision:
    """The first model, without a frozen set: floors on the test metrics recorded at training
    (the same test split that becomes the frozen set), golden examples predicted."""
    metrics_file = RunPaths(challenger).metrics
    recorded = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    metrics = {
        k.removeprefix("test_"): v for k, v in recorded.items() if isinstance(v, int | float)
    }
    checks = floor_checks(metrics, floors)
    if golden and cfg.require_golden and task == "classification":
        from honed.models.predict import Predictor

        golden = _labelled(golden, "golden set")
        predicted = Predictor.from_folder(challenger).predict([g["text"] for g in golden])
        checks.append(golden_check(golden, [p["label"] for p in predicted]))
    evidence = {
        "note": "first model without a frozen set: the floors checked on its recorded test metrics",
        "challenger_metrics": metrics,
        "frozen_set": {"path": None, "examples": 0, "note": "none"},
        "task": task,
        "models": {"challenger": str(challenger), "champion": None},
        "config": cfg.model_dump(),
    }
    return GateDecision(all(c["passed"] for c in checks), checks, evidence)


def _labelled(rows: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    bad = [i for i, r in enumerate(rows, 1) if "text" not in r or "label" not in r]
    if bad:
        raise HonedError(f"{path}: rows {bad[:5]} lack 'text' or 'label'")
    return rows


def _gate_classifiers(
    challenger: Path,
    champion: Path | None,
    rows: list[dict],
    golden: list[dict],
    cfg: GateConfig,
    floors: Mapping[str, float] | None,
) -> GateDecision:
    from honed.models.predict import Predictor

    rows, golden = _labelled(rows, "frozen set"), _labelled(golden, "golden set")
    texts = [r["text"] for r in rows] + [g["text"] for g in golden]
    new = Predictor.from_folder(challenger)
    new_labels = [p["label"] for p in new.predict(texts)]
    old_labels = None
    if champion is not None:
        old = Predictor.from_folder(champion)
        old_labels = [p["label"] for p in old.predict(texts)][: len(rows)]
    return gate_classifier(
        [r["label"] for r in rows],
        new_labels[: len(rows)],
        old_labels,
        new.labels,
        cfg,
        floors=floors,
        golden=(golden, new_labels[len(rows) :]) if cfg.require_golden else None,
    )


def _gate_generators(
    challenger: Path,
    champion: Path | None,
    rows: list[dict],
    golden: list[dict],
    cfg: GateConfig,
    floors: Mapping[str, float] | None,
    scorer: Any = None,
) -> GateDecision:
    """Both models scored per example on the frozen rows by ``scorer`` (default: completion
    loss on {prompt, completion} rows; task grpo: the graders, see _Graded); golden prompts
    generated greedily by the challenger and checked (regex / contains / json)."""
    from honed.evals.generative import generate

    scorer = scorer or _Loss()
    bad = [i for i, r in enumerate(rows, 1) if any(f not in r for f in scorer.fields)]
    if bad:
        raise HonedError(f"frozen set: rows {bad[:5]} lack {' or '.join(map(repr, scorer.fields))}")
    scores = {}
    outputs: list[str] = []
    for role, folder in (("challenger", challenger), ("champion", champion)):
        if folder is None:
            continue
        model, tokenizer = _load_generator(folder)
        scores[role] = scorer(model, tokenizer, rows)
        if role == "challenger" and golden and cfg.require_golden:
            prompts = [g["prompt"] for g in golden]
            outputs = generate(model, tokenizer, prompts, scorer.settings)
    return gate_generator(
        scores["challenger"],
        scores.get("champion"),
        cfg,
        floors=floors,
        golden=(golden, outputs) if outputs else None,
    )


class _Loss:
    """Per-example completion loss (SFT, seq2seq, ...)."""

    fields = ("prompt", "completion")

    @property
    def settings(self) -> Any:
        from honed.evals.generative import GenerationSettings

        return GenerationSettings()

    def __call__(self, model: Any, tokenizer: Any, rows: list[dict]) -> dict[str, list]:
        from honed.evals.generative import completion_loss

        return {"loss": [completion_loss(model, tokenizer, [row])["loss"] for row in rows]}


@dataclass(frozen=True)
class _Graded:
    """Task grpo: a model answers the frozen prompts greedily and the challenger's graders
    score the answers: per-example pass (``grader_pass_rate``, compared by an exact McNemar
    test as accuracy is) and score (``reward``, paired bootstrap)."""

    grader: Any
    threshold: float
    settings: Any
    fields = ("prompt", "fields")

    @classmethod
    def of(cls, folder: Path, reward_loader: Any) -> _Graded:
        from honed.evals.generative import GenerationSettings
        from honed.evals.graders import build_grader

        spec = spec_of(folder)
        options = spec.get("task_options") or {}
        if not options.get("graders"):
            raise HonedError(f"{folder}: its spec declares no task_options.graders to gate on")
        # Relative grader files resolve against the run folder (the task keeps them there).
        grader = build_grader(options["graders"], folder, reward_loader=reward_loader)
        given = (spec.get("eval") or {}).get("generation") or {}
        values = {k: v for k, v in given.items() if v is not None}
        values.setdefault("max_new_tokens", options.get("max_completion_tokens", 48))
        return cls(grader, float(options.get("pass_threshold", 1.0)), GenerationSettings(**values))

    def __call__(self, model: Any, tokenizer: Any, rows: list[dict]) -> dict[str, list]:
        from honed.evals.generative import generate
        from honed.evals.graders import grade, passed

        texts = generate(model, tokenizer, [r["prompt"] for r in rows], self.settings)
        _, reward = grade(self.grader, rows, texts, self.threshold)
        return {"grader_pass_rate": [passed(r, self.threshold) for r in reward], "reward": reward}


def _load_generator(folder: Path) -> tuple[Any, Any]:
    """A generative model folder (full weights or an adapter) and its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if (folder / "adapter_config.json").is_file():
        from honed.models.adapters import load_adapter_model

        return load_adapter_model(folder), tokenizer
    config = AutoConfig.from_pretrained(str(folder))
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return auto.from_pretrained(str(folder), use_safetensors=True), tokenizer


def write_decision(decision: GateDecision, path: Path, **context: Any) -> Path:
    """gate.json: the decision, every check and the evidence, written atomically."""
    body = {"time": datetime.now(UTC).isoformat(timespec="seconds"), **context}
    body |= decision.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)
    return path


def describe(decision: GateDecision) -> list[str]:
    """Lines for a console: the verdict, then each check (failed first)."""
    evidence: dict[str, Any] = decision.evidence
    versions = evidence.get("versions") or evidence.get("models") or {}
    frozen = evidence.get("frozen_set") or {}
    head = (
        f"gate {'PASSED' if decision.passed else 'FAILED'}: {versions.get('challenger')} vs "
        f"{versions.get('champion') or '(no champion)'} on {frozen.get('examples')} frozen "
        f"examples ({frozen.get('path')})"
    )
    notes = [f"note: {n}" for n in (frozen.get("note"), evidence.get("note")) if n]
    return [head, *notes, *decision.lines()]


def default_output(name: str, challenger: str, champion: str | None) -> Path:
    """$HONED_HOME/gates/NAME/<time>-<challenger>-vs-<champion>.json"""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")

    def short(label: str | None) -> str:
        if label is None:
            return "none"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", label.rsplit("/", 1)[-1])[-40:]

    return state_dir() / "gates" / name / f"{stamp}-{short(challenger)}-vs-{short(champion)}.json"


def record_decision(
    decision: GateDecision,
    name: str,
    challenger: str,
    champion: str | None,
    output: Path | None = None,
) -> Path:
    """Name both versions in the evidence and write gate.json (default: under
    ``$HONED_HOME/gates/NAME/``); ``decision.evidence["path"]`` says where."""
    decision.evidence["versions"] = {"challenger": challenger, "champion": champion}
    path = output or default_output(name, challenger, champion)
    decision.evidence["path"] = str(path)
    return write_decision(decision, path, name=name, challenger=challenger, champion=champion)
