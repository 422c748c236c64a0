"""The run spec: one YAML file composed of the per-stage configs.

name: financial-sentiment
task: classification
model:    {...}  -> honed.models.config.ModelConfig
data:     {...}  -> honed.data.config.DataConfig
method:   {...}  -> honed.train.config.MethodConfig
training: {...}  -> honed.train.config.TrainingConfig
eval:     {...}  -> honed.evals.config.EvalConfig
registry: {...}  -> honed.registry.config.RegistryConfig
loop:     {...}  -> honed.pipeline.config.LoopConfig
scan:     {...}  -> honed.security.scan.config.ScanConfig (the data scan before training)
card:     {...}  -> CardConfig (model card text)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from honed.config_base import StrictModel
from honed.data.config import DataConfig
from honed.errors import SpecError
from honed.evals.config import EvalConfig
from honed.models.config import ModelConfig
from honed.monitor.config import CanaryConfig, DriftConfig
from honed.pipeline.config import LoopConfig
from honed.registry.config import RegistryConfig
from honed.security.scan.config import ScanConfig
from honed.train.config import MethodConfig, TrainingConfig

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class CardConfig(StrictModel):
    """Text for the model card written next to the model."""

    description: str = Field("", description="One paragraph: what the specialist does.")
    intended_use: str = Field("", description="Who should use it, for what.")
    limitations: str = Field("", description="Known limits and failure modes.")
    data_license: str = Field("", description="Licence of the training data (e.g. CC BY-NC-SA).")
    language: str = Field("en", description="Language code of the data.")


class RunSpec(StrictModel):
    """A specialist, end to end."""

    name: str = Field(..., description="Run and registered-model name: letters, digits, . _ -")
    task: str = Field("classification", description="Registered task: see `honed methods`.")
    output_dir: str | None = Field(
        None, description="Run output folder; default: runs/NAME beside the spec's state folder."
    )
    task_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Task-specific options, validated by the task's own options model "
        "(seq2seq: target_field, prefix, max_target_tokens, generation; dpo/reward: "
        "prompt_field, chosen_field, rejected_field, max_prompt_tokens, beta; grpo: graders, "
        "pass_threshold, beta, num_generations, max_completion_tokens; see each task module).",
    )
    model: ModelConfig
    data: DataConfig
    method: MethodConfig = Field(default_factory=MethodConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    monitor: DriftConfig = Field(
        default_factory=DriftConfig,
        description="Drift thresholds used by `honed monitor drift --model` for this model.",
    )
    canary: CanaryConfig = Field(default_factory=CanaryConfig, description="Canary analysis.")
    card: CardConfig = Field(default_factory=CardConfig)
    scan: ScanConfig = Field(
        default_factory=ScanConfig,
        description="The data scan before training (PII, secrets, conflicting duplicates, "
        "label errors, trigger phrases, outliers) and the policy per finding.",
    )
    loop: LoopConfig = Field(
        default_factory=LoopConfig,
        description="The retraining loop (`honed loop run`): triggers, inbox, canary.",
    )

    _path: Path | None = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"{value!r} must be 1-100 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        from honed.train.tasks import available_tasks

        if value not in available_tasks():
            raise ValueError(f"unknown task {value!r}; known: {', '.join(available_tasks())}")
        return value

    @model_validator(mode="after")
    def _valid_task_options(self) -> RunSpec:
        from honed.train.tasks import get_task

        options_model = getattr(get_task(self.task), "options_model", None)
        if options_model is None:
            if self.task_options:
                raise ValueError(f"task_options: task {self.task!r} takes no options")
        else:
            try:
                options_model.model_validate(self.task_options)
            except ValidationError as err:
                problems = "; ".join(
                    f"task_options.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in err.errors()
                )
                raise ValueError(problems) from None
        return self

    @property
    def path(self) -> Path | None:
        """The YAML file this spec was read from, if any."""
        return self._path

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the spec resolve against."""
        return self._path.parent if self._path else Path.cwd()

    def data_source(self) -> str:
        return self.data.resolve_source(self.base_dir)

    def registered_name(self) -> str:
        return self.registry.model_name or self.name

    def with_overrides(self, **changes: Any) -> RunSpec:
        """A copy with top-level fields replaced (validated again)."""
        data = self.model_dump()
        data.update(changes)
        new = RunSpec.model_validate(data)
        new._path = self._path
        return new


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid spec ({err.error_count()} problem(s))"]
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; `honed spec-schema` lists the fields)"
        elif item["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "<spec>", path: Path | None = None) -> RunSpec:
    """Validate an already-parsed mapping into a RunSpec; errors name the field and source."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec must be a YAML mapping, got {type(data).__name__}")
    try:
        spec = RunSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_validation_error(err, source)) from None
    spec._path = path
    return spec


def load_spec(path: str | Path) -> RunSpec:
    """Read and validate a YAML spec file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text ({err.reason})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(f"{path}:{where}: broken YAML: {problem}") from None
    return parse_spec(data, source=str(path), path=path.resolve())
