"""Pieces every task's training loop shares: seeds and threads, TrainingArguments from the
spec, checkpoint resume, and saving the best model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from honed.errors import HonedError
from honed.paths import RunPaths
from honed.train.config import TrainingConfig


def setup_runtime(cfg: TrainingConfig) -> None:
    """Fixed seeds (python, numpy, torch) and the CPU thread count."""
    import torch
    from transformers import set_seed

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    set_seed(cfg.seed)


def use_bf16(cfg: TrainingConfig) -> bool:
    import torch

    if cfg.bf16 == "off":
        return False
    if cfg.bf16 == "on":
        return True
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def training_arguments_kwargs(cfg: TrainingConfig, paths: RunPaths) -> dict[str, Any]:
    """Keyword arguments shared by TrainingArguments and TRL's configs (which subclass it)."""
    import torch

    from honed.train.distributed import training_arguments

    return {
        **training_arguments(cfg.distributed),
        "output_dir": str(paths.checkpoints),
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "learning_rate": cfg.learning_rate,
        "per_device_train_batch_size": cfg.batch_size,
        "per_device_eval_batch_size": cfg.eval_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "weight_decay": cfg.weight_decay,
        # transformers 5: a float in [0, 1) is a fraction of the total steps (warmup_ratio is gone).
        "warmup_steps": cfg.warmup_fraction,
        "lr_scheduler_type": cfg.lr_scheduler,
        "label_smoothing_factor": cfg.label_smoothing,
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "logging_strategy": "steps",
        "logging_steps": cfg.logging_steps,
        "load_best_model_at_end": True,
        "metric_for_best_model": cfg.metric_for_best_model,
        "greater_is_better": cfg.greater_is_better,
        "save_total_limit": cfg.save_total_limit,
        "train_sampling_strategy": "group_by_length" if cfg.group_by_length else "random",
        "seed": cfg.seed,
        "bf16": use_bf16(cfg),
        "use_cpu": not torch.cuda.is_available(),
        "report_to": "none",  # honed logs to MLflow itself, with lineage
        "save_only_model": False,  # optimizer state is needed to resume
        "dataloader_num_workers": 0,
    }


def callbacks(cfg: TrainingConfig) -> list[Any]:
    from transformers import EarlyStoppingCallback

    if cfg.early_stopping_patience is None:
        return []
    return [EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)]


def resume_checkpoint(paths: RunPaths, resume: bool) -> str | None:
    """The last checkpoint to resume from; a clear error when --resume finds none."""
    if not resume:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(paths.checkpoints)) if paths.checkpoints.is_dir() else None
    if last is None:
        raise HonedError(f"--resume: no checkpoint under {paths.checkpoints} to continue from")
    return last


def train_and_save(trainer: Any, tokenizer: Any, paths: RunPaths, resume: bool) -> dict[str, Any]:
    """Run the trainer (resuming if asked), save the best model + tokenizer, return metrics."""
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(paths, resume))
    # Every process takes part in saving (FSDP / ZeRO-3 gather the shards); the Trainer
    # writes on the main process only, and so does the tokenizer below.
    trainer.save_model(str(paths.model_dir))
    if trainer.args.should_save:
        tokenizer.save_pretrained(str(paths.model_dir))
        # training_args.bin is a pickle; the run folder keeps spec.yaml instead, so that
        # nothing in a model folder needs pickle to load.
        (paths.model_dir / "training_args.bin").unlink(missing_ok=True)
    metrics = dict(result.metrics)
    state = trainer.state
    metrics["best_checkpoint"] = (
        Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None
    )
    metrics["best_validation_metric"] = state.best_metric
    metrics["epochs_completed"] = state.epoch
    metrics["log_history"] = state.log_history
    return metrics


def name_adapter_base(folder: Path, base_model: dict[str, Any]) -> None:
    """Point a saved adapter's ``base_model_name_or_path`` at a name that means something off
    this machine: the base's Hub id when known, else the spec's base if it is no local path,
    else the base folder's name. peft writes the absolute local path it loaded; honed finds
    the base through lineage.json, and stock ``PeftModel.from_pretrained(base, folder)`` takes
    the base it is given."""
    cfg_path = folder / "adapter_config.json"
    if not cfg_path.is_file():
        return
    source = str(base_model.get("source") or "")
    local = base_model.get("kind") == "local" or source.startswith("packaged:")
    name = base_model.get("hub_id") or (Path(source).name if local else source)
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = name or None
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
