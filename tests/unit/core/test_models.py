import shutil

import pytest

from honed.errors import ModelError
from honed.models.config import ModelConfig
from honed.models.resolve import load_kwargs, resolve_model


def test_local_folder_resolves_with_digests(tiny_bert):
    resolved = resolve_model(ModelConfig(base=str(tiny_bert)))
    assert resolved.kind == "local"
    assert list(resolved.weight_sha256) == ["model.safetensors"]
    assert len(resolved.digest) == 64
    assert resolve_model(ModelConfig(base=str(tiny_bert))).digest == resolved.digest


def test_packaged_minilm():
    resolved = resolve_model(ModelConfig(base="packaged:all-minilm-l6-v2"))
    assert resolved.kind == "packaged"
    assert (resolved.path / "model.safetensors").is_file()


def test_unknown_packaged_name():
    with pytest.raises(ModelError, match="unknown packaged model 'nope'; known: all-minilm"):
        resolve_model(ModelConfig(base="packaged:nope"))


def test_pickle_only_model_refused_unless_opted_in(tiny_bert, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_bert, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"only pickle weights found.*allow_pickle"):
        resolve_model(ModelConfig(base=str(folder)))
    resolved = resolve_model(ModelConfig(base=str(folder), allow_pickle=True))
    assert "pytorch_model.bin" in resolved.weight_sha256


def test_folder_without_weights_or_config(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no model weights"):
        resolve_model(ModelConfig(base=str(tmp_path)))
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model(ModelConfig(base=str(tmp_path / "..")))


def test_missing_local_path():
    with pytest.raises(ModelError, match="folder not found"):
        resolve_model(ModelConfig(base="./does/not/exist"))


def test_hub_id_offline_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(timeout: float = 1.0) -> bool:
        raise AssertionError("offline: the hub must not even be probed")

    monkeypatch.setattr("honed.models.resolve.hub_reachable", no_network)
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set"):
        resolve_model(ModelConfig(base="someorg/some-model-that-is-not-cached"))


def test_hub_id_unreachable_fails_within_a_second(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("honed.models.resolve.hub_reachable", lambda timeout=1.0: False)
    with pytest.raises(ModelError, match="cannot be reached"):
        resolve_model(ModelConfig(base="someorg/another-model"))


def test_load_kwargs_are_safe_by_default():
    assert load_kwargs(ModelConfig(base="x")) == {
        "trust_remote_code": False,
        "use_safetensors": True,
    }
    opted = load_kwargs(ModelConfig(base="x", trust_remote_code=True, allow_pickle=True))
    assert opted == {"trust_remote_code": True, "use_safetensors": False}
