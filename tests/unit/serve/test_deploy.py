"""Rendered Kubernetes manifests, endpoint configs, offline push, CLI wiring."""

from __future__ import annotations

import json

import pytest
import yaml

from honed.cli import main
from honed.serve.deploy import DeployError, DeployOptions, endpoint_config, k8s_name, push


def test_k8s_render_kinds_and_probes(tiny, tmp_path, capsys):
    out = tmp_path / "k8s"
    assert (
        main(
            [
                "deploy",
                "k8s",
                str(tiny["base"]),
                "--out",
                str(out),
                "--name",
                "fin",
                "--gpus",
                "1",
                "--max-replicas",
                "3",
            ]
        )
        == 0
    )
    docs = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    dep = by_kind["Deployment"]
    assert dep["apiVersion"] == "apps/v1"
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
    c = pod["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["args"] == ["serve", str(tiny["base"])]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {v["name"] for v in pod["spec"]["volumes"]} == {"models"}  # weights mounted
    svc = by_kind["Service"]
    assert svc["spec"]["selector"] == pod["metadata"]["labels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    hpa = by_kind["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "fin" and hpa["spec"]["maxReplicas"] == 3


def test_k8s_with_keys_probes_with_a_key():
    dep = __import__("honed.serve.deploy", fromlist=["k8s_manifests"]).k8s_manifests(
        DeployOptions(model_ref="fin@champion", name="fin", keys_secret="honed-keys")
    )[0]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert "exec" in c["readinessProbe"] and "HONED_PROBE_KEY" in str(c["readinessProbe"])
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"  # stays open
    assert any(v["name"] == "keys" for v in dep["spec"]["template"]["spec"]["volumes"])


def test_k8s_unknown_model_fails_fast(tmp_path, capsys):
    assert main(["deploy", "k8s", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err


def test_names():
    assert k8s_name("financial-sentiment@champion") == "financial-sentiment-champion"
    with pytest.raises(DeployError):
        k8s_name("@@@")


@pytest.mark.parametrize("target", ["hf", "sagemaker"])
def test_endpoint_configs(tiny, tmp_path, target):
    out = tmp_path / f"{target}.json"
    assert (
        main(["deploy", "endpoint", str(tiny["base"]), "--target", target, "--out", str(out)]) == 0
    )
    cfg = json.loads(out.read_text())
    if target == "hf":
        image = cfg["model"]["image"]["custom"]
        assert image["health_route"] == "/healthz" and image["port"] == 8000
    else:
        assert cfg["Endpoint"]["EndpointConfigName"] == cfg["EndpointConfig"]["EndpointConfigName"]
    with pytest.raises(DeployError, match="unknown target"):
        endpoint_config("azure", "x", "x", None, "img", None)


def test_push_offline_fails_at_once(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DeployError, match="HF_HUB_OFFLINE"):
        push(tmp_path, "me/model")
    assert main(["push", "unknown@champion", "--repo", "me/model"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_apikey_cli(tmp_path, capsys):
    keys = tmp_path / "keys.yaml"
    assert main(["apikey", "create", "ci", "--scopes", "infer,admin", "--file", str(keys)]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("hk-") and key not in keys.read_text()
    assert main(["apikey", "create", "x", "--scopes", "root", "--file", str(keys)]) == 2


def test_serve_cli_builds_settings(tiny, tmp_path, monkeypatch):
    import uvicorn

    seen = {}

    def fake_run(app, host, port, **kw):
        seen.update(settings=app.state.settings, host=host, port=port)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setenv("HONED_SERVE_MAX_QUEUE", "7")
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("serve:\n  max_batch_size: 3\n  port: 9100\n")
    a = tiny["adapters"]
    argv = [
        "serve",
        str(tiny["base"]),
        "--adapter",
        f"x={a[0]}",
        "--config",
        str(cfg),
        "--port",
        "9200",
        "--max-wait-ms",
        "1",
    ]
    assert main(argv) == 0
    s = seen["settings"]
    assert s.models == [str(tiny["base"]), f"x={a[0]}"]
    assert (s.max_batch_size, s.max_queue, s.max_wait_ms, seen["port"]) == (3, 7, 1.0, 9200)
    assert main(["serve", str(tmp_path / "missing")]) == 2


def test_sagemaker_ping_and_invocations(tiny):
    from tests.unit.serve._serve_support import chat_body, run_app, settings_for

    async def go(c, app):
        assert (await c.get("/ping")).status_code == 200
        r = await c.post("/invocations", json=chat_body("a0", max_tokens=3))
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"
        r = await c.post("/invocations", json={"model": "base", "prompt": "hi", "max_tokens": 2})
        assert r.json()["object"] == "text_completion"
        r = await c.post("/invocations", json={"model": "sent", "input": ["a", "b"]})
        assert len(r.json()["data"]) == 2
        r = await c.post("/invocations", json={"model": "sent"})
        assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
        r = await c.post("/invocations", json={"model": "sent", "input": []})
        assert r.status_code == 400

    run_app(settings_for(tiny, sagemaker=True), go)

    async def off(c, app):
        assert (await c.get("/ping")).status_code == 404

    run_app(settings_for(tiny), off)
