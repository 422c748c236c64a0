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
    from honed.data.config import DataConfig
    from honed.data.sources import Source
    from honed.spec import RunSpec


@dataclass
class DataCheck:
    source: str
    rows_sampled: int
    fields: dict[str, str]  # data field -> the spec setting that names it


def check_data(spec: RunSpec) -> DataCheck:
    """Raise a DataError naming the spec setting, the file and the problem, else a summary.
    With ``data.sources`` every source is checked with its own format and fields."""
    from honed.data.sources import resolve_sources

    sources = resolve_sources(spec.data, spec.base_dir)
    checks = [_check_source(spec, src) for src in sources]
    if len(checks) == 1:
        return checks[0]
    fields = {k: v for c in checks for k, v in c.fields.items()}
    return DataCheck(
        f"{len(checks)} sources ({', '.join(s.name for s in sources)})",
        sum(c.rows_sampled for c in checks),
        fields,
    )


def _check_source(spec: RunSpec, src: Source) -> DataCheck:
    from honed.train.tasks import get_task

    cfg, source, setting = src.cfg, src.path, src.setting
    try:
        sample = sample_raw(source, cfg)
    except DataError as err:
        raise DataError(f"{setting}: {err}") from None
    if not sample.records and not sample.bad_rows:
        raise DataError(f"{setting}: {source}: holds no rows")
    apply_bad_row_policy(sample.bad_rows, cfg, source)
    if not sample.records:
        raise DataError(f"{setting}: {source}: none of the first rows could be read")
    fields_of = getattr(get_task(spec.task), "data_fields", None)
    one = spec.model_copy(update={"data": cfg})  # the task reads this source's field names
    fields = fields_of(one, sample.records[0].fields) if fields_of else {}
    if setting != "data.source":  # name the entry's own setting when it overrides the field
        fields = {f: _entry_setting(spec, src, s) for f, s in fields.items()}
    _check_fields(sample, fields, source)
    if cfg.labels and cfg.label_field in fields:
        _check_labels(sample, cfg, source)
    return DataCheck(source, len(sample.records), fields)


def _entry_setting(spec: RunSpec, src: Source, setting: str) -> str:
    """``data.text_field`` -> ``data.sources[1].text_field`` when that entry sets it (or is a
    feedback source, whose field names default to the export's)."""
    if not setting.startswith("data."):
        return setting  # task_options: one setting for every source
    key = setting.removeprefix("data.")
    index = int(src.setting.split("[")[1].rstrip("]"))
    entry = spec.data.sources[index] if spec.data.sources else None
    if entry is not None and (getattr(entry, key, None) is not None or entry.kind == "feedback"):
        return f"{src.setting}.{key}"
    return setting


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


def _check_labels(sample: RawData, cfg: DataConfig, source: str) -> None:
    """With ``on_bad_rows: fail`` a label outside the declared set stops the run: say so now."""
    labels = cfg.labels or []
    declared = set(labels)
    found = {_label(r.fields.get(cfg.label_field), cfg) for r in sample.records} - {None}
    unknown = sorted(found - declared)
    if unknown and (cfg.on_bad_rows == "fail" or not found & declared):
        raise DataError(
            f"data.labels: {source} has label(s) {unknown} in field {cfg.label_field!r} "
            f"that are not declared ({labels})"
        )


def _label(value: Any, cfg: DataConfig) -> str | None:
    text = None if value is None else str(value).strip()
    return cfg.named_label(text) if text else None
