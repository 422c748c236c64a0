"""`honed merge`: CLI, refusals with clear messages, lineage of the merged folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.tiny_cases.sft import build_spec

from honed.cli import main
from honed.models.resolve import resolve_model
from honed.paths import RunPaths
from honed.registry.lineage import build_lineage
from honed.train.merge import MergeError, merge_adapter
from honed.train.tasks import get_task


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory) -> tuple[Path, str]:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("merge")
    spec = build_spec(tmp, "lora")
    task, base = get_task("sft"), resolve_model(spec.model)
    data = task.prepare_data(spec)
    paths = RunPaths(Path(spec.output_dir)).create()
    task.train(spec, data, base, paths, resume=False)
    paths.lineage.write_text(json.dumps(build_lineage(spec, base, data, True), default=str))
    return paths.root, base.digest


def test_cli_merge_writes_standalone_model(adapter_run, tmp_path: Path, capsys) -> None:
    folder, digest = adapter_run
    out = tmp_path / "merged"
    assert main(["merge", str(folder), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    lineage = json.loads((out / "lineage.json").read_text())
    # Recorded relative to the merged folder: no absolute local path in an artifact.
    assert (out / lineage["merged_from"]["adapter"]).resolve() == folder.resolve()
    assert lineage["base_model"]["digest"] == digest
    # A second merge into the same folder needs --force.
    assert main(["merge", str(folder), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["merge", str(folder), "--out", str(out), "--force"]) == 0


def test_not_an_adapter_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MergeError, match="not an adapter folder"):
        merge_adapter(tmp_path, tmp_path / "out")


def test_changed_base_is_refused(adapter_run, tmp_path: Path) -> None:
    folder, _ = adapter_run
    copy = tmp_path / "adapter"
    copy.mkdir()
    for item in folder.iterdir():
        if item.is_file():
            (copy / item.name).write_bytes(item.read_bytes())
    lineage = json.loads((copy / "lineage.json").read_text())
    name = next(iter(lineage["base_model"]["weight_sha256"]))
    lineage["base_model"]["weight_sha256"][name] = "0" * 64
    (copy / "lineage.json").write_text(json.dumps(lineage))
    with pytest.raises(MergeError, match="base weights differ"):
        merge_adapter(copy, tmp_path / "out")
