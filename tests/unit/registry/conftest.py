"""Tiny classifier folders for the gate and history tests: a champion, an identical copy and a
broken copy (always predicts the class the champion predicts least), each with a frozen set."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from tests.helpers import classification_spec_dict, phrasebank_lines, write_phrasebank

from honed.paths import RunPaths


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _break(folder: Path, label_index: int) -> None:
    """Make the classifier answer `label_index` whatever the text (a huge bias)."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(str(path))
    bias = next(k for k in weights if k.startswith("classifier") and k.endswith("bias"))
    weights[bias][:] = -1e4
    weights[bias][label_index] = 1e4
    save_file(weights, str(path), metadata={"format": "pt"})


@pytest.fixture(scope="session")
def gate_models(tmp_path_factory, tiny_bert) -> dict[str, Path]:
    from honed.models.predict import Predictor
    from honed.pipeline.run import train_and_evaluate
    from honed.spec import parse_spec

    root = tmp_path_factory.mktemp("gate_models")
    data = write_phrasebank(root / "phrases.txt", n_per_label=12)
    spec = classification_spec_dict(tiny_bert, data, root / "champion", "full")
    spec["registry"] = {"enabled": False}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HONED_HOME", str(root / "home"))
        champion = train_and_evaluate(parse_spec(spec)).paths.root
    predictor = Predictor.from_folder(champion)
    texts = [line.rsplit("@", 1)[0] for line in phrasebank_lines(20, seed=7)]
    predicted = [p["label"] for p in predictor.predict(texts)]
    # Labels = the champion's own answers: it scores 1.0 whatever tiny training reached.
    _write_jsonl(
        RunPaths(champion).frozen_eval,
        [{"text": t, "label": p} for t, p in zip(texts, predicted, strict=True)],
    )
    _write_jsonl(RunPaths(champion).golden, [{"text": texts[0], "label": predicted[0]}])
    same = root / "same"
    shutil.copytree(champion, same)
    broken = root / "broken"
    shutil.copytree(champion, broken)
    rare = min(predictor.labels, key=lambda label: Counter(predicted)[label])
    _break(broken, predictor.labels.index(rare))
    bare = root / "bare"  # a champion trained before frozen sets existed
    shutil.copytree(champion, bare)
    shutil.rmtree(bare / "eval")
    return {"champion": champion, "same": same, "broken": broken, "bare": bare}
