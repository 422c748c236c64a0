"""Rewards from a trained reward model (task ``reward``), behind ``honed score``
(the command itself is in honed.pipeline.commands, which resolves registry refs):

    honed score MODEL --prompt "..." --response "..."
    honed score MODEL --file pairs.jsonl        # lines: {prompt, response} or
                                                #        {prompt, chosen, rejected}

MODEL is a run folder, ``NAME@ALIAS`` or ``NAME/VERSION``. Adapters (LoRA/QLoRA) load on top of
the base named in the folder's lineage.json. Texts are encoded exactly as in training
(honed.train.tasks._preference.encode). Output: one JSON object per line on stdout; for chosen /
rejected files a final summary line with the pairwise accuracy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from honed.errors import DataError, ModelError
from honed.paths import read_lineage

if TYPE_CHECKING:
    from honed.spec import RunSpec


@dataclass
class RewardScorer:
    """A loaded reward model and its encoding settings."""

    model: Any
    tokenizer: Any
    max_length: int
    max_prompt_tokens: int
    batch_size: int = 8

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """One scalar reward per (prompt, response); higher is preferred."""
        from honed.train.tasks._preference import encode, score_ids

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        seqs = [
            encode(self.tokenizer, p, r, self.max_length, self.max_prompt_tokens)
            for p, r in zip(prompts, responses, strict=True)
        ]
        return score_ids(self.model, self.tokenizer, seqs, self.batch_size)


def _spec_from_lineage(lineage: dict[str, Any]) -> RunSpec | None:
    from honed.spec import RunSpec

    dump = lineage.get("spec")
    if not dump:
        return None
    try:
        return RunSpec.model_validate(dump)
    except Exception:  # an older/newer spec schema: fall back to defaults
        return None


def _base_path(folder: Path, lineage: dict[str, Any]) -> Path:
    """The adapter's base: lineage first, then adapter_config.json."""
    from honed.models.base_folder import base_model_folder

    candidates = [lineage.get("base_model", {}).get("path")]
    adapter_cfg = folder / "adapter_config.json"
    if adapter_cfg.is_file():
        candidates.append(json.loads(adapter_cfg.read_text()).get("base_model_name_or_path"))
    found = base_model_folder(folder, lineage, *candidates[1:])
    if found is not None:
        return found
    raise ModelError(
        f"{folder}: adapter's base model folder not found (tried {candidates}); "
        "merge the adapter (`honed merge`) or restore the base"
    )


def load_reward_model(
    folder: Path, base_path: Path | None = None, spec: RunSpec | None = None
) -> RewardScorer:
    """A reward model folder (full weights, or an adapter over ``base_path``) as a scorer."""
    from honed.models.resolve import load_kwargs
    from honed.train.methods import get_method
    from honed.train.tasks._preference import PreferenceOptions, load_reward_base, prompt_budget
    from honed.train.tasks._shared import keep_training_kernels, load_tokenizer, task_options

    folder = Path(folder)
    lineage = read_lineage(folder)
    if lineage.get("task") not in (None, "reward"):
        raise ModelError(f"{folder}: a {lineage['task']!r} model, not a reward model")
    spec = spec or _spec_from_lineage(lineage)
    tokenizer = load_tokenizer(folder)
    kwargs = load_kwargs(spec.model) if spec else {}
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        method = get_method(spec.method.name) if spec else None
        if method:
            kwargs.update(method.load_kwargs(spec.method))
        base = load_reward_base(base_path or _base_path(folder, lineage), tokenizer, kwargs)
        keep_training_kernels(base, method)
        model = PeftModel.from_pretrained(base, str(folder))
    else:
        model = load_reward_base(folder, tokenizer, kwargs)
    if model.config.num_labels != 1:
        raise ModelError(f"{folder}: has {model.config.num_labels} outputs; a reward model has 1")
    opts = task_options(spec, PreferenceOptions) if spec else PreferenceOptions()
    max_length = spec.model.max_length if spec else 512
    return RewardScorer(model, tokenizer, max_length, prompt_budget(opts, max_length))


def read_pairs(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: broken JSON ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise DataError(f"{path}:{number}: expected an object with a string 'prompt'")
        if not (
            isinstance(row.get("response"), str)
            or (isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str))
        ):
            raise DataError(f"{path}:{number}: needs 'response', or 'chosen' and 'rejected'")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def score_rows(scorer: RewardScorer, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scores for {prompt, response} rows and {prompt, chosen, rejected} rows."""
    from honed.train.tasks._preference import pairwise_metrics

    singles = [r for r in rows if "response" in r]
    pairs = [r for r in rows if "response" not in r]
    out: list[dict[str, Any]] = []
    if singles:
        scores = scorer.score([r["prompt"] for r in singles], [r["response"] for r in singles])
        out += [{**r, "score": s} for r, s in zip(singles, scores, strict=True)]
    if pairs:
        prompts = [r["prompt"] for r in pairs]
        chosen = scorer.score(prompts, [r["chosen"] for r in pairs])
        rejected = scorer.score(prompts, [r["rejected"] for r in pairs])
        out += [
            {**r, "chosen_score": c, "rejected_score": j, "correct": c > j}
            for r, c, j in zip(pairs, chosen, rejected, strict=True)
        ]
        out.append({"summary": {"pairs": len(pairs), **pairwise_metrics(chosen, rejected)}})
    return out
