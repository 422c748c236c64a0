"""Settings precedence (flags > env > YAML serve: section > defaults) and clear errors."""

from __future__ import annotations

import pytest

from honed.serve.settings import ServeConfigError, ServeSettings


def test_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("serve:\n  port: 9001\n  max_batch_size: 4\n  models: [a, b]\n")
    s = ServeSettings.load(cfg)
    assert (s.port, s.max_batch_size, s.models) == (9001, 4, ["a", "b"])
    monkeypatch.setenv("HONED_SERVE_PORT", "9002")
    assert ServeSettings.load(cfg).port == 9002
    assert ServeSettings.load(cfg, port=9003, host=None).port == 9003
    monkeypatch.setenv("HONED_SERVE_MODELS", '["x"]')
    assert ServeSettings.load(cfg).models == ["x"]


def test_errors_name_the_field(tmp_path):
    with pytest.raises(ServeConfigError, match="max_batch_size"):
        ServeSettings.load(max_batch_size=0)
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("serve:\n  prot: 1\n")
    with pytest.raises(ServeConfigError, match="prot"):
        ServeSettings.load(cfg)
    with pytest.raises(ServeConfigError, match="not found"):
        ServeSettings.load(tmp_path / "missing.yaml")
