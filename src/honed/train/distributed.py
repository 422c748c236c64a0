"""Multi-process training on the stock engines: torchrun / Accelerate start the processes, the
transformers Trainer does DDP, FSDP or DeepSpeed ZeRO itself; honed only decides which process
is the main one and renders the engines' configs from the spec's ``training.distributed``.

Which process does what (``pipeline/run.py``): the main process (rank 0) prepares the data,
runs the scan, prepares the run folder and hands the prepared rows to the others; every process
trains; only the main one evaluates, writes the run folder's files and registers.

The process layout comes from the launcher's environment (``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK``, set by torchrun, ``accelerate launch`` and Kubeflow's PyTorchJob through
torchrun); without them honed is one process, the main one. Nothing here imports torch at
module level: the spec imports :class:`DistributedConfig`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from pydantic import Field, model_validator

from honed.config_base import StrictModel
from honed.errors import HonedError

T = TypeVar("T")

#: Defaults that only mean something for one strategy: setting them for another is an error.
_STRATEGY_FIELDS = {
    "zero_stage": "deepspeed",
    "fsdp_sharding": "fsdp",
}


class DistributedConfig(StrictModel):
    """The spec's ``training.distributed``: how many processes train and which engine shards
    the work between them. ``honed launch SPEC`` renders the Accelerate (and DeepSpeed)
    configs from it; ``torchrun ... -m honed run SPEC`` uses the same settings through the
    Trainer's arguments."""

    strategy: Literal["none", "ddp", "fsdp", "deepspeed"] = Field(
        "none",
        description="'none': one process. 'ddp': every process holds the whole model, "
        "gradients are averaged (torch DistributedDataParallel). 'fsdp': parameters, gradients "
        "and optimizer state sharded across processes (PyTorch FSDP 2). 'deepspeed': DeepSpeed "
        "ZeRO (stage: zero_stage; deepspeed must be installed).",
    )
    num_processes: int | None = Field(
        None,
        ge=1,
        description="Processes on this machine (`honed launch`, the rendered Accelerate "
        "config). null: one per GPU, else 2 on CPU. `--processes` overrides it.",
    )
    num_machines: int = Field(
        1, ge=1, description="Machines (nodes) taking part; >1 is set by the cluster's launcher."
    )
    zero_stage: Literal[2, 3] = Field(
        2,
        description="DeepSpeed ZeRO stage: 2 shards optimizer state and gradients, 3 also the "
        "parameters (for models that do not fit one device).",
    )
    fsdp_sharding: Literal["full_shard", "shard_grad_op"] = Field(
        "full_shard",
        description="FSDP: 'full_shard' frees gathered parameters after each forward (least "
        "memory, like ZeRO-3); 'shard_grad_op' keeps them until backward (like ZeRO-2, faster).",
    )
    offload: Literal["none", "cpu"] = Field(
        "none",
        description="FSDP / DeepSpeed: keep sharded parameters and optimizer state in CPU "
        "memory (slower, for models that do not fit on the GPUs).",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto",
        description="torch.distributed backend: 'auto' is nccl on GPUs, gloo on CPU.",
    )
    timeout_minutes: int = Field(
        30,
        ge=1,
        description="How long a process waits for the others at a synchronisation point, "
        "including while the main process prepares and scans the data.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DistributedConfig:
        for name, strategy in _STRATEGY_FIELDS.items():
            # A spec written back in full (run folders, the loop's round specs) carries the
            # defaults: only a value that differs from the default is a mistake.
            changed = getattr(self, name) != type(self).model_fields[name].default
            if name in self.model_fields_set and changed and self.strategy != strategy:
                raise ValueError(f"{name} applies to strategy '{strategy}' only")
        if self.offload != "none" and self.strategy not in ("fsdp", "deepspeed"):
            raise ValueError("offload applies to strategies 'fsdp' and 'deepspeed' only")
        if self.strategy == "none" and (self.num_processes or 1) > 1:
            raise ValueError(
                "num_processes > 1 needs a strategy: set training.distributed.strategy "
                "to 'ddp', 'fsdp' or 'deepspeed'"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.strategy != "none"


# --- where this process stands -----------------------------------------------------------


# torchrun / accelerate's GPU launchers set the first name; MPI (accelerate on CPU with
# mpirun) the others, in the order Accelerate itself reads them.
_RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_LOCAL_RANK_VARS = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK")
_WORLD_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "")
        if value:
            try:
                return int(value)
            except ValueError as err:
                msg = f"{name}={value!r} is not an integer (set by the launcher)"
                raise HonedError(msg) from err
    return default


def process_index() -> int:
    """This process's global rank (``RANK``; 0 without a launcher)."""
    return _env_int(_RANK_VARS, 0)


def local_process_index() -> int:
    """This process's rank on its machine (``LOCAL_RANK``; 0 without a launcher)."""
    return _env_int(_LOCAL_RANK_VARS, 0)


def world_size() -> int:
    """How many processes train together (``WORLD_SIZE``; 1 without a launcher)."""
    return _env_int(_WORLD_VARS, 1)


def is_main_process() -> bool:
    """True on the process that writes the run folder, evaluates and registers."""
    return process_index() == 0


def is_distributed() -> bool:
    return world_size() > 1


def default_processes(cfg: DistributedConfig) -> int:
    """``num_processes``, else one per visible GPU, else 2 on CPU."""
    if cfg.num_processes:
        return cfg.num_processes
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def _cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


# --- synchronisation ---------------------------------------------------------------------


def init_process_group(cfg: DistributedConfig) -> None:
    """Join the launcher's process group early (before the Trainer does), so that the main
    process can hand its prepared data to the others. Accelerate's PartialState reuses an
    initialised group, so the Trainer's own set-up later finds this one. No-op alone."""
    if not is_distributed():
        return
    import torch.distributed as dist

    if dist.is_initialized():
        return
    from datetime import timedelta

    from accelerate import PartialState

    PartialState(
        cpu=_cpu(),
        backend=resolve_backend(cfg),
        timeout=timedelta(minutes=cfg.timeout_minutes),
    )


def resolve_backend(cfg: DistributedConfig) -> str | None:
    """The backend name for torch.distributed (None: Accelerate's choice, nccl on GPUs)."""
    if cfg.backend != "auto":
        return cfg.backend
    return "gloo" if _cpu() else None


def share_from_main(produce: Callable[[], T]) -> T:
    """Run ``produce`` on the main process only and hand its result to every process.

    A HonedError on the main process reaches the others as the same error, so no process
    waits for data that will never come. Alone, it is just ``produce()``.
    """
    if not is_distributed():
        return produce()
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [None]
    failure: BaseException | None = None
    if is_main_process():
        try:
            box[0] = ("ok", produce())
        except HonedError as err:
            failure = err
            box[0] = ("error", str(err))
        except BaseException as err:  # still tell the others before failing
            failure = err
            box[0] = ("error", f"{type(err).__name__} on the main process: {err}")
    broadcast_object_list(box, from_process=0)
    status, value = box[0]
    if failure is not None:
        raise failure
    if status == "error":
        raise HonedError(f"the main process failed: {value}")
    return value


def wait_for_everyone() -> None:
    """A barrier across the processes (no-op alone)."""
    if not is_distributed():
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def leave_process_group() -> None:
    """Tear the process group down once training is over: the main process evaluates and
    registers alone, the others exit without a warning about a group left open.

    The Trainer's ZeRO-3 setting is process-wide in transformers (every later
    ``from_pretrained`` would partition the model through DeepSpeed): it is dropped too, so
    the main process loads the saved model folder as a plain one for evaluation."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    if not is_distributed():
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# --- the Trainer's arguments -------------------------------------------------------------


def training_arguments(cfg: DistributedConfig) -> dict[str, Any]:
    """The TrainingArguments keywords for the strategy, so that ``torchrun ... -m honed run``
    and ``accelerate launch`` train the same way."""
    if not cfg.enabled:
        return {}
    check_engine(cfg)
    kwargs: dict[str, Any] = {
        "ddp_timeout": cfg.timeout_minutes * 60,
        # Each process's loss stays its own mean and DDP averages the gradients: the classic
        # semantics, equal to one process on the global batch. With the Trainer's default,
        # models whose forward takes **kwargs but whose loss ignores num_items_in_batch
        # (every *ForSequenceClassification) got their loss multiplied by the process count.
        "average_tokens_across_devices": False,
    }
    backend = resolve_backend(cfg)
    # Alone (`honed run` on a distributed spec), a backend would make Accelerate expect a
    # process group that no launcher set up; the strategy's other settings still apply.
    if backend and is_distributed():
        kwargs["ddp_backend"] = backend
    if cfg.strategy == "fsdp":
        kwargs["fsdp"] = "full_shard auto_wrap"
        kwargs["fsdp_config"] = _fsdp_options(cfg)
    elif cfg.strategy == "deepspeed":
        kwargs["deepspeed"] = render_deepspeed_config(cfg)
    return kwargs


def check_engine(cfg: DistributedConfig) -> None:
    """Refuse, before any work, a strategy this machine's engines would not apply."""
    import importlib.util

    if cfg.strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise HonedError(
            "training.distributed.strategy 'deepspeed' needs the deepspeed package "
            "(pip install deepspeed), or choose 'fsdp' / 'ddp'"
        )
    if cfg.strategy == "fsdp" and _cpu():
        # Accelerate (1.x) turns an FSDP plugin on for GPU-type processes only; on CPU the
        # Trainer would silently wrap the model in plain DDP instead.
        raise HonedError(
            "training.distributed.strategy 'fsdp' needs GPUs: Accelerate applies FSDP to GPU "
            "processes only (on CPU it would silently train plain DDP); use 'ddp' on CPU"
        )


def _fsdp_options(cfg: DistributedConfig) -> dict[str, Any]:
    """FSDP 2 options in transformers' ``fsdp_config`` spelling (Accelerate's with the
    ``fsdp_`` prefix, see :func:`render_accelerate_config`). Full state dicts on save: the
    model folder is a plain one that loads without FSDP."""
    return {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "reshard_after_forward": cfg.fsdp_sharding == "full_shard",
        "cpu_offload": cfg.offload == "cpu",
        "state_dict_type": "FULL_STATE_DICT",
        "cpu_ram_efficient_loading": False,
    }


# --- rendered configs --------------------------------------------------------------------


def render_deepspeed_config(cfg: DistributedConfig) -> dict[str, Any]:
    """The DeepSpeed JSON for ``cfg.zero_stage``. Batch sizes, clipping and precision are
    'auto': the Trainer fills them from the spec's training section, so the two never
    disagree. No optimizer block: the Trainer's AdamW is used (with offload, DeepSpeed runs
    it on the CPU)."""
    zero: dict[str, Any] = {
        "stage": cfg.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if cfg.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if cfg.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = "auto"
        zero["stage3_param_persistence_threshold"] = "auto"
        # A whole (gathered) model on save, so the run folder loads without DeepSpeed.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if cfg.offload == "cpu":
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
        # The Trainer's AdamW with CPU offload: DeepSpeed's own CPU Adam is not required.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # the Trainer logs; DeepSpeed stays quiet
    }


_DISTRIBUTED_TYPE = {"fsdp": "FSDP", "deepspeed": "DEEPSPEED"}


def render_accelerate_config(
    cfg: DistributedConfig,
    *,
    processes: int | None = None,
    bf16: bool = False,
    cpu: bool | None = None,
    deepspeed_config_file: str = "deepspeed.json",
) -> dict[str, Any]:
    """The ``accelerate launch --config_file`` YAML (as a dict) for the strategy.

    ``processes`` overrides ``cfg.num_processes``; ``cpu`` None means: no GPU on this machine.
    For DeepSpeed, the config points at ``deepspeed_config_file`` (written by
    :func:`render_deepspeed_config`, next to it by ``honed launch``)."""
    cpu = _cpu() if cpu is None else cpu
    nproc = processes or cfg.num_processes or (2 if cpu else default_processes(cfg))
    plain = "MULTI_CPU" if cpu else "MULTI_GPU"
    kind = _DISTRIBUTED_TYPE.get(cfg.strategy, plain if nproc > 1 else "NO")
    out: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": kind,
        "num_processes": nproc * cfg.num_machines,
        "num_machines": cfg.num_machines,
        "machine_rank": 0,
        "mixed_precision": "bf16" if bf16 else "no",
        "use_cpu": cpu,
        "downcast_bf16": "no",
        "main_training_function": "main",
        "rdzv_backend": "static",
        "same_network": True,
        "debug": False,
    }
    if not cpu:
        out["gpu_ids"] = "all"
    if cfg.strategy == "fsdp":
        out["fsdp_config"] = {f"fsdp_{k}": v for k, v in _fsdp_options(cfg).items()}
        out["fsdp_config"]["fsdp_offload_params"] = out["fsdp_config"].pop("fsdp_cpu_offload")
    elif cfg.strategy == "deepspeed":
        out["deepspeed_config"] = {
            "deepspeed_config_file": deepspeed_config_file,
            "zero3_init_flag": cfg.zero_stage == 3,
        }
    return out


def launch_argv(
    spec_path: str,
    nproc: int,
    config_file: str | None = None,
    run_args: Sequence[str] = (),
    *,
    standalone: bool = False,
) -> list[str]:
    """The command that trains SPEC on ``nproc`` processes of this machine: ``torchrun``
    without a config file (in a Kubeflow PyTorchJob, torchrun reads the node count, rank and
    rendezvous from the operator's PET_* variables), else ``accelerate launch`` with the
    rendered config. ``run_args``: extra ``honed run`` flags (``--overwrite``,
    ``--output-dir``). ``standalone``: torchrun on one machine with a free port of its own
    (not for clusters, whose launcher gives the rendezvous)."""
    tail = ["-m", "honed", "run", str(spec_path), *run_args]
    if config_file is None:
        head = ["torchrun", "--standalone"] if standalone else ["torchrun"]
        return [*head, "--nproc-per-node", str(nproc), *tail]
    # The config file holds the process count (all machines together), as rendered.
    return ["accelerate", "launch", "--config_file", str(config_file), *tail]
