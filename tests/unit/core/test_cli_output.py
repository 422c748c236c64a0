from pathlib import Path
from types import SimpleNamespace

from honed.paths import RunPaths
from honed.pipeline.commands import _print_result


def _result(metrics):
    return SimpleNamespace(
        paths=RunPaths(Path("runs/x")), metrics=metrics, version=None, lineage={}
    )


def test_prints_any_task_baselines(capsys):
    _print_result(_result({"test_rougeL": 0.17, "baselines": {"base_model": {"rougeL": 0.15}}}))
    _print_result(_result({"test_accuracy": 0.9, "baselines": {"majority": {"accuracy": 0.6}}}))
    _print_result(_result({"test_reward_accuracy": 0.6, "baselines": {"likelihood": 0.5625}}))
    out = capsys.readouterr().out
    assert "test_rougeL" in out and "base_model" in out and "rougeL 0.1500" in out
    assert "accuracy 0.6000" in out
    assert "likelihood" in out and "value 0.5625" in out
