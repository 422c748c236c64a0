"""`honed deploy pipeline`: the loop compiled with the kfp v2 SDK, loaded back with kfp and
checked against kfp's own schemas (the PipelineSpec and Kubernetes executor protobufs, which
refuse unknown fields), then its graph: tasks, edges in loop order, images, commands, volumes."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from honed.cli import main
from honed.deploy import kfp_loop
from honed.deploy.common import DeployError
from honed.deploy.validate import validate_manifests
from honed.pipeline.loop import STEPS

kfp = pytest.importorskip("kfp")
pytest.importorskip("kfp.kubernetes")

IMAGE = "ghcr.io/honed/honed-serve:1.2.3"


def _spec_file(tmp_path: Path, **overrides) -> Path:
    doc = {
        "name": "support-router",
        "model": {"base": "prajjwal1/bert-tiny"},
        "data": {"source": "/models/data/train.jsonl"},
        "loop": {"inbox": "/models/inbox", "request_log_url": "postgresql://db/requests"},
        **overrides,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def compiled(tmp_path) -> tuple[Path, list[dict]]:
    out = tmp_path / "out" / "loop-pipeline.yaml"
    spec = _spec_file(tmp_path)
    code = main(
        ["deploy", "pipeline", str(spec), "--out", str(out), "--image", IMAGE, "--gpus", "1"]
    )
    assert code == 0
    return out, [d for d in yaml.safe_load_all(out.read_text()) if d]


def test_the_compiled_pipeline_loads_back_and_matches_kfps_schema(compiled) -> None:
    out, docs = compiled
    text = out.read_text()
    assert "&id" not in text and "*id" not in text  # no YAML anchors
    kfp_loop.validate_pipeline(text)  # protobuf ParseDict: unknown fields are refused
    loaded = kfp.components.load_component_from_file(str(out))
    assert loaded.name == "support-router-loop"
    assert set(loaded.component_spec.inputs) == {"loop_round", "server", "trigger"}
    assert docs[0]["root"]["inputDefinitions"]["parameters"]["loop_round"]["defaultValue"] == (
        "next"
    )


def test_a_pipeline_with_an_unknown_field_is_refused_by_the_schema(compiled) -> None:
    _, docs = compiled
    docs[0]["root"]["dag"]["tasks"]["train"]["retryPolicyy"] = {}
    with pytest.raises(DeployError, match="retryPolicyy"):
        kfp_loop.validate_pipeline(yaml.safe_dump_all(docs))


def test_tasks_run_honed_loop_step_in_loop_order(compiled) -> None:
    _, docs = compiled
    tasks = docs[0]["root"]["dag"]["tasks"]
    assert set(tasks) == set(STEPS)
    for before, step in pairwise(STEPS):
        assert tasks[step]["dependentTasks"] == [before]
        # the edge is a data dependency: the round number the previous step ran
        producer = tasks[step]["inputs"]["parameters"]["loop_round"]["taskOutputParameter"]
        assert producer == {"outputParameterKey": "resolved_round", "producerTask": before}
    assert "dependentTasks" not in tasks[STEPS[0]]
    first = tasks[STEPS[0]]["inputs"]["parameters"]["loop_round"]
    assert first == {"componentInputParameter": "loop_round"}
    executors = docs[0]["deploymentSpec"]["executors"]
    for step in STEPS:
        assert tasks[step]["cachingOptions"].get("enableCache", False) is False
        container = executors[f"exec-{step}"]["container"]
        assert container["image"] == IMAGE
        assert container["command"] == ["honed", "loop", "step", step, "/spec/spec.yaml"]
        assert container["args"][:2] == ["--round", "{{$.inputs.parameters['loop_round']}}"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["HONED_HOME"] == "/models/.honed"
        heavy = step in ("train", "gate")
        assert container["resources"]["resourceMemoryRequest"] == ("16Gi" if heavy else "2Gi")
        assert ("accelerator" in container["resources"]) == heavy


def test_every_task_mounts_the_state_claim_and_the_spec(compiled) -> None:
    out, docs = compiled
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for step in STEPS:
        cfg = executors[f"exec-{step}"]
        assert [(m["constant"], m["mountPath"]) for m in cfg["pvcMount"]] == [
            ("honed-models", "/models")
        ]
        assert [(c["configMapName"], c["mountPath"]) for c in cfg["configMapAsVolume"]] == [
            ("support-router-loop-spec", "/spec")
        ]
        assert cfg["securityContext"]["runAsNonRoot"] is True
    config_map = yaml.safe_load(out.with_name("loop-pipeline-spec-configmap.yaml").read_text())
    validate_manifests([config_map])
    assert config_map["metadata"]["name"] == "support-router-loop-spec"
    assert yaml.safe_load(config_map["data"]["spec.yaml"])["name"] == "support-router"


def test_the_compiled_tasks_run_the_step_cli_that_exists(compiled, capsys) -> None:
    """The command in the YAML parses with honed's own CLI (no drift between the two)."""
    from honed.cli import build_parser

    _, docs = compiled
    container = docs[0]["deploymentSpec"]["executors"]["exec-gate"]["container"]
    values = {  # what the kfp launcher puts in for the placeholders
        "loop_round": "next",
        "server": "",
        "trigger": kfp_loop.DEFAULT_TRIGGER,
        "record": "/tmp/outputs/record/data",
        "resolved_round": "/tmp/outputs/resolved_round/data",
    }

    def fill(arg: str) -> str:
        if not arg.startswith("{{"):
            return arg
        return next(v for k, v in values.items() if f"['{k}']" in arg)

    argv = container["command"][1:] + [fill(a) for a in container["args"]]
    args = build_parser().parse_args(argv)
    assert (args.loop_command, args.step, str(args.spec)) == ("step", "gate", "/spec/spec.yaml")
    assert (args.round, args.trigger["kind"]) == ("next", "pipeline")
    assert str(args.output) == "/tmp/outputs/record/data"


def test_paths_a_pod_cannot_reach_are_refused_and_nothing_is_written(tmp_path, capsys) -> None:
    spec = _spec_file(
        tmp_path,
        data={"source": "data/train.jsonl"},
        loop={"inbox": "/home/me/inbox", "request_log_url": f"sqlite:///{tmp_path}/r.db"},
    )
    out = tmp_path / "out" / "loop-pipeline.yaml"
    assert main(["deploy", "pipeline", str(spec), "--out", str(out), "--image", IMAGE]) == 2
    err = capsys.readouterr().err
    assert "cannot reach data.source data/train.jsonl; loop.inbox /home/me/inbox" in err
    assert "loop.request_log_url" in err and "claim honed-models" in err
    assert not out.parent.exists()


def test_the_image_is_pinned(tmp_path, capsys) -> None:
    out = tmp_path / "p.yaml"
    spec = _spec_file(tmp_path)
    args = ["deploy", "pipeline", str(spec), "--out", str(out), "--image", "honed:latest"]
    assert main(args) == 2
    assert "pin a version tag" in capsys.readouterr().err and not out.exists()


def test_build_pipeline_options_reach_the_tasks(tmp_path) -> None:
    spec = _spec_file(tmp_path)
    pipeline = kfp_loop.build_pipeline(
        spec, IMAGE, "loop-state", admin_key_secret="honed-admin", spec_config_map="my-spec"
    )
    out = kfp_loop.compile_pipeline(pipeline, tmp_path / "p.yaml")
    docs = kfp_loop.validate_pipeline(out.read_text())
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-train"]["pvcMount"][0]["constant"] == "loop-state"
    assert executors["exec-train"]["configMapAsVolume"][0]["configMapName"] == "my-spec"
    assert "secretAsEnv" not in executors["exec-train"]
    secret = executors["exec-canary"]["secretAsEnv"][0]
    assert secret["secretName"] == "honed-admin"
    assert secret["keyToEnv"] == [{"secretKey": "admin-key", "envVar": "HONED_ADMIN_KEY"}]
    assert json.loads(docs[0]["root"]["inputDefinitions"]["parameters"]["trigger"]["defaultValue"])
