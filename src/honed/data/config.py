"""Data stage config: where the examples come from, how fields map, how they are split."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from honed.config_base import StrictModel

DataFormat = Literal["auto", "jsonl", "json", "csv", "parquet", "phrasebank", "hf"]


class SplitConfig(StrictModel):
    """Stratified train/validation/test split. Validation drives early stopping and model
    selection; test is touched once, for the final report."""

    test_size: float = Field(0.2, gt=0.0, lt=1.0, description="Fraction of all rows held out.")
    validation_size: float = Field(
        0.1,
        gt=0.0,
        lt=1.0,
        description="Fraction of the rows left after the test split carved out for validation.",
    )
    seed: int = Field(42, description="Seed of the shuffle; same seed, same split.")
    stratify: bool = Field(True, description="Keep label proportions equal across splits.")


SourceKind = Literal["data", "feedback"]


class SourceConfig(StrictModel):
    """One entry of ``data.sources``: a file read like ``data.source``, with its own format,
    encoding and field names when they differ from the data section's."""

    path: str = Field(
        ...,
        description="Path to a file (relative paths resolve against the spec's folder) or, "
        "with format 'hf', a Hugging Face dataset id or a folder saved with save_to_disk.",
    )
    name: str | None = Field(
        None,
        description="Name shown in the data report and bad-row messages; default: the file name.",
    )
    kind: SourceKind = Field(
        "data",
        description="'data': examples, de-duplicated as usual (the first of two rows with the "
        "same text wins; conflicting labels are reported). 'feedback': corrections (e.g. a "
        "`honed monitor feedback-export` file); a row overrides the label of every earlier row "
        "with the same normalised text, later feedback sources overriding earlier ones.",
    )
    format: DataFormat = Field("auto", description="File format; 'auto': from the extension.")
    encoding: str | None = Field(
        None,
        description="Text encoding; default: data.encoding for kind 'data', utf-8 for "
        "'feedback' (exports are utf-8).",
    )
    hf_split: str | None = Field(None, description="Split for format 'hf'; default data.hf_split.")
    text_field: str | None = Field(
        None,
        description="Field holding the text; default: data.text_field for kind 'data', 'text' "
        "for 'feedback' (the export's field).",
    )
    label_field: str | None = Field(
        None,
        description="Field holding the label; default: data.label_field for kind 'data', "
        "'label' for 'feedback'.",
    )


class DataConfig(StrictModel):
    """Where the data comes from and how its fields map onto honed's columns."""

    source: str | None = Field(
        None,
        description="Path to a file (relative paths resolve against the spec's folder) or, "
        "with format 'hf', a Hugging Face dataset id or a folder saved with save_to_disk. "
        "One source; use `sources` for several. Exactly one of the two is required.",
    )
    sources: list[SourceConfig] | None = Field(
        None,
        min_length=1,
        description="Several sources read in order, each row keeping its provenance (source "
        "and line): the original data, feedback exports (kind: feedback; corrections override "
        "earlier labels of the same text) and new files. The data report counts, per source, "
        "rows given, kept, that overrode earlier labels, and lost (and why).",
    )
    format: DataFormat = Field(
        "auto", description="File format; 'auto' picks it from the extension."
    )
    encoding: str = Field(
        "utf-8", description="Text encoding of jsonl/csv/phrasebank files (PhraseBank: iso-8859-1)."
    )
    hf_split: str = Field("train", description="Split to read when format is 'hf'.")
    text_field: str = Field("text", description="Field holding the input text.")
    label_field: str = Field("label", description="Field holding the label (classification).")
    labels: list[str] | None = Field(
        None, description="Declared label set, in id order. Inferred (sorted) when omitted."
    )
    label_names: dict[str, str] | None = Field(
        None,
        description="Rename labels as read from the files before anything else sees them, "
        "e.g. {'0': benign, '1': injection} for a file with 0/1 labels; `labels` then lists "
        "the new names. Labels not in the mapping stay as they are.",
    )
    chat_format: Literal["auto", "messages", "alpaca", "prompt_completion"] = Field(
        "auto", description="sft: row shape; 'auto' detects it from the first row's fields."
    )
    on_bad_rows: Literal["skip", "fail"] = Field(
        "fail",
        description="Rows with a missing/unknown label, empty text or undecodable bytes: "
        "'skip' reports and drops them, 'fail' stops with the file and line.",
    )
    dedup: bool = Field(True, description="Drop exact duplicate texts before splitting.")
    max_rows: int | None = Field(
        None, gt=0, description="Read at most this many rows (smoke runs)."
    )
    split: SplitConfig = Field(default_factory=SplitConfig)

    @model_validator(mode="after")
    def _one_source_field(self) -> DataConfig:
        if self.source is not None and self.sources is not None:
            raise ValueError("data.source and data.sources: set one or the other, not both")
        if self.source is None and self.sources is None:
            raise ValueError("data.source or data.sources: one of them is required")
        return self

    @model_validator(mode="after")
    def _labels_unique(self) -> DataConfig:
        if self.labels is not None:
            if len(self.labels) < 2:
                raise ValueError("labels: declare at least two labels")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError(f"labels: duplicate entries in {self.labels}")
        return self

    def named_label(self, label: str) -> str:
        """A label as read from a file (stripped), renamed through ``label_names``."""
        label = label.strip()
        return (self.label_names or {}).get(label, label)

    def resolve_source(self, base_dir: Path) -> str:
        """The source (with ``sources``: the first one) as an absolute path when it is a
        relative local path."""
        if self.source is None:
            assert self.sources  # the validator guarantees one of the two
            first = self.sources[0]
            return resolve_path(first.path, first.format == "hf", base_dir)
        return resolve_path(self.source, self.format == "hf", base_dir)


def resolve_path(source: str, is_hf: bool, base_dir: Path) -> str:
    """A data path as an absolute path when it is a relative local one; with ``is_hf`` a name
    that is no local folder stays as given (a Hub dataset id)."""
    if is_hf:
        candidate = base_dir / source
        return str(candidate) if candidate.exists() else source
    path = Path(source).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())
