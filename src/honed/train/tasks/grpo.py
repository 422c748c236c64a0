"""Reinforcement fine-tuning with graders: GRPO (TRL's GRPOTrainer) on prompts.

Data: one prompt per row, as chat ``messages`` (a final assistant turn, if any, is dropped: it
is a reference, not part of the prompt) or a text ``prompt`` field (sent as one user turn, after
the optional ``system_prompt``), plus whatever fields the graders read (the expected answer...).

Reward: the graders declared in ``task_options.graders`` (honed.evals.graders; several are
combined by their weighted mean). For each prompt GRPO samples ``num_generations`` completions,
scores them, and pushes the policy towards the completions above their group's mean reward,
with a KL penalty ``beta`` towards the reference model (the base: the adapter disabled for LoRA
/ QLoRA, a frozen copy TRL loads for full fine-tuning). ``beta > 0`` by default, so the KL to
the reference is also logged during training.

Evaluation on held-out prompts, base (before) and tuned (after), greedy decoding
(``eval.generation``): ``grader_pass_rate`` (share of completions whose score reaches
``pass_threshold``; gate it with ``eval.min_metrics: {grader_pass_rate: 0.6}``), the mean reward
and per-grader means, and the KL of the tuned policy to the reference, estimated on completions
sampled from the tuned policy at temperature 1: mean over prompts of
sum_t log pi(y_t | ...) - log pi_ref(y_t | ...) (nats per completion and per token).

Rollouts (``rollout_engine``): ``honed`` (default) samples them with honed's rollout loop
(honed.train.rollouts: each prompt prefilled once for its whole group), handed to TRL's trainer
as its ``rollout_func``; ``trl`` keeps TRL's own ``generate`` of every repeated prompt.
bench/rft_rollouts.py measures both on the same model and prompts.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from honed.config_base import StrictModel
from honed.data.dataset import SplitData
from honed.data.loaders import BadRow, RawData
from honed.errors import DataError, SpecError
from honed.evals import generative
from honed.evals.graders import (
    build_grader,
    grade,
    keep_grader_files,
    parse_grader_config,
    prompt_text,
)
from honed.train import common
from honed.train.distributed import is_main_process
from honed.train.methods import get_method
from honed.train.tasks._shared import (
    DEFAULT_CHAT_TEMPLATE,
    base_view,
    dedup_first,
    drop_reference_adapter,
    generation_settings,
    load_base,
    load_tokenizer,
    load_tuned,
    read_text_sources,
    split_text_rows,
    task_options,
)

log = logging.getLogger("honed.train")

if TYPE_CHECKING:
    from honed.models.resolve import ResolvedModel
    from honed.paths import RunPaths
    from honed.spec import RunSpec

ROLES = ("system", "user", "assistant")


class GrpoOptions(StrictModel):
    """Options of the grpo task (the spec's ``task_options``)."""

    graders: list[dict[str, Any]] = Field(
        ...,
        min_length=1,
        description="Graders scoring each completion (honed.evals.graders: kinds exact, regex, "
        "json_schema, numeric, python, reward_model); several: weighted mean ('weight').",
    )
    prompt_field: str = Field("prompt", description="Field holding a text prompt.")
    messages_field: str = Field(
        "messages", description="Field holding a chat prompt (used when the row has it)."
    )
    system_prompt: str | None = Field(
        None, description="System turn put before text prompts (not before chat prompts)."
    )
    pass_threshold: float = Field(
        1.0,
        gt=0,
        le=1,
        description="A completion passes when its (combined) score reaches this; 1.0: every "
        "grader fully satisfied. Use e.g. 0.5 with a reward_model grader.",
    )
    beta: float = Field(
        0.04,
        ge=0,
        description="KL coefficient towards the reference model; 0 turns the reference (and "
        "the KL logged during training) off.",
    )
    num_generations: int = Field(
        4, ge=2, description="Completions sampled per prompt (the group of GRPO)."
    )
    max_completion_tokens: int = Field(
        48, gt=0, description="Tokens generated per completion, in training and evaluation."
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of the rollouts.")
    rollout_engine: Literal["honed", "trl"] = Field(
        "honed",
        description="Who samples the training rollouts: 'honed' (each prompt prefilled once "
        "for its group: honed.train.rollouts) or 'trl' (TRL's generate on every repeated "
        "prompt). 'honed' falls back to 'trl' where it does not apply (FSDP, min_p, a "
        "repetition penalty), with a log line saying why.",
    )
    loss_type: str = Field(
        "dapo",
        description="TRL's GRPO loss normalisation: grpo, bnpo, dr_grpo, dapo (TRL's default).",
    )
    validate_during_training: bool = Field(
        False,
        description="Generate on the validation prompts each epoch and keep the best "
        "checkpoint by mean reward (costs a rollout pass per epoch).",
    )
    eval_rows: int = Field(200, gt=0, description="Held-out prompts evaluated (CPU bound).")
    samples: int = Field(8, ge=0, description="Held-out prompts shown base vs tuned.")

    @field_validator("graders")
    @classmethod
    def _valid_graders(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, cfg in enumerate(value):
            parse_grader_config(cfg, f"graders[{i}]")
        return value


# ---------------------------------------------------------------- data


def grader_fields(opts: GrpoOptions) -> list[str]:
    """Row fields the graders compare against."""
    fields: list[str] = []
    for i, raw in enumerate(opts.graders):
        cfg = parse_grader_config(raw, f"graders[{i}]")
        named = [getattr(cfg, "field", None), *getattr(cfg, "fields", {}).values()]
        fields += [f for f in named if f and f not in fields]
    return fields


def _messages_prompt(messages: Any) -> tuple[list[dict] | None, str | None]:
    if not isinstance(messages, list) or not messages:
        return None, "'messages' must be a non-empty list"
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or msg.get("role") not in ROLES:
            return None, f"message {i}: needs a role in {ROLES}"
        if not isinstance(msg.get("content"), str):
            return None, f"message {i}: content must be text"
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    if clean[-1]["role"] == "assistant":
        clean = clean[:-1]  # a reference answer, not part of the prompt
    if not clean or clean[-1]["role"] != "user":
        return None, "the prompt must end with a user turn"
    return clean, None


def to_prompt(fields: Mapping[str, Any], opts: GrpoOptions) -> tuple[list[dict] | None, str | None]:
    """(chat prompt, None) or (None, why the row is bad)."""
    if opts.messages_field in fields:
        return _messages_prompt(fields[opts.messages_field])
    text = fields.get(opts.prompt_field)
    if not isinstance(text, str) or not text.strip():
        return None, f"empty or missing field {opts.prompt_field!r} (or {opts.messages_field!r})"
    system = [{"role": "system", "content": opts.system_prompt}] if opts.system_prompt else []
    return [*system, {"role": "user", "content": text.strip()}], None


def prompt_rows(raw: RawData, opts: GrpoOptions) -> tuple[list[dict], list[BadRow]]:
    """Rows {"prompt": messages, "fields": the row's other fields}; bad rows named."""
    needed = grader_fields(opts)
    rows, bad = [], list(raw.bad_rows)
    for rec in raw.records:
        prompt, problem = to_prompt(rec.fields, opts)
        missing = [f for f in needed if rec.fields.get(f) in (None, "")]
        if prompt is None or missing:
            why = problem or f"missing field(s) the graders need: {', '.join(missing)}"
            bad.append(BadRow(rec.file, rec.line, why))
            continue
        extra = {
            k: v for k, v in rec.fields.items() if k not in (opts.prompt_field, opts.messages_field)
        }
        rows.append({"prompt": prompt, "fields": json.loads(json.dumps(extra, default=str))})
        rows[-1]["line"] = rec.line
    return rows, bad


def _prompt_key(row: Mapping[str, Any]) -> str:
    return "\n".join(m["content"] for m in row["prompt"] if m["role"] != "system")


def load_prompt_data(spec: RunSpec) -> SplitData:
    opts = task_options(spec, GrpoOptions)
    read = read_text_sources(spec, lambda raw, src: prompt_rows(raw, opts))
    dups = dedup_first(read, _prompt_key) if spec.data.dedup else 0
    if len(read.rows) < 5:
        raise DataError(
            f"{read.label}: {len(read.rows)} usable row(s); grpo needs at least 5 to split"
        )
    lengths = {"prompt": _prompt_key}
    return split_text_rows(read, spec, dups, _prompt_key, lengths, graders=opts.graders)


# ---------------------------------------------------------------- reward


def load_reward_scorer(ref: str, base_dir: Path | None) -> Any:
    """A ``reward_model`` grader's model: the run folder of a `honed run` with task reward
    (relative paths: next to the spec). Registry references are resolved above training
    (`honed models show NAME@ALIAS` prints a version's folder)."""
    from honed.train.score import load_reward_model

    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_dir():
        raise SpecError(
            f"reward_model grader: {ref!r} is no run folder ({path} not found); give the run "
            "folder of a `honed run` with task reward"
        )
    judge_warning(path.resolve())
    return load_reward_model(path)


_WARNED: set[Path] = set()


def judge_warning(folder: Path) -> str | None:
    """A warning (logged once per folder) when a reward run's held-out pairwise accuracy is not
    above chance (one-sided binomial test at 5%; its metrics.json): GRPO against such a judge
    learns whatever it happens to prefer (docs/rft.md measured short answers). None otherwise,
    or when the folder has no held-out accuracy."""
    from scipy.stats import binomtest

    try:
        test = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["test"]
        accuracy, rows = float(test["pairwise_accuracy"]), int(test["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if rows <= 0 or not 0.0 <= accuracy <= 1.0:
        return None  # not a held-out figure this test can read
    p = binomtest(round(accuracy * rows), rows, 0.5, alternative="greater").pvalue
    if p <= 0.05:
        return None
    message = (
        f"reward model {folder}: held-out pairwise accuracy {accuracy:.3f} on {rows} pairs is "
        f"not above chance (p = {p:.2f}); the policy will learn what this judge happens to "
        "prefer: read the samples, or train a better reward model first"
    )
    if folder not in _WARNED:  # the caller passes the resolved folder
        _WARNED.add(folder)
        log.warning(message)
    return message


def completion_text(completion: Any) -> str:
    """A TRL completion (text, or a list of chat messages) as text."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, Mapping))
    return str(completion)


def reward_function(grader: Any) -> Any:
    """TRL reward function: prompts, completions and the dataset's ``fields`` column (JSON)."""

    def graders(prompts: list, completions: list, fields: list[str], **_: Any) -> list[float]:
        rows = [json.loads(f) for f in fields]
        return grader.score_batch(
            [prompt_text(p) for p in prompts], [completion_text(c) for c in completions], rows
        )

    return graders


def _dataset(rows: Sequence[Mapping[str, Any]]) -> Any:
    import datasets

    return datasets.Dataset.from_list(
        [{"prompt": r["prompt"], "fields": json.dumps(r["fields"])} for r in rows]
    )


# ---------------------------------------------------------------- rollouts and scoring


def rollout_generate(
    model: Any, tokenizer: Any, prompts: Sequence[Any], settings: generative.GenerationSettings
) -> list[str]:
    """Completions of chat prompts: the hook where honed's rollout engine plugs in (today
    batched ``model.generate`` through honed.evals.generative)."""
    return generative.generate(model, tokenizer, list(prompts), settings)


def sampled_ids(
    model: Any, tokenizer: Any, prompts: Sequence[Any], max_new_tokens: int, batch_size: int
) -> tuple[list[tuple[list[int], list[int]]], list[list[float]]]:
    """(prompt ids, completion ids up to and with the first EOS) sampled at temperature 1,
    ``batch_size`` prompts at a time, and each completion token's log-prob under ``model``
    (the sampling distribution at temperature 1 is the model's: no second forward pass)."""
    from honed.train.rollouts import Sampling, prompt_token_ids, sample_groups

    model.eval()
    out: list[tuple[list[int], list[int]]] = []
    logps: list[list[float]] = []
    for start in range(0, len(prompts), batch_size):
        ids = [prompt_token_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        completions, lps = sample_groups(
            model, ids, 1, max_new_tokens, [tokenizer.eos_token_id], tokenizer.pad_token_id,
            Sampling(temperature=1.0),
        )  # fmt: skip
        out += list(zip(ids, completions, strict=True))
        logps += lps
    return out, logps


def token_logps(model: Any, pairs: Sequence[tuple[list[int], list[int]]]) -> list[list[float]]:
    """Log-probability of each completion token given the prompt and earlier tokens."""
    import torch

    model.eval()
    result: list[list[float]] = []
    for prompt, completion in pairs:
        ids = torch.tensor([prompt + completion])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits.float()[0]  # (T, V)
        logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
        picked = logp.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)
        result.append(picked.tolist())
    return result


def kl_estimate(policy: list[list[float]], reference: list[list[float]]) -> dict[str, float]:
    """Monte-Carlo KL(pi || pi_ref) from completions sampled from pi: per completion (the sum of
    log-ratios) and per token."""
    seq = [sum(p) - sum(r) for p, r in zip(policy, reference, strict=True)]
    tokens = sum(len(p) for p in policy)
    return {
        "kl_to_reference": sum(seq) / max(len(seq), 1),
        "kl_per_token": sum(seq) / max(tokens, 1),
        "kl_tokens": tokens,
    }


# ---------------------------------------------------------------- task


def grpo_config_kwargs(spec: RunSpec, paths: RunPaths, opts: GrpoOptions) -> dict[str, Any]:
    """GRPOConfig arguments: the shared training arguments plus GRPO's own."""
    cfg = spec.training
    if (cfg.batch_size * cfg.gradient_accumulation_steps) % opts.num_generations:
        raise SpecError(
            f"training.batch_size ({cfg.batch_size}) x gradient_accumulation_steps "
            f"({cfg.gradient_accumulation_steps}) counts completions per step and must be a "
            f"multiple of task_options.num_generations ({opts.num_generations})"
        )
    kwargs = common.training_arguments_kwargs(cfg, paths)
    kwargs.update(
        beta=opts.beta,
        num_generations=opts.num_generations,
        max_completion_length=opts.max_completion_tokens,
        temperature=opts.temperature,
        top_p=opts.top_p,
        loss_type=opts.loss_type,
        train_sampling_strategy="random",  # prompts are grouped by TRL's own sampler
        # on unless the spec says otherwise: see TrainingConfig.gradient_checkpointing
        activation_checkpointing=cfg.gradient_checkpointing is not False,
        log_completions=False,
    )
    if opts.validate_during_training:
        kwargs.update(
            metric_for_best_model="reward",
            greater_is_better=True,
            num_generations_eval=opts.num_generations,
            per_device_eval_batch_size=opts.num_generations,
        )
    else:
        kwargs.update(eval_strategy="no", load_best_model_at_end=False)
    return kwargs


def _eval_scores(
    rows: list[dict], grader: Any, opts: GrpoOptions, outputs: dict[str, list[str]]
) -> dict[str, Any]:
    return {
        name: grade(grader, rows, texts, opts.pass_threshold)[0] for name, texts in outputs.items()
    }


def rollout_func(opts: GrpoOptions, args: Any) -> Any:
    """honed's rollout loop as TRL's ``rollout_func``, or None for TRL's own generation."""
    from honed.train.rollouts import trl_rollout_func, unsupported_by_rollouts

    if opts.rollout_engine == "trl":
        return None
    why = unsupported_by_rollouts(args)
    if why is not None:
        log.info("grpo: TRL generates the rollouts (honed's loop does not support %s)", why)
        return None
    # TRL marks rollout_func experimental with a warning on every run; the contract honed
    # relies on (prompt ids, completion ids, log-probs per completion) is pinned by its tests.
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    return trl_rollout_func


class GrpoTask:
    name = "grpo"
    options_model = GrpoOptions  # validates the spec's task_options
    peft_task_type = "CAUSAL_LM"

    def prepare_data(self, spec: RunSpec) -> SplitData:
        return load_prompt_data(spec)

    def data_fields(self, spec: RunSpec, first_row: Mapping[str, Any]) -> dict[str, str]:
        opts = task_options(spec, GrpoOptions)
        prompt = opts.messages_field if opts.messages_field in first_row else opts.prompt_field
        fields = {prompt: "task_options.prompt_field / messages_field"}
        fields.update(dict.fromkeys(grader_fields(opts), "task_options.graders"))
        return fields

    def generation(self, spec: RunSpec) -> generative.GenerationSettings:
        """Greedy decoding of the held-out evaluation (eval.generation; see _shared)."""
        opts = task_options(spec, GrpoOptions)
        return generation_settings(spec, opts.max_completion_tokens)

    def load_trained(self, spec: RunSpec, base: ResolvedModel, paths: RunPaths) -> Any:
        return load_tuned(spec, base, paths.model_dir)

    def grader(self, spec: RunSpec) -> Any:
        graders = task_options(spec, GrpoOptions).graders
        return build_grader(graders, spec.base_dir, reward_loader=load_reward_scorer)

    def build_trainer(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths
    ) -> tuple[Any, Any]:
        """(GRPOTrainer, tokenizer); separate from ``train`` so benchmarks reuse it."""
        from trl import GRPOConfig, GRPOTrainer

        opts = task_options(spec, GrpoOptions)
        args = GRPOConfig(**grpo_config_kwargs(spec, paths, opts))
        tokenizer = load_tokenizer(base.path, DEFAULT_CHAT_TEMPLATE)
        model = load_base(spec, base)
        model = get_method(spec.method.name).prepare(model, spec.method, self.peft_task_type)
        validation = _dataset(data.validation) if opts.validate_during_training else None
        trainer = GRPOTrainer(
            rollout_func=rollout_func(opts, args),
            model=model,
            reward_funcs=reward_function(self.grader(spec)),
            args=args,
            train_dataset=_dataset(data.train),
            eval_dataset=validation,
            processing_class=tokenizer,
            callbacks=common.callbacks(spec.training) if validation is not None else [],
        )
        drop_reference_adapter(trainer.model)
        return trainer, tokenizer

    def train(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths, resume: bool
    ) -> dict[str, Any]:
        common.setup_runtime(spec.training)
        trainer, tokenizer = self.build_trainer(spec, data, base, paths)
        metrics = common.train_and_save(trainer, tokenizer, paths, resume)
        # The run folder keeps the graders' files: the promotion gate grades it again later.
        if is_main_process():
            graders = task_options(spec, GrpoOptions).graders
            metrics["grader_files"] = keep_grader_files(graders, spec.base_dir, paths.root)
        adapter = hasattr(trainer.model, "disable_adapter")
        metrics["reference_model"] = "adapter disabled" if adapter else "frozen copy of the base"
        return metrics

    def evaluate(
        self, spec: RunSpec, data: SplitData, base: ResolvedModel, paths: RunPaths
    ) -> dict[str, Any]:
        common.setup_runtime(spec.training)
        opts = task_options(spec, GrpoOptions)
        grader, settings = self.grader(spec), self.generation(spec)
        tokenizer = load_tokenizer(paths.model_dir, DEFAULT_CHAT_TEMPLATE)
        rows = data.test[: opts.eval_rows]
        prompts = [r["prompt"] for r in rows]
        tuned = self.load_trained(spec, base, paths)
        outputs = {"tuned": rollout_generate(tuned, tokenizer, prompts, settings)}
        pairs, policy = sampled_ids(tuned, tokenizer, prompts, opts.max_completion_tokens, 8)
        with base_view(spec, base, tuned) as reference:
            outputs = {"base": rollout_generate(reference, tokenizer, prompts, settings), **outputs}
            ref = token_logps(reference, pairs)
        scores = _eval_scores(rows, grader, opts, outputs)
        kl = kl_estimate(policy, ref)
        report: dict[str, Any] = {
            "test_grader_pass_rate": scores["tuned"]["grader_pass_rate"],
            "test_base_grader_pass_rate": scores["base"]["grader_pass_rate"],
            "test_mean_reward": scores["tuned"]["mean_reward"],
            "test_base_mean_reward": scores["base"]["mean_reward"],
            "test_kl_to_reference": kl["kl_to_reference"],
            "test_kl_per_token": kl["kl_per_token"],
            "test": {**scores, "kl": kl, "pass_threshold": opts.pass_threshold},
            "task_options": opts.model_dump(),
        }
        shown = [
            {"prompt": r["prompt"], "completion": json.dumps(r["fields"], ensure_ascii=False)}
            for r in rows[: opts.samples]
        ]
        if shown:
            n = len(shown)
            samples = generative.side_by_side(shown, {k: v[:n] for k, v in outputs.items()})
            files = generative.write_samples(samples, paths.root, settings, spec.name)
            report["samples"] = {"generation": settings.to_dict(), "rows": n, "files": files}
        return report


TASK = GrpoTask()
