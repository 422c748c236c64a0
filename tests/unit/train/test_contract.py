"""One contract over every task x method pair (PEFT's shared-test idea).

Cases come from tests/tiny_cases/ (one module per task, discovered by file name; see its
``__init__``). For each pair: train two steps; every trainable parameter changed and no frozen
one did; the saved folder reloads to the same outputs; for adapters, ``honed merge`` gives a
standalone model whose outputs match the adapter model's, and whose lineage points to the base
digest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.tiny_cases import case_modules

from honed.models.adapters import AUTO_CLASSES, load_adapter_model
from honed.models.resolve import resolve_model
from honed.paths import RunPaths
from honed.registry.lineage import build_lineage
from honed.train import common
from honed.train.merge import merge_adapter
from honed.train.methods import available_methods, get_method
from honed.train.tasks import get_task

#: Greatest |output difference| accepted: fp32 paths, and paths through 4-bit bf16 kernels.
ATOL = {"qlora": 5e-2}
DEFAULT_ATOL = 1e-4


def _cases() -> list[Any]:
    params = []
    for name, module in case_modules().items():
        slow = set(getattr(module, "SLOW_METHODS", ()))
        for method in getattr(module, "METHODS", available_methods()):
            if method not in available_methods():
                continue
            marks = [pytest.mark.slow] if method in slow else []
            params.append(pytest.param(name, method, id=f"{name}-{method}", marks=marks))
    return params


def _probe(model: Any) -> dict[str, torch.Tensor]:
    """Fixed inputs any tiny case's model accepts: token ids (1, 6) below the vocab size."""
    vocab = model.config.get_text_config().vocab_size
    ids = (torch.arange(3, 15, 2) % vocab).unsqueeze(0)  # (1, 6)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(model.config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids[:, :4]
    return inputs


def _outputs(model: Any) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return model(**_probe(model)).logits.float()


def _load_standalone(folder: Path, task: Any) -> Any:
    """A saved full model; classifiers through honed's loader (it restores their pooling)."""
    if task.peft_task_type == "SEQ_CLS":
        from honed.models.heads import load_classifier

        return load_classifier(folder)
    import transformers

    return getattr(transformers, AUTO_CLASSES[task.peft_task_type]).from_pretrained(str(folder))


def _load_saved(folder: Path, task: Any, method: Any) -> Any:
    if method.is_adapter:
        return load_adapter_model(folder)
    return _load_standalone(folder, task)


def _train_with_spy(task, spec, data, base, paths, monkeypatch) -> dict[str, Any]:
    """Train through the task, capturing the model's parameters before and after."""
    seen: dict[str, Any] = {}
    original = common.train_and_save

    def spy(trainer: Any, tokenizer: Any, run_paths: RunPaths, resume: bool) -> dict:
        seen["before"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        result = original(trainer, tokenizer, run_paths, resume)
        seen["model"] = trainer.model
        return result

    monkeypatch.setattr(common, "train_and_save", spy)
    task.train(spec, data, base, paths, resume=False)
    assert "model" in seen, "the task must train through honed.train.common.train_and_save"
    return seen


def _check_parameters(seen: dict[str, Any], allowed: tuple[str, ...]) -> None:
    after = dict(seen["model"].named_parameters())
    trainable = [n for n, p in after.items() if p.requires_grad]
    assert trainable, "nothing trains"
    unchanged = [
        n
        for n in trainable
        if torch.equal(seen["before"][n], after[n].detach()) and not any(a in n for a in allowed)
    ]
    assert not unchanged, f"trainable parameters did not change: {unchanged[:5]}"
    moved = [
        n
        for n, p in after.items()
        if not p.requires_grad and not torch.equal(seen["before"][n], p.detach())
    ]
    assert not moved, f"frozen parameters changed: {moved[:5]}"


@pytest.mark.parametrize(("case", "method"), _cases())
def test_task_method_contract(case: str, method: str, tmp_path: Path, monkeypatch) -> None:
    torch.set_num_threads(1)
    module = case_modules()[case]
    spec = module.build_spec(tmp_path, method)
    task, meth = get_task(spec.task), get_method(method)
    base = resolve_model(spec.model)
    data = task.prepare_data(spec)
    paths = RunPaths(Path(spec.output_dir)).create()

    seen = _train_with_spy(task, spec, data, base, paths, monkeypatch)
    _check_parameters(seen, tuple(getattr(module, "FROZEN_OK", ())))
    paths.lineage.write_text(
        json.dumps(build_lineage(spec, base, data, meth.is_adapter), default=str)
    )

    atol = ATOL.get(method, DEFAULT_ATOL)
    trained = _outputs(seen["model"])
    reloaded_model = _load_saved(paths.model_dir, task, meth)
    reloaded = _outputs(reloaded_model)
    assert torch.allclose(trained, reloaded, atol=atol), (trained - reloaded).abs().max()
    if not meth.is_adapter:
        return

    merged_dir = merge_adapter(paths.model_dir, tmp_path / "merged")
    assert not (merged_dir / "adapter_config.json").exists()
    merged = _outputs(_load_standalone(merged_dir, task))
    assert torch.allclose(merged, reloaded, atol=atol), (merged - reloaded).abs().max()
    lineage = json.loads((merged_dir / "lineage.json").read_text())
    assert lineage["merged_from"]["base_digest"] == base.digest
    assert lineage["is_adapter"] is False
