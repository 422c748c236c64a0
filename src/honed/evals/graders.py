"""Graders: a score in [0, 1] for one completion of one prompt, declared in the spec.

Reinforcement fine-tuning (task ``grpo``) uses them as its reward and as its held-out metric
(``grader_pass_rate``). A grader sees the prompt, the completion and the data row (its other
fields hold what a grader compares against: the reference answer, an expected number, ...).

Kinds (``kind:`` in the spec; each config documented below):

- ``exact``: the completion equals a row field, after normalisation (case, whitespace);
- ``regex``: the completion matches a pattern (fullmatch or search); optionally a capture group
  must equal a row field;
- ``json_schema``: the completion parses as JSON (a surrounding code fence is stripped) and
  validates against a schema (inline or a file); optionally keys must equal row fields;
- ``numeric``: the last number in the completion (or a regex capture) is within an absolute or
  relative tolerance of a row field;
- ``python``: a function ``fn(prompt, completion, row) -> float`` loaded from
  ``"package.module:function"`` or ``"path/to/file.py:function"`` (a file next to the spec);
- ``reward_model``: a reward model trained with ``honed run`` (task ``reward``; its run folder);
  the reward r maps to sigmoid(r / scale) (the loader comes from the training stage);
- several graders in a list: their weighted mean (``weight`` on each).

``build_grader(cfg)`` turns a config (or a list of them) into a ``Grader``; bad configs raise
``SpecError`` naming the grader and the problem.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from honed.config_base import StrictModel
from honed.errors import HonedError, SpecError

# --------------------------------------------------------------------------------------------
# Protocol


@runtime_checkable
class Grader(Protocol):
    """Scores completions: 1.0 is a full pass, 0.0 a fail, values between are partial credit."""

    name: str

    def score(self, prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        """Score of one completion in [0, 1]."""
        ...

    def score_batch(
        self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        """Scores of many completions (a reward model scores them in batches)."""
        ...


class GraderError(HonedError):
    """A grader could not score: a missing row field, a plugin returning a non-number."""


# --------------------------------------------------------------------------------------------
# Configs


class _GraderBase(StrictModel):
    name: str | None = Field(None, description="Name in reports; default: the kind.")
    weight: float = Field(
        1.0, gt=0, description="Weight of this grader in the weighted mean of a grader list."
    )


class ExactConfig(_GraderBase):
    """The completion equals a row field."""

    kind: Literal["exact"]
    field: str = Field(..., description="Row field holding the expected answer.")
    case_sensitive: bool = Field(False, description="Compare case as well.")
    strip_punctuation: bool = Field(
        False, description="Drop trailing . ! ? and surrounding quotes before comparing."
    )


class RegexConfig(_GraderBase):
    """The completion matches a regular expression."""

    kind: Literal["regex"]
    pattern: str = Field(..., description="Python regular expression (DOTALL).")
    mode: Literal["fullmatch", "search"] = Field(
        "fullmatch", description="fullmatch: the whole (stripped) completion; search: anywhere."
    )
    group: int | str | None = Field(
        None, description="Capture group compared to `field` (number or name)."
    )
    field: str | None = Field(None, description="Row field the captured text must equal.")

    @model_validator(mode="after")
    def _valid(self) -> RegexConfig:
        try:
            compiled = re.compile(self.pattern)
        except re.error as err:
            raise ValueError(f"pattern {self.pattern!r} is not a valid regex: {err}") from None
        if (self.group is None) != (self.field is None):
            raise ValueError("group and field go together: the capture compared to the field")
        if isinstance(self.group, int) and self.group > compiled.groups:
            raise ValueError(f"group {self.group}: the pattern has {compiled.groups} group(s)")
        if isinstance(self.group, str) and self.group not in compiled.groupindex:
            raise ValueError(f"group {self.group!r}: no such named group in the pattern")
        return self


class JsonSchemaConfig(_GraderBase):
    """The completion is JSON valid against a schema."""

    kind: Literal["json_schema"]
    json_schema: dict[str, Any] | None = Field(
        None, alias="schema", description="The JSON Schema, inline."
    )
    schema_file: str | None = Field(
        None, description="A JSON Schema file (relative paths: next to the spec)."
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="{JSON key: row field}: the parsed value must equal the row's value "
        "(compared as JSON values; numbers by value).",
    )
    partial_credit: bool = Field(
        False,
        description="Score 0.5 for valid JSON in the schema whose fields do not all match "
        "(default: 0 unless everything holds).",
    )

    @model_validator(mode="after")
    def _one_schema(self) -> JsonSchemaConfig:
        if (self.json_schema is None) == (self.schema_file is None):
            raise ValueError("give exactly one of schema (inline) and schema_file")
        return self


class NumericConfig(_GraderBase):
    """A number in the completion is close to a row field."""

    kind: Literal["numeric"]
    field: str = Field(..., description="Row field holding the expected number.")
    pattern: str | None = Field(
        None, description="Regex whose first group is the number; default: the last number."
    )
    abs_tol: float = Field(0.0, ge=0, description="Absolute tolerance.")
    rel_tol: float = Field(0.0, ge=0, description="Relative tolerance (of the expected value).")

    @model_validator(mode="after")
    def _valid(self) -> NumericConfig:
        if self.pattern is not None:
            try:
                compiled = re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"pattern {self.pattern!r} is not a valid regex: {err}") from None
            if compiled.groups < 1:
                raise ValueError("pattern needs a capture group around the number")
        return self


class PythonConfig(_GraderBase):
    """A Python function as grader."""

    kind: Literal["python"]
    function: str = Field(
        ...,
        description="'package.module:function' (importable) or 'path/to/file.py:function' "
        "(relative to the spec); called as fn(prompt, completion, row) -> float in [0, 1].",
    )

    @model_validator(mode="after")
    def _valid(self) -> PythonConfig:
        target, sep, func = self.function.rpartition(":")
        if not sep or not target or not func.isidentifier():
            raise ValueError(
                f"function {self.function!r}: expected 'module:function' or 'file.py:function'"
            )
        return self


class RewardModelConfig(_GraderBase):
    """A trained reward model (task ``reward``) as grader."""

    kind: Literal["reward_model"]
    model: str = Field(
        ...,
        description="Run folder of a `honed run` with task reward (relative: next to the spec).",
    )
    scale: float = Field(1.0, gt=0, description="Score = sigmoid(reward / scale): 0.5 at reward 0.")
    batch_size: int = Field(8, gt=0, description="Completions per forward pass.")


GraderConfig = Annotated[
    ExactConfig | RegexConfig | JsonSchemaConfig | NumericConfig | PythonConfig | RewardModelConfig,
    Field(discriminator="kind"),
]
KINDS = ("exact", "regex", "json_schema", "numeric", "python", "reward_model")
_ADAPTER: TypeAdapter[Any] = TypeAdapter(GraderConfig)


def parse_grader_config(raw: Any, where: str = "grader") -> Any:
    """A typed grader config from a mapping; SpecError naming the problem otherwise."""
    if isinstance(raw, StrictModel):
        return raw
    if not isinstance(raw, Mapping) or "kind" not in raw:
        raise SpecError(f"{where}: a grader is a mapping with a 'kind' (one of {', '.join(KINDS)})")
    if raw["kind"] not in KINDS:
        raise SpecError(f"{where}: unknown grader kind {raw['kind']!r}; known: {', '.join(KINDS)}")
    try:
        return _ADAPTER.validate_python(dict(raw))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'config'}: {e['msg']}"
            for e in err.errors()
        )
        raise SpecError(f"{where} ({raw['kind']}): {problems}") from None


# --------------------------------------------------------------------------------------------
# Helpers


def _field(row: Mapping[str, Any], name: str, grader: str) -> Any:
    if name not in row:
        raise GraderError(f"grader {grader}: the row has no field {name!r} (fields: {sorted(row)})")
    return row[name]


def normalise(text: Any, case_sensitive: bool = False, strip_punctuation: bool = False) -> str:
    """Whitespace collapsed, stripped; lower case unless case-sensitive."""
    out = " ".join(str(text).split())
    if strip_punctuation:
        out = out.strip("\"'`").rstrip(".!?").strip("\"'` ")
    return out if case_sensitive else out.lower()


_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def strip_code_fence(text: str) -> str:
    """The content of a ```json ... ``` fence around the whole text, else the text."""
    match = _FENCE.match(text)
    return match.group(1) if match else text


_NUMBER = re.compile(r"[-+]?(?:\d+(?:[.,]\d+)*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")


def parse_number(text: str) -> float | None:
    """A number written with optional thousands separators (1,234.5), else None."""
    try:
        return float(text.replace(",", "").strip())
    except ValueError:
        return None


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    return parse_number(found[-1]) if found else None


def _same_value(got: Any, expected: Any) -> bool:
    """JSON values equal; numbers (or numeric strings in the row) compared by value."""
    if isinstance(got, bool) or isinstance(expected, bool):
        return got == expected
    if isinstance(got, int | float):
        want = parse_number(str(expected))
        return want is not None and math.isclose(float(got), want, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(got, str) and isinstance(expected, str):
        return normalise(got) == normalise(expected)
    return got == expected


class _Scorer:
    """score_batch as a loop over score: the default for graders without batching."""

    name = "grader"

    def score(self, prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        raise NotImplementedError

    def score_batch(
        self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        return [self.score(p, c, r) for p, c, r in zip(prompts, completions, rows, strict=True)]


# --------------------------------------------------------------------------------------------
# Graders


class ExactGrader(_Scorer):
    def __init__(self, cfg: ExactConfig) -> None:
        self.cfg, self.name = cfg, cfg.name or "exact"

    def score(self, prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        c = self.cfg
        want = normalise(_field(row, c.field, self.name), c.case_sensitive, c.strip_punctuation)
        return float(normalise(completion, c.case_sensitive, c.strip_punctuation) == want)


class RegexGrader(_Scorer):
    def __init__(self, cfg: RegexConfig) -> None:
        self.cfg, self.name = cfg, cfg.name or "regex"
        self.pattern = re.compile(cfg.pattern, re.DOTALL)

    def score(self, prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        text = completion.strip()
        match = (
            self.pattern.fullmatch(text)
            if self.cfg.mode == "fullmatch"
            else self.pattern.search(text)
        )
        if match is None:
            return 0.0
        if self.cfg.field is None:
            return 1.0
        got = match.group(self.cfg.group) or ""
        return float(normalise(got) == normalise(_field(row, self.cfg.field, self.name)))


class JsonSchemaGrader(_Scorer):
    def __init__(self, cfg: JsonSchemaConfig, base_dir: Path | None = None) -> None:
        import jsonschema

        self.cfg, self.name = cfg, cfg.name or "json_schema"
        schema = cfg.json_schema if cfg.json_schema is not None else self._read(base_dir)
        try:
            validator_cls = jsonschema.validators.validator_for(schema)
            validator_cls.check_schema(schema)
        except jsonschema.SchemaError as err:
            raise SpecError(f"grader {self.name}: invalid JSON Schema: {err.message}") from None
        self.validator = validator_cls(schema)

    def _read(self, base_dir: Path | None) -> dict[str, Any]:
        path = Path(self.cfg.schema_file or "")
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise SpecError(f"grader {self.name}: schema_file {path} not found")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SpecError(f"grader {self.name}: schema_file {path} is not JSON: {err}") from None

    def parse(self, completion: str) -> Any:
        """The parsed JSON value, or raises ValueError."""
        return json.loads(strip_code_fence(completion.strip()))

    def score(self, prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        try:
            value = self.parse(completion)
        except ValueError:
            return 0.0
        if not self.validator.is_valid(value):
            return 0.0
        if not self.cfg.fields:
            return 1.0
        ok = isinstance(value, Mapping) and all(
            key in value and _same_value(value[key], _field(row, field, self.name))
            for key, field in self.cfg.fields.items()
        )
        return 1.0 if ok else (0.5 if self.cfg.partial_credit else 0.0)


class NumericGrader(_Scorer):
    def __init__(self, cfg: NumericConfig) -> None:
        self.cfg, self.name = cfg, cfg.name or "numeric"
        self.pattern = re.compile(cfg.pattern, re.DOTALL) if cfg.pattern else None

    def extract(self, completion: str) -> float | None:
        if self.pattern is None:
            return last_number(completion)
        match = self.pattern.search(completion)
        return parse_number(match.group(1) or "") if match else None

    def score(self, prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        raw = _field(row, self.cfg.field, self.name)
        want = parse_number(str(raw))
        if want is None:
            raise GraderError(
                f"grader {self.name}: row field {self.cfg.field}={raw!r} is no number"
            )
        got = self.extract(completion)
        if got is None:
            return 0.0
        return float(math.isclose(got, want, rel_tol=self.cfg.rel_tol, abs_tol=self.cfg.abs_tol))


def load_function(ref: str, base_dir: Path | None = None) -> Callable[..., Any]:
    """``module:function`` (imported) or ``file.py:function`` (a file, relative to base_dir).

    A file is executed as a module: only point at code you trust, as with any plugin."""
    target, _, func = ref.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            if not path.is_file():
                raise SpecError(f"python grader {ref!r}: file {path} not found")
            module_name = f"honed_grader_{path.stem}_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except SpecError:
        raise
    except Exception as err:  # ImportError, SyntaxError inside the plugin: name it
        raise SpecError(f"python grader {ref!r}: cannot load {target}: {err}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise SpecError(f"python grader {ref!r}: {target} has no function {func!r}")
    return fn


class PythonGrader(_Scorer):
    def __init__(self, cfg: PythonConfig, base_dir: Path | None = None) -> None:
        self.cfg, self.name = cfg, cfg.name or cfg.function.rpartition(":")[2]
        self.fn = load_function(cfg.function, base_dir)

    def score(self, prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        value = self.fn(prompt, completion, dict(row))
        if isinstance(value, bool):
            return float(value)
        if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise GraderError(
                f"python grader {self.cfg.function}: returned {value!r}; "
                "expected a number in [0, 1]"
            )
        return float(value)


#: Loads a reward model for a ``reward_model`` grader: (cfg.model, base_dir) -> an object with
#: ``score(prompts, responses) -> list[float]`` and a ``batch_size``. Evaluation sits below
#: training in honed's layering, so the training stage passes its loader in
#: (honed.train.tasks.grpo.load_reward_scorer).
RewardLoader = Callable[[str, Path | None], Any]


class RewardModelGrader(_Scorer):
    def __init__(
        self, cfg: RewardModelConfig, base_dir: Path | None, loader: RewardLoader | None
    ) -> None:
        self.cfg, self.name = cfg, cfg.name or "reward_model"
        if loader is None:
            raise SpecError(
                f"grader {self.name}: reward_model graders need a reward model loader "
                "(the grpo task provides one)"
            )
        try:
            self.scorer = loader(cfg.model, base_dir)
        except HonedError as err:
            raise SpecError(f"grader {self.name}: {err}") from None
        self.scorer.batch_size = cfg.batch_size

    def score(self, prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        return self.score_batch([prompt], [completion], [row])[0]

    def score_batch(
        self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        rewards = self.scorer.score(list(prompts), list(completions))
        return [1.0 / (1.0 + math.exp(-r / self.cfg.scale)) for r in rewards]


class WeightedGrader(_Scorer):
    """The weighted mean of several graders' scores."""

    def __init__(self, graders: Sequence[Any], weights: Sequence[float]) -> None:
        self.graders, self.weights = list(graders), list(weights)
        self.name = "+".join(g.name for g in self.graders)

    def components(
        self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> dict[str, list[float]]:
        """{grader name: scores} for each component (names made unique)."""
        out: dict[str, list[float]] = {}
        for i, g in enumerate(self.graders):
            key = g.name if g.name not in out else f"{g.name}_{i}"
            out[key] = g.score_batch(prompts, completions, rows)
        return out

    def score(self, prompt: str, completion: str, row: Mapping[str, Any]) -> float:
        return self.score_batch([prompt], [completion], [row])[0]

    def score_batch(
        self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        parts = list(self.components(prompts, completions, rows).values())
        total = sum(self.weights)
        return [
            sum(w * p[i] for w, p in zip(self.weights, parts, strict=True)) / total
            for i in range(len(prompts))
        ]


def _one(cfg: Any, base: Path | None, reward_loader: RewardLoader | None) -> Any:
    kind = cfg.kind
    if kind == "exact":
        return ExactGrader(cfg)
    if kind == "regex":
        return RegexGrader(cfg)
    if kind == "json_schema":
        return JsonSchemaGrader(cfg, base)
    if kind == "numeric":
        return NumericGrader(cfg)
    if kind == "python":
        return PythonGrader(cfg, base)
    return RewardModelGrader(cfg, base, reward_loader)


def build_grader(
    cfg: Any, base_dir: Path | str | None = None, reward_loader: RewardLoader | None = None
) -> Grader:
    """A grader from one config (mapping or typed) or the weighted mean of a list of them.

    ``base_dir``: the folder relative paths (schema files, python files, reward runs) resolve
    against: the spec's folder. ``reward_loader``: loads reward models (see RewardLoader)."""
    base = Path(base_dir) if base_dir is not None else None
    if isinstance(cfg, Sequence) and not isinstance(cfg, str | bytes):
        if not cfg:
            raise SpecError("graders: give at least one grader")
        typed = [parse_grader_config(c, f"graders[{i}]") for i, c in enumerate(cfg)]
        if len(typed) == 1:
            return _one(typed[0], base, reward_loader)
        graders = [_one(c, base, reward_loader) for c in typed]
        return WeightedGrader(graders, [c.weight for c in typed])
    return _one(parse_grader_config(cfg), base, reward_loader)


def grader_files(cfgs: Sequence[Any]) -> list[str]:
    """The files the graders read, relative to the spec: python grader files, schema files."""
    files = []
    for i, raw in enumerate(cfgs):
        cfg = parse_grader_config(raw, f"graders[{i}]")
        if cfg.kind == "python" and (target := cfg.function.rpartition(":")[0]).endswith(".py"):
            files.append(target)
        elif cfg.kind == "json_schema" and cfg.schema_file:
            files.append(cfg.schema_file)
    return [f for f in files if not Path(f).is_absolute()]


def relocate_reward_models(cfgs: Sequence[Any], base_dir: Path, root: Path) -> None:
    """In place, on a spec dump's grader mappings: ``reward_model`` graders name a run folder
    relative to the spec (``base_dir``); rewritten relative to the run folder ``root``, so the
    promotion gate, which grades that folder again later, finds the same reward model. An
    absolute path stays as given (a registered version copied elsewhere finds it only so)."""
    from honed.paths import portable_path

    for cfg in cfgs:
        if isinstance(cfg, dict) and cfg.get("kind") == "reward_model":
            model = cfg.get("model")
            if isinstance(model, str) and not Path(model).expanduser().is_absolute():
                cfg["model"] = portable_path(base_dir / model, root)


def keep_grader_files(cfgs: Sequence[Any], base_dir: Path, run_dir: Path) -> list[str]:
    """Copy the graders' files (relative to the spec's folder ``base_dir``, inside it) into the
    run folder at the same relative paths, so the folder can be graded again later (the
    promotion gate) without the spec's folder. Files outside ``base_dir`` stay where they are
    (the gate then names what it cannot find). Returns the copied paths."""
    import shutil

    copied = []
    for rel in grader_files(cfgs):
        source = (base_dir / rel).resolve()
        if not source.is_relative_to(base_dir.resolve()) or not source.is_file():
            continue
        target = run_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        copied.append(rel)
    return copied


# ---------------------------------------------------------------- grading a set of completions


def prompt_text(prompt: Any) -> str:
    """The last user turn of a chat prompt (what graders and reward models read), or the text."""
    if isinstance(prompt, list):
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        return users[-1] if users else ""
    return str(prompt)


def grade(
    grader: Grader, rows: Sequence[Mapping[str, Any]], texts: list[str], threshold: float
) -> tuple[dict[str, Any], list[float]]:
    """Completions ``texts`` of prompt rows ({"prompt", "fields"}) graded: ({grader_pass_rate,
    mean_reward, rows, per-grader means}, the per-row scores). A row passes when its score
    reaches ``threshold``."""
    prompts = [prompt_text(r["prompt"]) for r in rows]
    fields = [r["fields"] for r in rows]
    scores = grader.score_batch(prompts, texts, fields)
    result: dict[str, Any] = {
        "grader_pass_rate": sum(passed(s, threshold) for s in scores) / max(len(scores), 1),
        "mean_reward": sum(scores) / max(len(scores), 1),
        "rows": len(scores),
    }
    if hasattr(grader, "components"):
        parts = grader.components(prompts, texts, fields)
        result["graders"] = {k: sum(v) / max(len(v), 1) for k, v in parts.items()}
    return result, scores


def passed(score: float, threshold: float) -> bool:
    return score >= threshold - 1e-9
