"""End to end: the real `honed` CLI on a tiny spec, checking the files and registry it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.helpers import classification_spec_dict

HONED = str(Path(sys.executable).parent / "honed")


def honed(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [HONED, *args], cwd=cwd, capture_output=True, text=True, env=os.environ.copy(), timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"honed {' '.join(args)} -> {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture
def spec_file(tmp_path, tiny_bert, phrasebank_file):
    def make(method: str = "full", **overrides) -> Path:
        data = classification_spec_dict(
            tiny_bert, phrasebank_file, tmp_path / f"run-{method}", method
        )
        data.update(overrides)
        path = tmp_path / f"{method}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return make


def assert_no_unasked_warnings(stderr: str) -> None:
    """Nothing the user did not ask for: no deprecation notes about settings they never set,
    no bitsandbytes 'kernels' notice when QLoRA is not used."""
    noise = [line for line in stderr.splitlines() if "Warning" in line or "kernels" in line]
    assert not noise, noise


@pytest.mark.parametrize("method", ["full", "lora"])
def test_run_writes_model_folder_and_registers(spec_file, tmp_path, method):
    spec = spec_file(method)
    proc = honed("run", str(spec), cwd=tmp_path)
    assert_no_unasked_warnings(proc.stderr)
    assert "registered: tiny-sentiment version 1" in proc.stdout
    run = tmp_path / f"run-{method}"
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    for name in (weights, "tokenizer.json", "README.md", "metrics.json", "data_report.json",
                 "lineage.json", "spec.yaml", "confusion_matrix.png",
                 "reference_profile/profile.json"):  # fmt: skip
        assert (run / name).is_file(), name
    assert not (run / "training_args.bin").exists()  # no pickle in a model folder
    assert (run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = json.loads((run / "metrics.json").read_text())
    assert {"test_accuracy", "test_macro_f1", "test_weighted_f1"} <= metrics.keys()
    assert set(metrics["baselines"]) == {"majority", "embeddings_logreg"}
    assert set(metrics["test"]["per_class"]) == {"negative", "neutral", "positive"}
    assert len(metrics["test"]["confusion_matrix"]) == 3

    lineage = json.loads((run / "lineage.json").read_text())
    assert len(lineage["base_model"]["digest"]) == 64
    assert lineage["data"]["source_sha256"] and lineage["packages"]["transformers"]
    card = (run / "README.md").read_text()
    assert "| **fine-tuned** |" in card and "baseline: majority" in card

    shown = json.loads(honed("models", "show", "tiny-sentiment@challenger", cwd=tmp_path).stdout)
    assert shown["tags"]["base_digest"] == lineage["base_model"]["digest"]
    assert shown["tags"]["method"] == method
    assert "test_accuracy" in shown["metrics"]

    promoted = honed("models", "promote", "tiny-sentiment", cwd=tmp_path).stdout
    assert "tiny-sentiment@champion -> v1" in promoted
    listing = honed("models", "list", cwd=tmp_path).stdout
    assert "tiny-sentiment" in listing and "champion" in listing

    out = honed("predict", "tiny-sentiment@champion", "profit rose", "--json", cwd=tmp_path).stdout
    row = json.loads(out.splitlines()[0])
    assert row["label"] in {"negative", "neutral", "positive"}
    assert abs(sum(row["scores"].values()) - 1) < 1e-4


def test_finished_run_is_not_clobbered_and_resume_continues(spec_file, tmp_path):
    spec = spec_file("full", registry={"enabled": False})
    honed("run", str(spec), cwd=tmp_path)
    again = honed("run", str(spec), cwd=tmp_path, check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    resumed = honed("train", str(spec), "--resume", cwd=tmp_path)
    assert "run folder" in resumed.stdout
    history = json.loads((tmp_path / "run-full" / "log_history.json").read_text())
    assert history[-1]["step"] == 16  # continued from the last checkpoint, no new steps


def test_resume_without_checkpoint_is_a_clear_error(spec_file, tmp_path):
    proc = honed("run", str(spec_file("full")), "--resume", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "no checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_gate_failure_saves_but_does_not_register(spec_file, tmp_path):
    spec = spec_file("full", eval={"min_metrics": {"accuracy": 0.999}})
    proc = honed("run", str(spec), cwd=tmp_path, check=False)
    assert proc.returncode == 3 and "gate failed" in proc.stdout
    assert (tmp_path / "run-full" / "metrics.json").is_file()
    assert "no registered models" in honed("models", "list", cwd=tmp_path).stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nmodel: [\n", "broken YAML"),
        ("name: x\nmodel: {base: m}\ndata: {source: d}\nbogus: 1\n", "bogus: unknown field"),
    ],
)
def test_bad_spec_gives_message_not_traceback(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = honed("validate", str(path), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_missing_data_file_is_named(spec_file, tmp_path):
    spec = yaml.safe_load(spec_file("full").read_text())
    spec["data"]["source"] = str(tmp_path / "missing.txt")
    path = tmp_path / "missing.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = honed("run", str(path), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "missing.txt: data file not found" in proc.stderr


def test_help_is_fast_and_lists_commands(tmp_path):
    proc = honed("--help", cwd=tmp_path)
    for command in ("run", "predict", "models", "validate"):
        assert command in proc.stdout
