"""The model card (README.md) written into every run folder, Hugging Face style.

The metadata block is built with ``huggingface_hub.ModelCardData`` (so the Hub and
``ModelCard.load`` read it as they expect: ``base_model`` a Hub id, ``license`` a Hub licence
id, ``model-index`` results); the text comes from ``templates/model_card.md.j2``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from honed.spec import RunSpec

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "model_card.md.j2"
_HEADLINE = ("accuracy", "macro_f1", "weighted_f1")

#: honed task -> Hub pipeline tag.
PIPELINE_TAGS = {
    "classification": "text-classification",
    "reward": "text-classification",
    "sft": "text-generation",
    "dpo": "text-generation",
    "grpo": "text-generation",
    "seq2seq": "text2text-generation",
    "ner": "token-classification",
}

#: Hub licence ids (https://huggingface.co/docs/hub/repositories-licenses) honed recognises in
#: `card.data_license` once normalised (lower case, no parentheses, words joined by '-').
HUB_LICENSES = frozenset(
    [
        "apache-2.0",
        "mit",
        "afl-3.0",
        "artistic-2.0",
        "bsl-1.0",
        "bsd",
        "bsd-2-clause",
        "bsd-3-clause",
        "bsd-3-clause-clear",
        "cc",
        "cc0-1.0",
        "cc-by-2.0",
        "cc-by-2.5",
        "cc-by-3.0",
        "cc-by-4.0",
        "cc-by-sa-3.0",
        "cc-by-sa-4.0",
        "cc-by-nc-2.0",
        "cc-by-nc-3.0",
        "cc-by-nc-4.0",
        "cc-by-nd-4.0",
        "cc-by-nc-nd-3.0",
        "cc-by-nc-nd-4.0",
        "cc-by-nc-sa-2.0",
        "cc-by-nc-sa-3.0",
        "cc-by-nc-sa-4.0",
        "cdla-sharing-1.0",
        "cdla-permissive-1.0",
        "cdla-permissive-2.0",
        "wtfpl",
        "ecl-2.0",
        "epl-1.0",
        "epl-2.0",
        "eupl-1.1",
        "eupl-1.2",
        "agpl-3.0",
        "gfdl",
        "gpl",
        "gpl-2.0",
        "gpl-3.0",
        "lgpl",
        "lgpl-2.1",
        "lgpl-3.0",
        "isc",
        "mpl-2.0",
        "odc-by",
        "odbl",
        "pddl",
        "openrail",
        "ofl-1.1",
        "postgresql",
        "unlicense",
        "zlib",
        "llama2",
        "llama3",
        "gemma",
    ]
)
_LICENSE_ALIASES = {
    "apache": "apache-2.0",
    "apache-license-2.0": "apache-2.0",
    "apache-2": "apache-2.0",
    "mit-license": "mit",
    "cc0": "cc0-1.0",
    "public-domain": "cc0-1.0",
}


def hub_license(text: str) -> tuple[str | None, str | None]:
    """(license, license_name) for the card metadata from a free-text licence.

    "CC BY-NC-SA 3.0 (non-commercial)" -> ("cc-by-nc-sa-3.0", None); an unknown licence ->
    ("other", "<slug>") as the Hub asks; nothing stated -> (None, None).
    """
    if not text.strip():
        return None, None
    slug = re.sub(r"\(.*?\)", " ", text.lower())  # "(non-commercial)" and such
    slug = re.sub(r"\b(licen[cs]e|version)\b", " ", slug)
    slug = "-".join(re.findall(r"[a-z0-9.+]+", slug.replace("_", "-")))
    if slug not in _LICENSE_ALIASES and slug not in HUB_LICENSES:
        slug = re.sub(r"([a-z])-?v?(\d)", r"\1-\2", slug)  # gplv3, gpl-v3 -> gpl-3
        slug = re.sub(r"-(\d)$", r"-\1.0", slug)  # gpl-3 -> gpl-3.0
    slug = _LICENSE_ALIASES.get(slug, slug)
    if slug in HUB_LICENSES:
        return slug, None
    return "other", slug or "unknown"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _results(metrics: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """(headline metric names, rows): tuned model vs baselines for classification, flat
    test_* numbers otherwise (headline empty)."""
    test = metrics.get("test") or {}
    if not all(k in test for k in _HEADLINE):
        rows = [
            {"name": k.removeprefix("test_"), "cells": [_fmt(v)]}
            for k, v in metrics.items()
            if k.startswith("test_")
        ]
        return [], rows
    rows = [{"name": "**fine-tuned**", "cells": [_fmt(test[k]) for k in _HEADLINE]}]
    for name, base in (metrics.get("baselines") or {}).items():
        rows.append({"name": f"baseline: {name}", "cells": [_fmt(base[k]) for k in _HEADLINE]})
    return list(_HEADLINE), rows


def _per_class(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    per_class = (metrics.get("test") or {}).get("per_class") or {}
    return [
        {"label": label, **{k: f"{m[k]:.4f}" for k in ("precision", "recall", "f1")},
         "support": m["support"]}
        for label, m in per_class.items()
    ]  # fmt: skip


def _eval_results(spec: RunSpec, metrics: dict[str, Any], dataset: str) -> list[Any] | None:
    """model-index entries for the test-split numbers honed measured."""
    from huggingface_hub import EvalResult

    scores = {k.removeprefix("test_"): v for k, v in metrics.items() if k.startswith("test_")}
    scores = {k: v for k, v in scores.items() if isinstance(v, int | float)}
    if not scores:
        return None
    return [
        EvalResult(
            task_type=PIPELINE_TAGS.get(spec.task, spec.task),
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split="test",
            metric_type=name,
            metric_value=round(float(value), 4),
        )
        for name, value in scores.items()
    ]


def _hub_dataset(spec: RunSpec) -> str | None:
    """The data's Hub dataset id, when it is one (format hf, not a local folder)."""
    from honed.models.packaged import hub_id_of

    data = spec.data
    first = data.sources[0] if data.sources else None
    source, fmt = (first.path, first.format) if first else (data.source or "", data.format)
    return hub_id_of(source) if fmt == "hf" else None


def _usage(spec: RunSpec, lineage: dict[str, Any]) -> str:
    """How the folder loads: adapter, mean_pooled (needs trust_remote_code), classifier, tagger
    (token classification) or generative."""
    if lineage.get("is_adapter"):
        return "adapter"
    if spec.task == "ner":
        return "tagger"
    if spec.task not in ("classification", "reward"):
        return "generative"
    return "mean_pooled" if lineage.get("pooling") == "mean" else "classifier"


def card_data(spec: RunSpec, metrics: dict[str, Any], lineage: dict[str, Any], usage: str) -> Any:
    from huggingface_hub import ModelCardData

    base = lineage.get("base_model") or {}
    hub_dataset = _hub_dataset(spec)
    dataset = hub_dataset or Path(str((lineage.get("data") or {}).get("source", "data"))).name
    license_id, license_name = hub_license(spec.card.data_license)
    tags = ["honed", spec.task, spec.method.name]
    if usage == "mean_pooled":
        tags.append("custom_code")  # the Hub's tag for models that need trust_remote_code
    return ModelCardData(
        model_name=spec.name,
        base_model=base.get("hub_id"),
        library_name="peft" if lineage.get("is_adapter") else "transformers",
        pipeline_tag=PIPELINE_TAGS.get(spec.task),
        language=[spec.card.language] if spec.card.language else None,
        license=license_id,
        license_name=license_name,
        datasets=[hub_dataset] if hub_dataset else None,
        tags=tags,
        metrics=sorted({k.removeprefix("test_") for k in metrics if k.startswith("test_")}) or None,
        eval_results=_eval_results(spec, metrics, dataset),
    )


def _default_use(spec: RunSpec, labels: list[str]) -> str:
    what = f"labelling text as {', '.join(labels)}" if labels else f"the {spec.task} task"
    return (
        f"{what.capitalize()}, on text like the training data ({spec.card.language or 'any'} "
        "language, same domain). Not evaluated beyond the test split below; check it on your own "
        "data before relying on it."
    )


def _example(spec: RunSpec, labels: list[str]) -> str:
    if spec.task == "ner":
        return "Maria Rossi moved to 12 Via Roma, Milan"
    return "operating profit rose" if labels else ""


def _scan_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per finding kind for the card's data-scan table (from data_report.json)."""
    scan = report.get("scan") or {}
    if not scan.get("enabled"):
        return []
    redacted = scan.get("spans_redacted") or {}
    return [
        {
            "kind": kind.replace("_", " "),
            "found": found,
            "policy": (scan.get("policy") or {}).get(kind, "?"),
            "dropped": (scan.get("rows_dropped") or {}).get(kind, 0),
            "redacted": redacted.get(kind, "-"),
        }
        for kind, found in (scan.get("findings") or {}).items()
    ]


def render_card(
    spec: RunSpec,
    metrics: dict[str, Any],
    report: dict[str, Any],
    lineage: dict[str, Any],
) -> str:
    """README.md of a run folder."""
    from huggingface_hub import ModelCard

    card = spec.card
    usage = _usage(spec, lineage)
    labels = list(lineage.get("labels") or [])
    base = lineage.get("base_model") or {}
    data = lineage.get("data") or {}
    headline, rows = _results(metrics)
    rendered = ModelCard.from_template(
        card_data(spec, metrics, lineage, usage),
        template_path=str(TEMPLATE),
        name=spec.name,
        description=card.description or f"A {spec.task} specialist fine-tuned with honed.",
        intended_use=card.intended_use or _default_use(spec, labels),
        limitations=card.limitations or "Not stated.",
        usage=usage,
        mean_pooled_adapter=usage == "adapter" and lineage.get("pooling") == "mean",
        labels=labels,
        example=_example(spec, labels),
        headline=headline,
        result_rows=rows,
        per_class=_per_class(metrics),
        data={
            "source": data.get("source", report.get("source", "?")),
            "sha256": str(report.get("source_sha256") or data.get("source_sha256") or ""),
            "rows": report.get("rows") or data.get("rows") or {},
            "duplicates_removed": report.get("duplicates_removed", 0),
            "bad_rows": len(report.get("bad_rows", [])),
            "label_counts": report.get("label_counts"),
            "license": card.data_license or "not stated",
            "content_sha256": data.get("content_sha256", ""),
        },
        base_name=base.get("hub_id") or base.get("source") or spec.model.base,
        base_digest=base.get("digest", ""),
        method=spec.method.name,
        task=spec.task,
        training=spec.training,
        packages=lineage.get("packages", {}),
        scan=report.get("scan") or {},
        scan_rows=_scan_rows(report),
    )
    # The template's optional blocks leave runs of blank lines; one blank line is enough.
    return re.sub(r"\n{3,}", "\n\n", str(rendered)).rstrip() + "\n"
