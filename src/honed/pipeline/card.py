"""The model card (README.md) written into every run folder, Hugging Face style."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from honed.spec import RunSpec

_HEADLINE = ("accuracy", "macro_f1", "weighted_f1")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _metrics_table(metrics: dict[str, Any]) -> str:
    """Tuned model vs baselines for classification; flat test_* numbers otherwise."""
    test = metrics.get("test") or {}
    if not all(k in test for k in _HEADLINE):
        rows = [(k.removeprefix("test_"), v) for k, v in metrics.items() if k.startswith("test_")]
        lines = ["| metric | value |", "|---|---|"]
        return "\n".join(lines + [f"| {k} | {_fmt(v)} |" for k, v in rows])
    lines = ["| model | " + " | ".join(_HEADLINE) + " |", "|---" * (len(_HEADLINE) + 1) + "|"]
    lines.append("| **fine-tuned** | " + " | ".join(_fmt(test[k]) for k in _HEADLINE) + " |")
    for name, base in (metrics.get("baselines") or {}).items():
        lines.append(f"| baseline: {name} | " + " | ".join(_fmt(base[k]) for k in _HEADLINE) + " |")
    return "\n".join(lines)


def _per_class(metrics: dict[str, Any]) -> str:
    per_class = (metrics.get("test") or {}).get("per_class")
    if not per_class:
        return ""
    lines = ["| label | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for label, m in per_class.items():
        scores = " | ".join(f"{m[k]:.4f}" for k in ("precision", "recall", "f1"))
        lines.append(f"| {label} | {scores} | {m['support']} |")
    return "\n".join(lines)


def _data_section(report: dict[str, Any]) -> str:
    rows = report.get("rows", {})
    lines = [
        f"- Source: `{report.get('source', '?')}` "
        f"(sha256 `{report.get('source_sha256', '')[:16]}`)",
        f"- Rows: train {rows.get('train')}, validation {rows.get('validation')}, "
        f"test {rows.get('test')}",
        f"- Exact duplicates removed: {report.get('duplicates_removed', 0)}; "
        f"bad rows: {len(report.get('bad_rows', []))}",
    ]
    if report.get("label_counts"):
        lines.append(f"- Labels per split: `{report['label_counts']}`")
    return "\n".join(lines)


def render_card(
    spec: RunSpec, metrics: dict[str, Any], report: dict[str, Any], lineage: dict[str, Any]
) -> str:
    card = spec.card
    front = {
        "base_model": spec.model.base,
        "library_name": "peft" if lineage.get("is_adapter") else "transformers",
        "pipeline_tag": "text-classification" if spec.task == "classification" else None,
        "language": [card.language],
        "tags": ["honed", spec.task, spec.method.name],
        "license_data": card.data_license or None,
    }
    front = {k: v for k, v in front.items() if v}
    t = spec.training
    parts = [
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---",
        f"# {spec.name}",
        card.description or f"A {spec.task} specialist fine-tuned from `{spec.model.base}`.",
        "## Results (test split, touched once)",
        _metrics_table(metrics),
        _per_class(metrics),
        "## Data",
        _data_section(report),
        f"Data licence: {card.data_license or 'not stated'}",
        "## Training",
        "\n".join(
            [
                f"- Method: `{spec.method.name}`; task: `{spec.task}`; epochs {t.epochs}, "
                f"learning rate {t.learning_rate}, batch {t.batch_size}, seed {t.seed}",
                f"- Base model digest: `{lineage['base_model']['digest']}`",
                f"- Data content sha256: `{lineage['data']['content_sha256']}`",
                f"- Packages: `{lineage['packages']}`",
            ]
        ),
        "## Intended use",
        card.intended_use or "Not stated.",
        "## Limitations",
        card.limitations or "Not stated.",
    ]
    return "\n\n".join(p for p in parts if p) + "\n"
