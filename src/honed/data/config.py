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


class DataConfig(StrictModel):
    """Where the data comes from and how its fields map onto honed's columns."""

    source: str = Field(
        ...,
        description="Path to a file (relative paths resolve against the spec's folder) or, "
        "with format 'hf', a Hugging Face dataset id or a folder saved with save_to_disk.",
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
    def _labels_unique(self) -> DataConfig:
        if self.labels is not None:
            if len(self.labels) < 2:
                raise ValueError("labels: declare at least two labels")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError(f"labels: duplicate entries in {self.labels}")
        return self

    def resolve_source(self, base_dir: Path) -> str:
        """The source as an absolute path when it is a relative local path."""
        if self.format == "hf":
            candidate = base_dir / self.source
            return str(candidate) if candidate.exists() else self.source
        path = Path(self.source).expanduser()
        return str(path if path.is_absolute() else (base_dir / path).resolve())
