"""The helpers the language-model tasks share (honed.train.tasks._shared): one behaviour for
every task where the copies used to drift (decoding length, QLoRA's CPU kernels)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from tests.tiny_cases import dpo as dpo_case
from tests.tiny_cases import reward as reward_case
from tests.tiny_cases import seq2seq as seq2seq_case
from tests.tiny_cases import sft as sft_case

from honed.models.resolve import resolve_model
from honed.paths import RunPaths
from honed.spec import RunSpec, parse_spec
from honed.train import tasks
from honed.train.methods import get_method
from honed.train.tasks import available_tasks, get_task

GENERATIVE = {
    "sft": (sft_case.build_spec, {}),
    "seq2seq": (seq2seq_case.build_spec, {"arch": "llama"}),
    "dpo": (dpo_case.build_spec, {}),
}
#: max_new_tokens of each task when the spec leaves it unset.
TASK_DEFAULT_TOKENS = {"sft": 64, "seq2seq": 96, "dpo": 48}


def _spec(name: str, tmp_path: Path, method: str = "lora", **changes: Any) -> RunSpec:
    build, kwargs = GENERATIVE[name]
    raw = build(tmp_path, method, **kwargs).model_dump(mode="json", exclude_unset=True)
    raw.update(changes)
    return parse_spec(raw)


def test_helper_modules_are_not_tasks() -> None:
    assert set(available_tasks()) == {
        "classification",
        "dpo",
        "grpo",
        "ner",
        "reward",
        "seq2seq",
        "sft",
    }


def test_no_task_module_imports_another() -> None:
    folder = Path(tasks.__file__).parent
    task_modules = {f"honed.train.tasks.{name}" for name in available_tasks()}
    for name in available_tasks():
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert not imported & task_modules, f"{name} imports {imported & task_modules}"


@pytest.mark.parametrize("name", sorted(GENERATIVE))
def test_eval_generation_max_new_tokens_is_honoured(name: str, tmp_path: Path) -> None:
    task = get_task(name)
    assert task.generation(_spec(name, tmp_path)).max_new_tokens == TASK_DEFAULT_TOKENS[name]
    given = _spec(name, tmp_path, eval={"generation": {"max_new_tokens": 7, "batch_size": 3}})
    settings = task.generation(given)
    assert (settings.max_new_tokens, settings.batch_size) == (7, 3)


def test_seq2seq_generation_options_override_eval_generation(tmp_path: Path) -> None:
    from honed.train.tasks.seq2seq import Seq2SeqOptions, _training_args

    spec = _spec(
        "seq2seq",
        tmp_path,
        eval={"generation": {"max_new_tokens": 7}},
        task_options={"generation": {"num_beams": 2}},
    )
    settings = get_task("seq2seq").generation(spec)
    assert (settings.max_new_tokens, settings.num_beams, settings.no_repeat_ngram_size) == (7, 2, 3)
    # Validation with predict_with_generate (encoder-decoder) decodes the same way.
    args = _training_args(spec, Seq2SeqOptions(), RunPaths(tmp_path / "run"), by_rouge=True)
    assert args.generation_max_length == 7
    spec = _spec(
        "seq2seq",
        tmp_path,
        eval={"generation": {"max_new_tokens": 7}},
        task_options={"generation": {"max_new_tokens": 5}},
    )
    assert get_task("seq2seq").generation(spec).max_new_tokens == 5  # the task's own, set


# ------------------------------------------------------------------------ QLoRA CPU repack


@pytest.fixture
def repacking_cpu(monkeypatch) -> None:
    """Make every new Linear4bit believe the CPU has AVX512-bf16, so that it would repack its
    weights at the first eval-mode forward (the kernel without backward)."""
    bnb_modules = pytest.importorskip("bitsandbytes.nn.modules")
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)


def _linear4bit_flags(model: Any) -> list[bool]:
    import bitsandbytes as bnb

    return [
        m.support_avx512bf16_for_cpu for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)
    ]


def _save_fresh_adapter(model: Any, spec: RunSpec, peft_task_type: str, folder: Path) -> None:
    """An untrained QLoRA adapter saved as a run would (no training needed to test loading)."""
    get_method("qlora").prepare(model, spec.method, peft_task_type).save_pretrained(str(folder))


@pytest.mark.usefixtures("repacking_cpu")
@pytest.mark.parametrize("name", sorted(GENERATIVE))
def test_qlora_model_loads_without_cpu_repack_in_every_generative_task(
    name: str, tmp_path: Path
) -> None:
    from honed.train.tasks._shared import base_view, load_base

    spec = _spec(name, tmp_path, method="qlora")
    task, base = get_task(name), resolve_model(spec.model)
    paths = RunPaths(tmp_path / "run").create()
    untouched = load_base(spec, base)  # through the shared loader
    assert _linear4bit_flags(untouched) and not any(_linear4bit_flags(untouched))
    _save_fresh_adapter(untouched, spec, "CAUSAL_LM", paths.model_dir)
    tuned = task.load_trained(spec, base, paths)  # what the task's evaluation loads
    flags = _linear4bit_flags(tuned)
    assert flags and not any(flags)
    with base_view(spec, base, tuned) as base_model:
        assert not any(_linear4bit_flags(base_model))


@pytest.mark.usefixtures("repacking_cpu")
def test_qlora_reward_model_loads_without_cpu_repack(tmp_path: Path) -> None:
    from honed.models.resolve import load_kwargs
    from honed.train.score import load_reward_model
    from honed.train.tasks._shared import load_tokenizer
    from honed.train.tasks.reward import load_reward_base

    spec = reward_case.build_spec(tmp_path, "qlora")
    base = resolve_model(spec.model)
    paths = RunPaths(tmp_path / "run").create()
    tokenizer = load_tokenizer(base.path)
    kwargs = {**load_kwargs(spec.model), **get_method("qlora").load_kwargs(spec.method)}
    _save_fresh_adapter(load_reward_base(base.path, tokenizer, kwargs), spec, "SEQ_CLS", paths.root)
    tokenizer.save_pretrained(str(paths.root))
    scorer = load_reward_model(paths.model_dir, base_path=base.path, spec=spec)
    flags = _linear4bit_flags(scorer.model)
    assert flags and not any(flags)
