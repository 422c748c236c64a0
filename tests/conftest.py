"""Shared fixtures. Every test runs offline with its own state folder."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import pytest

from tests.helpers import tiny_bert_folder, write_phrasebank


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    """A fresh HONED_HOME per test: registries and caches never leak between tests."""
    home = tmp_path_factory.mktemp("honed_home")
    monkeypatch.setenv("HONED_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield home


@pytest.fixture(autouse=True)
def _cli_leaves_imports_alone(monkeypatch):
    """main() hides bitsandbytes from peft for the CLI's own process; tests calling main()
    in-process must not hide it from the tests after them (tests/unit/core/test_cli.py checks
    the hiding in a subprocess)."""
    monkeypatch.setattr("honed.cli.defer_bitsandbytes", lambda: None)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A random 2-layer BERT encoder folder (safetensors) with a word-level tokenizer."""
    return tiny_bert_folder(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture
def phrasebank_file(tmp_path):
    return write_phrasebank(tmp_path / "phrases.txt")
