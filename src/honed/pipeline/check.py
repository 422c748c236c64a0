"""A quick check of a spec's data, shared by ``honed validate`` and the start of ``honed run``.

It reads a bounded sample (``honed.data.loaders.sample_raw``) with the spec's format and
encoding, so a missing file, a wrong encoding or a misspelt field is reported in a second,
before a base model is downloaded or a trainer started. The full read happens in the task's
``prepare_data``; this check never replaces it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from honed.data.dataset import apply_bad_row_policy
from honed.data.loaders import RawData, sample_raw
from honed.errors import DataError

if TYPE_CHECKING:
    from honed.spec import RunSpec


@dataclass
class DataCheck:
    source: str
    rows_sampled: int
    fields: dict[str, str]  # data field -> the spec setting that names it


def check_data(spec: RunSpec) -> DataCheck:
    """Raise a DataError naming the spec setting, the file and the problem, else a summary."""
    from honed.train.tasks import get_task

    cfg, source = spec.data, spec.data_source()
    try:
        sample = sample_raw(source, cfg)
    except DataError as err:
        raise DataError(f"data.source: {err}") from None
    if not sample.records and not sample.bad_rows:
        raise DataError(f"data.source: {source}: holds no rows")
    apply_bad_row_policy(sample.bad_rows, cfg, source)
    if not sample.records:
        raise DataError(f"data.source: {source}: none of the first rows could be read")
    fields_of = getattr(get_task(spec.task), "data_fields", None)
    fields = fields_of(spec, sample.records[0].fields) if fields_of else {}
    _check_fields(sample, fields, source)
    if cfg.labels and cfg.label_field in fields:
        _check_labels(sample, cfg.label_field, cfg.labels, cfg.on_bad_rows, source)
    return DataCheck(source, len(sample.records), fields)


def _check_fields(sample: RawData, fields: Mapping[str, str], source: str) -> None:
    """Every field the task reads must occur in the sampled rows."""
    seen: set[str] = set()
    for record in sample.records:
        seen.update(record.fields)
    for field, setting in fields.items():
        if field not in seen:
            raise DataError(
                f"{setting}: field {field!r} not found in {source} "
                f"(its first {len(sample.records)} row(s) have: {', '.join(sorted(seen))})"
            )


def _check_labels(sample: RawData, field: str, labels: list[str], policy: str, source: str) -> None:
    """With ``on_bad_rows: fail`` a label outside the declared set stops the run: say so now."""
    declared = set(labels)
    found = {_label(r.fields.get(field)) for r in sample.records} - {None}
    unknown = sorted(found - declared)
    if unknown and (policy == "fail" or not found & declared):
        raise DataError(
            f"data.labels: {source} has label(s) {unknown} in field {field!r} "
            f"that are not declared ({labels})"
        )


def _label(value: Any) -> str | None:
    text = None if value is None else str(value).strip()
    return text or None
