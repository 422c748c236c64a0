"""`honed deploy kserve`: the InferenceService validates against KServe's CRD schema, the canary
fields, keys and unreachable refs refused, a pinned image, plain YAML, the CLI end to end."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from honed.cli import main
from honed.deploy.common import DeployError, image_ref, security_context
from honed.deploy.kserve import KServeOptions, kserve_manifests, model_name
from honed.deploy.validate import (
    SCHEMAS,
    ManifestInvalidError,
    check_vendored_schema,
    validate_manifest,
    validate_manifests,
)

KEYS = {"keys_secret": "honed-keys"}


def _isvc(**kw):
    opts = KServeOptions(**{"model_ref": "fin/3", "name": "fin", **KEYS, **kw})
    docs = kserve_manifests(opts)
    validate_manifests(docs)  # every rendered manifest passes its schema
    return docs[0], docs


def _container(isvc):
    return isvc["spec"]["predictor"]["containers"][0]


def test_champion_is_a_valid_inference_service():
    isvc, docs = _isvc()
    assert [d["kind"] for d in docs] == [
        "InferenceService",
        "ServiceAccount",
        "PersistentVolumeClaim",
    ]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = isvc["spec"]["predictor"]
    assert "canaryTrafficPercent" not in predictor
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 4)
    assert predictor["scaleMetric"] == "concurrency"
    c = _container(isvc)
    assert c["name"] == "kserve-container" and c["args"] == ["serve", "fin/3"]
    assert c["ports"] == [{"name": "http1", "containerPort": 8000, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8000}
    assert "/readyz" in str(c["readinessProbe"]["exec"])  # keys on: probed with the probe key
    assert "HONED_PROBE_KEY" in str(c["readinessProbe"])
    # The restricted context, less `privileged`, which Knative refuses (unset: not privileged).
    expected = {k: v for k, v in security_context().items() if k != "privileged"}
    assert c["securityContext"] == expected
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert predictor["securityContext"]["fsGroup"] == 10001
    assert "automountServiceAccountToken" not in predictor  # Knative refuses the field...
    assert predictor["serviceAccountName"] == docs[1]["metadata"]["name"]
    assert docs[1]["automountServiceAccountToken"] is False  # ...its ServiceAccount turns it off
    volumes = {v["name"]: v for v in predictor["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "honed-models"
    assert docs[2]["metadata"]["name"] == "honed-models"
    assert any(m["mountPath"] == "/models" for m in c["volumeMounts"])


def test_canary_runs_the_challenger_with_a_traffic_percent():
    isvc, _ = _isvc(canary_ref="fin/4", canary_percent=10)
    predictor = isvc["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert _container(isvc)["args"] == ["serve", "fin/4"]
    meta = isvc["metadata"]
    assert meta["name"] == "fin"  # the same resource as the champion's
    assert meta["annotations"]["honed.dev/model-ref"] == "fin/3"
    assert meta["annotations"]["honed.dev/canary-ref"] == "fin/4"
    promoted, _ = _isvc(canary_ref="fin/4", canary_percent=100)
    assert promoted["spec"]["predictor"]["canaryTrafficPercent"] == 100


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"canary_ref": "fin/4"}, "--canary-percent"),
        ({"canary_percent": 10}, "--canary-percent"),
        ({"canary_ref": "fin/4", "canary_percent": 150}, "0 to 100"),
        ({"canary_ref": "fin/4", "canary_percent": 5, "deployment_mode": "Standard"}, "Knative"),
        ({"min_replicas": 5, "max_replicas": 2}, "--min-replicas"),
        ({"scale_metric": "concurrency", "deployment_mode": "Standard"}, "Knative"),
        ({"name": "3fin"}, "starting with a letter"),
    ],
)
def test_bad_options_are_refused(kw, needle):
    with pytest.raises(DeployError, match=needle):
        _isvc(**kw)


def test_standard_mode_scales_on_cpu_through_an_hpa():
    isvc, _ = _isvc(deployment_mode="Standard")
    predictor = isvc["spec"]["predictor"]
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa"
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 70)
    assert predictor["automountServiceAccountToken"] is False  # a plain pod keeps it off
    assert _container(isvc)["securityContext"] == security_context()  # all of it


def test_vendored_schema_is_a_json_schema_with_its_source():
    path = SCHEMAS / "serving.kserve.io_v1beta1_inferenceservice.json"
    check_vendored_schema(path)
    source = json.loads(path.read_text())["source"]
    assert "kserve/kserve" in source and "kserve==0.21.0" in source


def test_schema_refuses_typos_and_wrong_types():
    isvc, _ = _isvc(canary_ref="fin/4", canary_percent=10)
    typo = copy.deepcopy(isvc)
    typo["spec"]["predictor"]["canaryTraficPercent"] = typo["spec"]["predictor"].pop(
        "canaryTrafficPercent"
    )
    with pytest.raises(ManifestInvalidError, match="canaryTraficPercent"):
        validate_manifest(typo)
    container_typo = copy.deepcopy(isvc)
    _container(container_typo)["readinesProbe"] = _container(container_typo).pop("readinessProbe")
    with pytest.raises(ManifestInvalidError, match="readinesProbe"):
        validate_manifest(container_typo)
    wrong_type = copy.deepcopy(isvc)
    wrong_type["spec"]["predictor"]["canaryTrafficPercent"] = "10%"
    with pytest.raises(ManifestInvalidError, match="canaryTrafficPercent"):
        validate_manifest(wrong_type)
    bad_metric = copy.deepcopy(isvc)
    bad_metric["spec"]["predictor"]["scaleMetric"] = "gpu"
    with pytest.raises(ManifestInvalidError, match="scaleMetric"):
        validate_manifest(bad_metric)
    no_predictor = copy.deepcopy(isvc)
    del no_predictor["spec"]["predictor"]
    with pytest.raises(ManifestInvalidError, match="predictor"):
        validate_manifest(no_predictor)


def test_keys_are_required():
    with pytest.raises(DeployError, match="--keys-secret"):
        kserve_manifests(KServeOptions(model_ref="fin/3", name="fin"))
    isvc, _ = _isvc(keys_secret=None, external_keys=True)
    names = {v["name"] for v in isvc["spec"]["predictor"]["volumes"]}
    assert "keys" not in names  # the keys come another way


def test_unreachable_refs_are_refused(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    with pytest.raises(DeployError, match="a folder on this machine") as err:
        _isvc(model_ref=str(folder))
    assert str(folder) in str(err.value) and "honed deploy train" in str(err.value)
    with pytest.raises(DeployError, match="a folder on this machine"):
        _isvc(canary_ref=str(folder), canary_percent=10)
    with pytest.raises(DeployError, match="not a registry ref"):
        _isvc(model_ref="runs/fin-sentiment")  # a path that is not even here


def test_existing_claim_is_mounted_not_created():
    isvc, docs = _isvc(claim="team-state", existing_claim=True)
    assert [d["kind"] for d in docs] == ["InferenceService", "ServiceAccount"]
    volumes = {v["name"]: v for v in isvc["spec"]["predictor"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "team-state"


def test_names_follow_the_registered_model():
    assert model_name("fin-sentiment@champion") == "fin-sentiment"
    assert model_name("models:/fin/4") == "fin"


def test_cli_writes_validated_plain_yaml(tmp_path, capsys):
    out = tmp_path / "isvc"
    argv = ["deploy", "kserve", "fin/3", "--out", str(out), "--keys-secret", "honed-keys"]
    extra = ["--canary", "fin@challenger", "--canary-percent", "20", "--gpus", "1"]
    assert main([*argv, *extra, "--max-replicas", "6", "--storage-class", "nfs"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["inferenceservice.yaml", "persistentvolumeclaim.yaml", "serviceaccount.yaml"]
    assert sorted(capsys.readouterr().out.split()) == [str(out / f) for f in files]
    texts = [(out / f).read_text() for f in files]
    assert not any("&id" in t or "*id" in t for t in texts)  # no YAML anchors
    isvc, pvc, account = (yaml.safe_load(t) for t in texts)
    validate_manifests([isvc, pvc, account])
    assert isvc["metadata"]["name"] == "fin"
    predictor = isvc["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 20 and predictor["maxReplicas"] == 6
    c = _container(isvc)
    assert c["args"] == ["serve", "fin@challenger"]
    assert c["image"] == image_ref() and not c["image"].endswith(":latest")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pvc["spec"]["storageClassName"] == "nfs"


def test_cli_pins_images_and_refuses_what_pods_cannot_run(tmp_path, capsys):
    out = tmp_path / "o"
    base = ["deploy", "kserve", "fin/3", "--out", str(out)]
    assert main([*base, "--keys-secret", "k", "--image-tag", "1.2.3"]) == 0
    isvc = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    assert _container(isvc)["image"] == "ghcr.io/honed/honed-serve:1.2.3"
    refused = tmp_path / "refused"
    for argv in (
        ["deploy", "kserve", "fin/3", "--out", str(refused)],  # no keys
        [*base[:4], str(refused), "--keys-secret", "k", "--image", "me/honed:latest"],
        ["deploy", "kserve", str(tmp_path), "--out", str(refused), "--keys-secret", "k"],
    ):
        capsys.readouterr()
        assert main(argv) == 2
        assert capsys.readouterr().err
    assert not refused.exists()  # a refusal leaves nothing behind
    assert main([*base, "--keys-secret", "k", "--existing-claim", "team-state"]) == 0
