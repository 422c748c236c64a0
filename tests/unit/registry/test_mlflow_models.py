"""Registered versions as stock MLflow sees them: pyfunc models, curves, inputs, moved state."""

from __future__ import annotations

import json
import shutil

import mlflow
import pandas as pd
import pytest
from tests.helpers import classification_spec_dict

from honed.cli import main
from honed.errors import RegistryError
from honed.registry.store import Registry, resolve_ref

NAME = "tiny-sentiment"
LABELS = {"negative", "neutral", "positive"}


@pytest.fixture(scope="module")
def registered_home(tmp_path_factory, tiny_bert):
    """A state folder holding one registered tiny classifier (trained once per module)."""
    from tests.helpers import write_phrasebank

    from honed.pipeline.run import train_and_evaluate
    from honed.spec import parse_spec

    root = tmp_path_factory.mktemp("registered")
    data = write_phrasebank(root / "phrases.txt", n_per_label=10)
    spec = classification_spec_dict(tiny_bert, data, root / "run", "full")
    spec["training"].update({"epochs": 1, "logging_steps": 1})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HONED_HOME", str(root / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = train_and_evaluate(parse_spec(spec))
        Registry().promote(NAME, result.version)
    shutil.rmtree(root / "run")  # the registry keeps its own copy
    return root / "home"


@pytest.fixture
def home(registered_home, tmp_path, monkeypatch):
    """A private copy of the registered state folder, set as HONED_HOME."""
    copy = tmp_path / "home"
    shutil.copytree(registered_home, copy)
    monkeypatch.setenv("HONED_HOME", str(copy))
    return copy


def _stock_mlflow_at(home, monkeypatch) -> None:
    """What a plain MLflow user does; MLflow exports the URI, which the test must not leak."""
    uri = f"sqlite:///{home / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)


def _check_predictions(frame: pd.DataFrame, n: int) -> None:
    assert list(frame.columns) == ["label", "score", "scores"] and len(frame) == n
    assert set(frame["label"]) <= LABELS
    for scores in frame["scores"]:
        assert set(scores) == LABELS and abs(sum(scores.values()) - 1) < 1e-4


def test_registered_version_loads_with_stock_pyfunc(home, monkeypatch):
    _stock_mlflow_at(home, monkeypatch)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    _check_predictions(model.predict(pd.DataFrame({"text": ["profit rose", "sales fell"]})), 2)
    _check_predictions(model.predict(["profit rose"]), 1)
    inputs = model.metadata.get_input_schema().input_types()
    assert [t.name for t in inputs] == ["string"]
    requirements = (home / "mlartifacts").rglob("requirements.txt")
    assert any("transformers==" in p.read_text() for p in requirements)


def test_run_has_curves_all_metrics_and_dataset_inputs(home):
    registry = Registry()
    run_id = registry.get_version(f"{NAME}@champion").run_id
    loss = registry.client.get_metric_history(run_id, "loss")
    assert len({point.step for point in loss}) > 1
    assert registry.client.get_metric_history(run_id, "eval_loss")
    metrics = registry.run_metrics(run_id)
    assert {"test_accuracy", "wall_seconds", "test.per_class.positive.f1"} <= metrics.keys()
    inputs = registry.client.get_run(run_id).inputs.dataset_inputs
    contexts = {tag.value for i in inputs for tag in i.tags if tag.key == "mlflow.data.context"}
    assert contexts == {"train", "validation", "test"}
    for entry in inputs:
        assert entry.dataset.name.startswith(f"{NAME}-") and entry.dataset.digest
        assert json.loads(entry.dataset.profile)["num_rows"] > 0


def test_moved_state_folder_keeps_working(home, tmp_path, monkeypatch, capsys):
    moved = tmp_path / "elsewhere" / ".honed"
    shutil.move(str(home), str(moved))
    monkeypatch.setenv("HONED_HOME", str(moved))

    folder = resolve_ref(f"{NAME}@champion")
    assert folder.is_relative_to(moved) and (folder / "lineage.json").is_file()
    assert main(["predict", f"{NAME}@champion", "profit rose", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["label"] in LABELS

    _stock_mlflow_at(moved, monkeypatch)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    _check_predictions(model.predict(["profit rose"]), 1)


def test_missing_files_are_a_clear_error(home, capsys):
    shutil.rmtree(home / "mlartifacts")
    with pytest.raises(RegistryError, match=r"files are missing.*HONED_HOME"):
        resolve_ref(f"{NAME}@champion")
    assert main(["predict", f"{NAME}@champion", "profit rose"]) == 2
    err = capsys.readouterr().err
    assert "files are missing" in err and "Traceback" not in err


def test_unknown_alias_and_dead_server_are_clear_errors(home, monkeypatch):
    with pytest.raises(RegistryError, match=r"ghost.*not found.*honed models list"):
        resolve_ref(f"{NAME}@ghost")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(RegistryError, match="unreachable"):
        resolve_ref(f"{NAME}@champion")


def test_generative_pyfunc_greedy_generates(tmp_path):
    from tests.tiny_cases.sft import save_base

    from honed.registry.pyfunc import ARTIFACT, HonedModel, signature

    folder = save_base(tmp_path / "llama")
    (folder / "lineage.json").write_text(json.dumps({"task": "sft"}))
    mlflow.pyfunc.save_model(
        str(tmp_path / "pyfunc"),
        python_model=HonedModel(),
        artifacts={ARTIFACT: str(folder)},
        signature=signature("sft"),
        pip_requirements=[],
    )
    model = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))
    out = model.predict(["what is the capital of france"], params={"max_new_tokens": 3})
    assert list(out.columns) == ["generated_text"] and isinstance(out["generated_text"][0], str)
