"""Files of a run's output folder (the folder is itself a loadable model folder), and reading
its lineage.json. Core: every stage may import it.

runs/NAME/
  config.json, model.safetensors        full fine-tuning (save_pretrained)
  adapter_config.json, adapter_model.safetensors   LoRA/QLoRA adapters
  tokenizer files
  README.md            model card
  metrics.json         test metrics (+ baselines)
  data_report.json     counts per label and split, lengths, bad rows, leakage
  confusion_matrix.png classification only
  lineage.json         base digest, data hashes, spec, packages, git commit
  spec.yaml            the spec as run (normalised)
  eval/frozen_test.jsonl  the frozen evaluation set (reused by every later challenger)
  eval/golden.jsonl    must-keep examples checked by the gate (optional)
  checkpoints/         Trainer checkpoints (kept for --resume)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honed.errors import ModelError


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    @property
    def confusion_png(self) -> Path:
        return self.root / "confusion_matrix.png"

    @property
    def card(self) -> Path:
        return self.root / "README.md"

    @property
    def lineage(self) -> Path:
        return self.root / "lineage.json"

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def frozen_eval(self) -> Path:
        """The frozen evaluation set (jsonl) every later challenger of this model is gated on."""
        return self.root / "eval" / "frozen_test.jsonl"

    @property
    def golden(self) -> Path:
        """Must-keep examples (jsonl) the gate checks one by one; absent when none given."""
        return self.root / "eval" / "golden.jsonl"

    def create(self) -> RunPaths:
        self.root.mkdir(parents=True, exist_ok=True)
        return self


def read_lineage(folder: Path) -> dict[str, Any]:
    """A model folder's lineage.json ({} when absent); a clear error when it is broken."""
    path = Path(folder) / "lineage.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelError(f"{path}: broken JSON ({err.msg})") from None


def portable_path(value: str | Path, root: Path | None) -> str:
    """`value` as run-folder files record it: relative to `root` when it is a local path that
    exists; anything else (hub ids, ``packaged:NAME``) unchanged. `root` None: unchanged."""
    text = str(value)
    if root is None or text.startswith("packaged:"):
        return text
    path = Path(text).expanduser()
    if not path.exists():
        return text
    try:
        return os.path.relpath(path.resolve(), Path(root).resolve())
    except ValueError:  # another drive (Windows): no relative form; keep the name only
        return path.name


def base_record_in(base: dict[str, Any], base_folder: Path, root: Path) -> dict[str, Any]:
    """A ``base_model`` record moved to another folder (e.g. a merge's output): a local base's
    path is rewritten relative to `root`; packaged and hub bases are found by name anyway."""
    record = dict(base)
    if record.get("kind", "local") == "local":
        record["path"] = record["source"] = portable_path(base_folder, root)
    return record
