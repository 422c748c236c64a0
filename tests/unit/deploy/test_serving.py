"""Rendered Kubernetes manifests, endpoint configs, offline push, CLI wiring."""

from __future__ import annotations

import json
import re
import tarfile

import pytest
import yaml

from honed.cli import main
from honed.deploy.common import DeployError, k8s_name
from honed.deploy.serving import DeployOptions, EndpointSource, endpoint_config, push


def test_k8s_render_kinds_and_probes(tmp_path, capsys):
    out = tmp_path / "k8s"
    assert (
        main(
            [
                "deploy",
                "k8s",
                "fin@champion",
                "--no-check",
                "--out",
                str(out),
                "--name",
                "fin",
                "--gpus",
                "1",
                "--max-replicas",
                "3",
                "--keys-secret",
                "honed-keys",
            ]
        )
        == 0
    )
    docs = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
    }
    dep = by_kind["Deployment"]
    assert dep["apiVersion"] == "apps/v1"
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
    c = pod["spec"]["containers"][0]
    assert "/readyz" in str(c["readinessProbe"]["exec"])
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["args"] == ["serve", "fin@champion"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {v["name"] for v in pod["spec"]["volumes"]} == {"models", "tmp", "cache", "keys"}
    svc = by_kind["Service"]
    assert svc["spec"]["selector"] == pod["metadata"]["labels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    hpa = by_kind["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "fin" and hpa["spec"]["maxReplicas"] == 3
    # The claim the pods mount is in the output.
    pvc = by_kind["PersistentVolumeClaim"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # the HPA may add pods elsewhere


def test_k8s_with_keys_probes_with_a_key():
    dep = __import__("honed.deploy.serving", fromlist=["k8s_manifests"]).k8s_manifests(
        DeployOptions(model_ref="fin@champion", name="fin", keys_secret="honed-keys")
    )[0]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert "exec" in c["readinessProbe"] and "HONED_PROBE_KEY" in str(c["readinessProbe"])
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"  # stays open
    assert any(v["name"] == "keys" for v in dep["spec"]["template"]["spec"]["volumes"])


def test_k8s_unknown_model_fails_fast(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["deploy", "k8s", str(tmp_path / "nope"), "--out", out, "--external-keys"]) == 2
    assert "nope" in capsys.readouterr().err
    # Not in this machine's registry: the hint for a model registered on the cluster.
    assert main(["deploy", "k8s", "nope@champion", "--out", out, "--external-keys"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "--no-check" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra", [[], ["--no-check"]])
def test_k8s_refuses_a_local_folder_the_pod_cannot_see(tiny, tmp_path, capsys, extra):
    out = tmp_path / "o"
    argv = ["deploy", "k8s", str(tiny["base"]), "--out", str(out), "--external-keys", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(tiny["base"]) in err and "a folder on this machine" in err
    assert "NAME@ALIAS" in err and "HONED_HOME=/models/.honed" in err and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(DeployError, match="folder on this machine"):
        __import__("honed.deploy.serving", fromlist=["k8s_manifests"]).k8s_manifests(
            DeployOptions(model_ref=str(tiny["base"]), name="x", external_keys=True)
        )


def test_k8s_packaged_and_registered_refs_resolve_in_the_pod(tmp_path):
    from honed.deploy.volumes import check_pod_ref

    for ref in ("packaged:all-minilm-l6-v2", "fin@champion", "fin/3", "models:/fin@champion"):
        check_pod_ref(ref)
    with pytest.raises(DeployError, match="not a registry ref"):
        check_pod_ref("some/where/model")


def _k8s_docs(out, *extra: str) -> dict[str, dict]:
    argv = ["deploy", "k8s", "fin@champion", "--out", str(out), "--no-check", "--external-keys"]
    assert main([*argv, *extra]) == 0
    return {d["kind"]: d for d in (yaml.safe_load(p.read_text()) for p in out.glob("*.yaml"))}


def test_k8s_state_claim_created_with_its_options_or_required_explicitly(tmp_path):
    from honed.deploy.validate import validate_manifests

    docs = _k8s_docs(
        tmp_path / "a",
        *["--claim", "reg", "--size", "50Gi", "--storage-class", "nfs", "--max-replicas", "1"],
    )
    validate_manifests(list(docs.values()))
    pvc = docs["PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == "reg" and pvc["spec"]["storageClassName"] == "nfs"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]  # one pod at most
    docs = _k8s_docs(tmp_path / "b", "--access-mode", "ReadWriteOnce")
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    # An existing claim (e.g. the one `honed deploy train` created): mounted, not created.
    docs = _k8s_docs(tmp_path / "c", "--existing-claim", "honed-models")
    assert "PersistentVolumeClaim" not in docs
    volumes = docs["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "honed-models"}} in volumes
    with pytest.raises(SystemExit):  # create a claim or mount one, not both
        _k8s_docs(tmp_path / "d", "--claim", "a", "--existing-claim", "b")
    argv = ["deploy", "k8s", "fin@champion", "--out", str(tmp_path / "e"), "--no-check"]
    assert main([*argv, "--external-keys", "--size", "big"]) == 2
    assert not (tmp_path / "e").exists()


def test_names():
    assert k8s_name("financial-sentiment@champion") == "financial-sentiment-champion"
    with pytest.raises(DeployError):
        k8s_name("@@@")


def _endpoint(ref: str, target: str, out, *extra: str) -> int:
    return main(["deploy", "endpoint", ref, "--target", target, "--out", str(out), *extra])


def _no_local_refs(cfg: dict, *forbidden: str) -> None:
    """Nothing the managed container cannot resolve: no path of this machine, no alias."""
    text = json.dumps(cfg)
    for item in forbidden:
        assert item not in text, item


def test_hf_endpoint_loads_the_pushed_hub_repo(tiny, tmp_path):
    out = tmp_path / "hf.json"
    assert _endpoint(str(tiny["base"]), "hf", out, "--hub-repo", "me/tiny-llm") == 0
    cfg = json.loads(out.read_text())
    model = cfg["model"]
    assert (model["repository"], model["revision"]) == ("me/tiny-llm", "main")
    assert (model["framework"], model["task"]) == ("custom", "custom")
    image = model["image"]["custom"]
    assert image["health_route"] == "/healthz" and image["port"] == 8000
    env = image["env"]
    assert env["HONED_SERVE_PORT"] == "8000" and env["HF_HUB_OFFLINE"] == "1"
    # Inference Endpoints mount the endpoint's repository at /repository.
    assert json.loads(env["HONED_SERVE_MODELS"]) == ["base=/repository"]
    _no_local_refs(cfg, str(tiny["root"]))


def test_sagemaker_endpoint_loads_model_data_from_s3(tiny, tmp_path, capsys):
    out = tmp_path / "sm" / "sagemaker.json"
    s3 = "s3://my-bucket/tiny/model.tar.gz"
    assert _endpoint(str(tiny["clf"]), "sagemaker", out, "--model-data", s3) == 0
    cfg = json.loads(out.read_text())
    container = cfg["Model"]["PrimaryContainer"]
    assert container["ModelDataUrl"] == s3
    env = container["Environment"]
    assert env["HONED_SERVE_PORT"] == "8080" and env["HONED_SERVE_SAGEMAKER"] == "true"
    # SageMaker extracts ModelDataUrl into /opt/ml/model.
    assert json.loads(env["HONED_SERVE_MODELS"]) == ["clf=/opt/ml/model"]
    assert cfg["Endpoint"]["EndpointConfigName"] == cfg["EndpointConfig"]["EndpointConfigName"]
    _no_local_refs(cfg, str(tiny["root"]))
    tarball = out.with_name("model.tar.gz")
    assert f"aws s3 cp {tarball} {s3}" in capsys.readouterr().out
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert "config.json" in names and not any(n.endswith(".bin") for n in names)


def test_endpoint_hub_repo_from_a_recorded_push(tiny, tmp_path):
    from honed.deploy.serving import record_push
    from honed.registry.store import Registry

    registry = Registry()
    run_id, uri = registry.log_run("tiny", "tiny", tiny["clf"], {}, {}, {})
    registry.register("tiny-clf", uri, run_id, {}, "champion")
    record_push(
        "tiny-clf@champion", "me/tiny-clf", "https://huggingface.co/me/tiny-clf/commit/abc1"
    )
    out = tmp_path / "hf.json"
    assert _endpoint("tiny-clf@champion", "hf", out) == 0
    cfg = json.loads(out.read_text())
    assert (cfg["model"]["repository"], cfg["model"]["revision"]) == ("me/tiny-clf", "abc1")
    env = cfg["model"]["image"]["custom"]["env"]
    assert json.loads(env["HONED_SERVE_MODELS"]) == ["tiny-clf=/repository"]
    _no_local_refs(cfg, "@champion", str(tiny["root"]), "honed_home")


@pytest.mark.parametrize(
    ("target", "extra", "message"),
    [
        ("hf", [], "--hub-repo"),
        ("hf", ["--hub-repo", "fin@champion"], "not a hub repo id"),
        ("sagemaker", [], "--model-data"),
        ("sagemaker", ["--model-data", "/tmp/model.tar.gz"], "not an s3://"),
    ],
)
def test_endpoint_without_a_resolvable_model_is_refused(
    tiny, tmp_path, capsys, target, extra, message
):
    out = tmp_path / "cfg.json"
    assert _endpoint(str(tiny["base"]), target, out, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


def test_endpoint_refuses_an_adapter_over_a_local_base(tiny, tmp_path, capsys):
    adapter = str(tiny["adapters"][0])
    assert _endpoint(adapter, "hf", tmp_path / "a.json", "--hub-repo", "me/adapter") == 2
    assert "honed merge" in capsys.readouterr().err
    with pytest.raises(DeployError, match="unknown target"):
        endpoint_config("azure", "x", "x", EndpointSource(), "img", None)


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


def test_pushed_card_names_the_repo_in_its_loading_examples(tmp_path):
    from huggingface_hub import ModelCard

    from honed.deploy.serving import CARD_PLACEHOLDER, card_for_repo

    assert card_for_repo(tmp_path, "me/model") is None  # no card: nothing to rewrite
    (tmp_path / "README.md").write_text(
        "---\nlicense: apache-2.0\n---\n"
        f'pipeline("text-classification", model="{CARD_PLACEHOLDER}")\n'
    )
    card = card_for_repo(tmp_path, "me/model").decode()
    assert CARD_PLACEHOLDER not in card and 'model="me/model"' in card
    assert ModelCard(card).data.license == "apache-2.0"  # the metadata block is untouched


# -- hardening (issue 13) ---------------------------------------------------------------------
def _pod(**options) -> dict:
    from honed.deploy.serving import k8s_manifests

    opts = DeployOptions(model_ref="fin@champion", name="fin", **options)
    return k8s_manifests(opts)[0]["spec"]["template"]["spec"]


def test_k8s_pods_run_hardened():
    from honed.deploy.common import RUN_AS

    pod = _pod(keys_secret="honed-keys")
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["fsGroup"] == RUN_AS
    assert pod["securityContext"]["runAsNonRoot"] is True
    ctx = pod["containers"][0]["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == ctx["runAsGroup"] == RUN_AS
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    # With a read-only root, every path the server writes is a volume.
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/tmp"]]["emptyDir"] == {}
    assert volumes[mounts["/home/honed/.cache"]]["emptyDir"] == {}
    assert "persistentVolumeClaim" in volumes[mounts["/models"]]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["HONED_HOME"].startswith("/models/") and env["HF_HOME"].startswith("/models/")


def test_k8s_image_is_the_honed_version_never_latest(tmp_path):
    import importlib.metadata

    from honed.deploy.common import IMAGE_REPO, image_ref

    version = importlib.metadata.version("honed")
    image = _pod(keys_secret="k")["containers"][0]["image"]
    assert image == f"{IMAGE_REPO}:{version}"
    digest = "sha256:" + "a" * 64
    assert image_ref(None, digest) == f"{IMAGE_REPO}@{digest}"
    assert image_ref("reg.local/honed", "1.2.3") == "reg.local/honed:1.2.3"
    assert image_ref("reg.local:5000/honed@" + digest) == "reg.local:5000/honed@" + digest
    for bad in ("reg.local:5000/honed", "honed:latest", "honed"):
        with pytest.raises(DeployError, match="pin a version tag or a digest"):
            image_ref(bad)
    with pytest.raises(DeployError, match="not a tag"):
        image_ref(None, "bad tag!")
    out = tmp_path / "k"
    argv = ["deploy", "k8s", "fin@champion", "--out", str(out), "--no-check", "--external-keys"]
    assert main([*argv, "--image-tag", digest]) == 0
    dep = yaml.safe_load((out / "deployment.yaml").read_text())
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith("@" + digest)
    assert main([*argv, "--image", "honed:latest"]) == 2


def test_k8s_without_keys_is_refused_unless_they_come_from_elsewhere(tmp_path, capsys):
    out = tmp_path / "k8s"
    argv = ["deploy", "k8s", "fin@champion", "--out", str(out), "--no-check"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--keys-secret" in err and "--external-keys" in err and "Traceback" not in err
    assert not out.exists()
    assert main([*argv, "--external-keys"]) == 0
    pod = yaml.safe_load((out / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "keys" not in {v["name"] for v in pod["volumes"]}
    assert "HONED_PROBE_KEY" in str(container["readinessProbe"])  # provided by that source


def test_k8s_yaml_has_no_anchors(tmp_path):
    from honed.deploy.serving import write_k8s

    files = write_k8s(DeployOptions("fin@champion", "fin", keys_secret="k"), tmp_path)
    for path in files:
        text = path.read_text()
        assert not re.search(r"[&*]id\d+", text), path.name
    dep = yaml.safe_load((tmp_path / "deployment.yaml").read_text())
    assert dep["spec"]["selector"]["matchLabels"] == dep["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("options", [{"keys_secret": "k", "gpus": 1}, {"external_keys": True}])
def test_k8s_manifests_validate_against_the_kubernetes_schemas(options):
    k8s = pytest.importorskip("kubernetes_validate")  # a dev dependency; offline schemas
    from honed.deploy.serving import k8s_manifests
    from honed.deploy.validate import validate_manifests

    docs = k8s_manifests(DeployOptions("fin@champion", "fin", **options))
    assert "PersistentVolumeClaim" in {doc["kind"] for doc in docs}
    for doc in docs:
        k8s.validate(doc, k8s.latest_version(), strict=True)  # raises on any unknown field
    validate_manifests(docs)  # what write_k8s runs before writing anything


def test_replicas_share_rate_limits_only_when_told(tmp_path, capsys):
    args = ["deploy", "k8s", "fin@champion", "--keys-secret", "k", "--no-check"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "--rate-limit-storage" in capsys.readouterr().err  # 4 replicas, each on its own
    url = "redis://redis:6379/0"
    assert main([*args, "--out", str(tmp_path / "b"), "--rate-limit-storage", url]) == 0
    assert "warning" not in capsys.readouterr().err
    dep = yaml.safe_load((tmp_path / "b" / "deployment.yaml").read_text())
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["HONED_SERVE_RATE_LIMIT_STORAGE"] == url
