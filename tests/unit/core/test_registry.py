import os

import pytest

from honed.errors import RegistryError
from honed.registry.config import RegistryConfig
from honed.registry.store import Registry, parse_ref, resolve_ref, tracking_uri


def test_default_tracking_is_sqlite_in_state_folder(_isolated_state):
    assert tracking_uri() == f"sqlite:///{_isolated_state / 'mlflow.db'}"


def test_configured_and_env_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking_uri() == "http://mlflow.internal:5000"
    cfg = RegistryConfig(tracking_uri=f"sqlite:///{tmp_path / 'other.db'}")
    assert tracking_uri(cfg).endswith("other.db")


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("fin@champion", ("fin", "champion", None)),
        ("fin/3", ("fin", None, "3")),
        ("models:/fin@challenger", ("fin", "challenger", None)),
    ],
)
def test_parse_ref(ref, expected):
    parsed = parse_ref(ref)
    assert (parsed.name, parsed.alias, parsed.version) == expected


def test_bad_refs_are_clear(tmp_path):
    with pytest.raises(RegistryError, match="not a registry reference"):
        parse_ref("what is this?")
    with pytest.raises(RegistryError, match="model folder not found"):
        resolve_ref(str(tmp_path / "no" / "such" / "folder"))


def _register_folder(tmp_path, registry: Registry, name: str = "m") -> str:
    folder = tmp_path / "run"
    folder.mkdir(exist_ok=True)
    (folder / "weights.txt").write_text("w")
    (folder / "checkpoints").mkdir(exist_ok=True)
    (folder / "checkpoints" / "big.bin").write_text("x")
    run_id, uri = registry.log_run(name, name, folder, {"a": {"b": 1}}, {"test_accuracy": 0.9}, {})
    return registry.register(name, uri, run_id, {"base_digest": "abc"}, "challenger")


def test_register_promote_resolve_round_trip(tmp_path):
    registry = Registry(RegistryConfig(tracking_uri=f"sqlite:///{tmp_path / 'r.db'}"))
    assert _register_folder(tmp_path, registry) == "1"
    assert _register_folder(tmp_path, registry) == "2"
    assert registry.promote("m", "1") == ("1", None)
    assert registry.promote("m", None) == ("2", "1")  # challenger -> champion
    champion = registry.get_version("m@champion")
    assert str(champion.version) == "2" and champion.tags["base_digest"] == "abc"
    assert champion.tags["replaced_champion"] == "1"
    folder = registry.local_folder(champion)
    assert (folder / "weights.txt").read_text() == "w"
    assert not (folder / "checkpoints").exists()  # checkpoints are not registry artifacts
    assert registry.run_metrics(champion.run_id)["test_accuracy"] == 0.9


def test_unknown_model_or_alias(tmp_path):
    registry = Registry(RegistryConfig(tracking_uri=f"sqlite:///{tmp_path / 'r.db'}"))
    with pytest.raises(RegistryError, match="not found in the registry"):
        registry.get_version("ghost@champion")
    _register_folder(tmp_path, registry)
    with pytest.raises(RegistryError, match="not found"):
        registry.get_version("m/7")


def test_registry_does_not_export_its_uri(tmp_path, monkeypatch):
    # MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI, which would then override
    # HONED_HOME for every later Registry in the process.
    Registry(RegistryConfig(tracking_uri=f"sqlite:///{tmp_path / 'r.db'}"))
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("HONED_HOME", str(tmp_path / "home"))
    assert Registry().uri == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
