"""training.distributed: validation, where a process stands, the launch command and the
rendered Accelerate / DeepSpeed configs, loaded back with the engines' own config classes."""

from __future__ import annotations

import json

import pytest
import yaml
from pydantic import ValidationError
from tests.helpers import classification_spec_dict

from honed.cli import main
from honed.errors import HonedError
from honed.train.distributed import (
    DistributedConfig,
    is_main_process,
    launch_argv,
    process_index,
    render_accelerate_config,
    render_deepspeed_config,
    share_from_main,
    training_arguments,
    world_size,
)

# --- the config ---------------------------------------------------------------------------


def test_defaults_train_on_one_process():
    cfg = DistributedConfig()
    assert (cfg.strategy, cfg.zero_stage, cfg.num_processes, cfg.enabled) == (
        "none",
        2,
        None,
        False,
    )
    assert training_arguments(cfg) == {}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"strategy": "ddp", "zero_stage": 3}, "zero_stage applies to strategy 'deepspeed'"),
        ({"strategy": "deepspeed", "fsdp_sharding": "shard_grad_op"}, "strategy 'fsdp'"),
        ({"strategy": "ddp", "offload": "cpu"}, "offload applies"),
        ({"num_processes": 2}, "num_processes > 1 needs a strategy"),
        ({"strategy": "ddp", "num_processes": 0}, "greater than or equal to 1"),
        ({"strategy": "zero"}, "'none', 'ddp', 'fsdp' or 'deepspeed'"),
        ({"strategy": "deepspeed", "zero_stage": 1}, "2 or 3"),
        ({"stratgy": "ddp"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_settings_are_refused_by_name(fields, message):
    with pytest.raises(ValidationError, match=message):
        DistributedConfig(**fields)


def test_the_spec_carries_it(tiny_bert, phrasebank_file, tmp_path):
    from honed.spec import RunSpec

    body = classification_spec_dict(tiny_bert, phrasebank_file, tmp_path / "run")
    body["training"]["distributed"] = {"strategy": "deepspeed", "zero_stage": 3}
    spec = RunSpec.model_validate(body)
    assert spec.training.distributed.zero_stage == 3
    body["training"]["distributed"] = {"strategy": "ddp", "zero_stage": 3}
    with pytest.raises(ValidationError, match=r"training\.distributed"):
        RunSpec.model_validate(body)


# --- where this process stands -------------------------------------------------------------


def test_one_process_without_a_launcher(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (is_main_process(), process_index(), world_size()) == (True, 0, 1)
    assert share_from_main(lambda: 7) == 7


@pytest.mark.parametrize(
    ("env", "main_process", "rank", "size"),
    [
        ({"RANK": "1", "WORLD_SIZE": "2"}, False, 1, 2),
        ({"RANK": "0", "WORLD_SIZE": "4"}, True, 0, 4),
        ({"PMI_RANK": "3", "PMI_SIZE": "4"}, False, 3, 4),  # accelerate + mpirun on CPU
    ],
)
def test_rank_from_the_launchers_environment(monkeypatch, env, main_process, rank, size):
    for name in ("RANK", "WORLD_SIZE", "PMI_RANK", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert (is_main_process(), process_index(), world_size()) == (main_process, rank, size)


def test_a_garbled_rank_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(HonedError, match="RANK='zero' is not an integer"):
        process_index()


# --- the launch command -------------------------------------------------------------------


def test_launch_argv():
    assert launch_argv("spec.yaml", 2, None) == [
        "torchrun", "--nproc-per-node", "2", "-m", "honed", "run", "spec.yaml",
    ]  # fmt: skip
    assert launch_argv("s.yaml", 4, None, ["--overwrite"], standalone=True)[:2] == [
        "torchrun",
        "--standalone",
    ]
    assert launch_argv("s.yaml", 8, "/cfg/accelerate.yaml", ["--overwrite"]) == [
        "accelerate", "launch", "--config_file", "/cfg/accelerate.yaml",
        "-m", "honed", "run", "s.yaml", "--overwrite",
    ]  # fmt: skip


# --- rendered configs, read back by the engines ----------------------------------------------


def _load_accelerate(cfg: dict, tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig

    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return ClusterConfig.from_yaml_file(str(path))  # refuses unknown keys


@pytest.mark.parametrize(
    ("strategy", "cpu", "kind"),
    [("ddp", True, "MULTI_CPU"), ("ddp", False, "MULTI_GPU"), ("fsdp", False, "FSDP")],
)
def test_accelerate_config_loads_with_accelerate(tmp_path, strategy, cpu, kind):
    from accelerate.utils import DistributedType

    rendered = render_accelerate_config(DistributedConfig(strategy=strategy), processes=4, cpu=cpu)
    loaded = _load_accelerate(rendered, tmp_path)
    assert loaded.distributed_type == DistributedType(kind)
    assert (loaded.num_processes, loaded.use_cpu, loaded.mixed_precision) == (4, cpu, "no")


def test_fsdp_on_cpu_is_refused_not_silently_ddp(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(HonedError, match="'fsdp' needs GPUs"):
        training_arguments(DistributedConfig(strategy="fsdp"))


def test_fsdp_settings_reach_both_accelerate_and_the_trainer(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    monkeypatch.setattr("honed.train.distributed._cpu", lambda: False)  # as on a GPU machine

    cfg = DistributedConfig(strategy="fsdp", fsdp_sharding="shard_grad_op", offload="cpu")
    fsdp = _load_accelerate(render_accelerate_config(cfg, cpu=False), tmp_path).fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_reshard_after_forward"] is False
    assert fsdp["fsdp_offload_params"] is True
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **training_arguments(cfg))
    plugin = args.fsdp_plugin_args
    assert (plugin["fsdp_version"], plugin["reshard_after_forward"], plugin["cpu_offload"]) == (
        2,
        False,
        True,
    )
    assert args.average_tokens_across_devices is False
    assert args.ddp_backend is None  # alone: no process group to join


def test_backend_under_a_launcher(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert training_arguments(DistributedConfig(strategy="ddp"))["ddp_backend"] == "gloo"
    assert training_arguments(DistributedConfig(strategy="ddp", backend="nccl"))["ddp_backend"] == (
        "nccl"
    )


@pytest.mark.parametrize(("stage", "offload"), [(2, "none"), (2, "cpu"), (3, "none"), (3, "cpu")])
def test_deepspeed_json_parses_with_deepspeed(tmp_path, tiny_bert, stage, offload):
    """The JSON's 'auto' values filled the way the Trainer fills them, then DeepSpeed's own
    config parser (pydantic models of every block) reads it."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import AutoModel, TrainingArguments

    model = AutoModel.from_pretrained(str(tiny_bert))  # before ZeRO-3 arguments exist
    cfg = DistributedConfig(strategy="deepspeed", zero_stage=stage, offload=offload)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        **training_arguments(cfg),
    )
    hf = args.hf_deepspeed_config
    hf.trainer_config_finalize(args, model, 10)
    parsed = DeepSpeedConfig(hf.config)
    assert parsed.zero_optimization_stage == stage
    assert parsed.train_micro_batch_size_per_gpu == 4
    assert parsed.gradient_accumulation_steps == 2
    offloaded = parsed.zero_config.offload_optimizer
    assert (offloaded is not None and offloaded.device == "cpu") == (offload == "cpu")
    if stage == 3:
        assert parsed.zero_config.gather_16bit_weights_on_model_save is True


def test_deepspeed_config_in_the_accelerate_config(tmp_path):
    cfg = DistributedConfig(strategy="deepspeed", zero_stage=3)
    rendered = render_accelerate_config(cfg, cpu=False, deepspeed_config_file="/c/ds.json")
    loaded = _load_accelerate(rendered, tmp_path)
    assert loaded.deepspeed_config == {
        "deepspeed_config_file": "/c/ds.json",
        "zero3_init_flag": True,
    }
    assert render_deepspeed_config(cfg)["zero_optimization"]["stage"] == 3


# --- honed launch ---------------------------------------------------------------------------


def _spec_file(tmp_path, tiny_bert, phrasebank_file, distributed: dict):
    body = classification_spec_dict(tiny_bert, phrasebank_file, tmp_path / "run")
    body["training"]["distributed"] = distributed
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_launch_render_only_writes_configs_and_prints_the_command(
    tmp_path, tiny_bert, phrasebank_file, capsys
):
    spec = _spec_file(tmp_path, tiny_bert, phrasebank_file, {"strategy": "deepspeed"})
    out = tmp_path / "launch"
    argv = ["launch", str(spec), "--processes", "3", "--launcher", "accelerate"]
    assert main([*argv, "--render-only", "--out", str(out), "--overwrite"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith(f"accelerate launch --config_file {out}/accelerate.yaml -m honed")
    assert printed.endswith(f"run {spec} --overwrite")
    accel = yaml.safe_load((out / "accelerate.yaml").read_text())
    assert accel["num_processes"] == 3 and accel["distributed_type"] == "DEEPSPEED"
    ds = json.loads((out / "deepspeed.json").read_text())
    assert accel["deepspeed_config"]["deepspeed_config_file"] == str(out / "deepspeed.json")
    assert ds["zero_optimization"]["stage"] == 2


def test_launch_picks_torchrun_on_cpu(tmp_path, tiny_bert, phrasebank_file, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    spec = _spec_file(tmp_path, tiny_bert, phrasebank_file, {"strategy": "ddp"})
    assert main(["launch", str(spec), "--render-only", "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == f"torchrun --standalone --nproc-per-node 2 -m honed run {spec}"


@pytest.mark.parametrize(
    ("distributed", "extra", "message"),
    [
        ({}, [], "strategy is 'none'"),
        ({"strategy": "ddp"}, ["--render-only"], "--render-only needs --out"),
        ({"strategy": "ddp"}, ["--processes", "0"], "--processes must be at least 1"),
    ],
)
def test_launch_refuses_clearly(
    tmp_path, tiny_bert, phrasebank_file, capsys, distributed, extra, message
):
    spec = _spec_file(tmp_path, tiny_bert, phrasebank_file, distributed)
    assert main(["launch", str(spec), *extra]) == 2
    assert message in capsys.readouterr().err


def test_python_dash_m_honed_runs_the_cli():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "honed", "launch", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--render-only" in proc.stdout


def test_a_spec_written_back_in_full_loads_again():
    """Run folders and the loop's round specs dump every field, defaults included."""
    for cfg in (DistributedConfig(), DistributedConfig(strategy="ddp", num_processes=2)):
        assert DistributedConfig.model_validate(cfg.model_dump()) == cfg
