"""Supply chain: pickle scanning, digest manifests, the SBOM, a pinned reproducible image."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest

from honed.errors import ModelError
from honed.security.supply import (
    DigestMismatchError,
    UnsafePickleError,
    model_components,
    model_manifest,
    scan_pickles,
    verify_manifest,
    write_sbom,
)

ROOT = Path(__file__).resolve().parents[3]


class _Payload:
    """What a hostile checkpoint carries: unpickling it calls os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_os_system_pickle_is_refused_naming_file_and_global(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "model.pkl").write_bytes(pickle.dumps({"w": _Payload(marker)}))
    with pytest.raises(UnsafePickleError) as err:
        scan_pickles(tmp_path)
    message = str(err.value)
    assert "model.pkl" in message and re.search(r"(posix|os)\.system", message)
    assert not marker.exists()  # scanned statically, never unpickled


def test_torch_zip_checkpoint_with_a_payload_is_refused(tmp_path):
    import torch

    torch.save({"w": torch.zeros(2), "x": _Payload(tmp_path / "m")}, tmp_path / "model.pt")
    with pytest.raises(UnsafePickleError, match=r"model\.pt.*system"):
        scan_pickles(tmp_path)


def test_benign_torch_save_passes(tmp_path):
    import torch

    torch.save({"w": torch.randn(3, 2), "b": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").write_bytes(b"not a pickle: not scanned")
    assert scan_pickles(tmp_path) == []


def _pickle_base(tmp_path: Path, tiny_bert: Path, payload: bytes) -> Path:
    folder = tmp_path / "base"
    shutil.copytree(tiny_bert, folder)
    (folder / "pytorch_model.bin").write_bytes(payload)
    return folder


def test_allow_pickle_scans_the_base_before_loading(tmp_path, tiny_bert):
    from honed.models.config import ModelConfig
    from honed.models.resolve import resolve_model

    marker = tmp_path / "pwned"
    folder = _pickle_base(tmp_path, tiny_bert, pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelError, match=r"pytorch_model\.bin.*system"):
        resolve_model(ModelConfig(base=str(folder), allow_pickle=True))
    assert not marker.exists()
    # Without allow_pickle the safetensors weights load and the pickle is never read.
    assert resolve_model(ModelConfig(base=str(folder))).weight_sha256


def test_cli_reports_a_hostile_pickle_without_a_traceback(tmp_path, tiny_bert, capsys):
    from tests.helpers import classification_spec_dict, write_phrasebank

    from honed.cli import main

    folder = _pickle_base(tmp_path, tiny_bert, pickle.dumps(_Payload(tmp_path / "pwned")))
    data = write_phrasebank(tmp_path / "phrases.txt", n_per_label=4)
    spec = classification_spec_dict(folder, data, tmp_path / "run", "full")
    spec["model"]["allow_pickle"] = True
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    assert main(["run", str(tmp_path / "spec.yaml")]) == 2
    err = capsys.readouterr().err
    assert "pytorch_model.bin" in err and "system" in err and "Traceback" not in err


def test_manifest_names_the_changed_added_or_missing_file(tmp_path, tiny_bert):
    folder = tmp_path / "m"
    shutil.copytree(tiny_bert, folder)
    manifest = model_manifest(folder)
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= manifest.keys()
    verify_manifest(folder, manifest, "m/1")
    verify_manifest(folder, manifest, "m/1")  # unchanged files: served from the stat cache

    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit, same size
    weights.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError, match=r"m/1: .*model\.safetensors does not match"):
        verify_manifest(folder, manifest, "m/1")

    weights.unlink()
    with pytest.raises(DigestMismatchError, match=r"model\.safetensors is missing"):
        verify_manifest(folder, manifest, "m/1")
    (folder / "model.safetensors").write_bytes(bytes(data))
    (folder / "extra.bin").write_bytes(b"x")
    with pytest.raises(DigestMismatchError, match=r"extra\.bin was not there"):
        verify_manifest(folder, {**manifest, "model.safetensors": "0" * 64}, "m/1")


def test_sbom_is_cyclonedx_and_validates(tmp_path):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    manifest = {"model.safetensors": "ab" * 32, "config.json": "cd" * 32}
    path = write_sbom(tmp_path / "sbom.cdx.json", model_components("fin", manifest))
    bom = json.loads(path.read_text())
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    names = {c["name"]: c for c in bom["components"]}
    assert {"torch", "transformers", "honed"} <= names.keys() and names["torch"]["version"]
    model = names["fin/model.safetensors"]
    assert model["type"] == "machine-learning-model"
    assert model["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    # The whole document takes ~40 s of schema validation; a sample keeps every kind of entry.
    keep = {"torch", "transformers", "fin/model.safetensors"}
    bom["components"] = [c for c in bom["components"] if c["name"] in keep]
    bom.pop("dependencies", None)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(bom)) is None


def test_registered_version_stores_sbom_and_refuses_tampered_weights(tmp_path, tiny_bert, capsys):
    import mlflow

    from honed.cli import main
    from honed.registry.store import MANIFEST_TAG, Registry, resolve_ref

    folder = tmp_path / "tiny"
    shutil.copytree(tiny_bert, folder)
    registry = Registry()
    run_id, uri = registry.log_run("tiny", "tiny", folder, {}, {}, {})
    # Another instance registers: the manifest comes from the logged model's MLmodel.
    Registry().register("tiny-enc", uri, run_id, {}, "champion")

    version = registry.get_version("tiny-enc@champion")
    sbom = json.loads(registry.sbom_path(version).read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    names = {c["name"] for c in sbom["components"]}
    assert {"torch", "transformers", "tiny/model.safetensors"} <= names
    recorded = json.loads(version.tags[MANIFEST_TAG])
    assert recorded == model_manifest(folder)

    served = resolve_ref("tiny-enc@champion")  # verified: the files are as registered
    weights = served / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError, match=r"tiny-enc/1: .*model\.safetensors"):
        resolve_ref("tiny-enc@champion")
    assert main(["predict", "tiny-enc@champion", "profit rose"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors does not match the registry" in err and "Traceback" not in err
    with pytest.raises(DigestMismatchError, match=r"model\.safetensors"):
        mlflow.pyfunc.load_model("models:/tiny-enc@champion")
    # The server resolves every model it loads (start, alias follow, canary) the same way.
    assert main(["serve", "tiny-enc@champion"]) == 2
    assert "does not match the registry" in capsys.readouterr().err


# -- the image and compose file ---------------------------------------------------------------
DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()


def _stages(text: str) -> list[str]:
    return re.split(r"^FROM ", text, flags=re.M)[1:]


def test_dockerfile_base_is_pinned_by_digest():
    image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.M).group(1)
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", image)
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms)


def test_dockerfile_installs_under_constraints_and_runs_as_the_pod_uid():
    from honed.deploy.common import RUN_AS

    assert "ARG CONSTRAINTS=constraints/cpu.txt" in DOCKERFILE
    assert re.search(r"pip install .*-c \$\{CONSTRAINTS\}", DOCKERFILE)
    assert f"ARG HONED_UID={RUN_AS}" in DOCKERFILE
    final = _stages(DOCKERFILE)[-1]
    assert re.search(r"^USER \$\{HONED_UID\}:\$\{HONED_UID\}$", final, re.M)
    # The runtime stage copies the built venv and installs nothing: no compilers, no pip.
    assert "COPY --from=build /opt/venv /opt/venv" in final
    assert not re.search(r"apt-get|pip install|gcc|build-essential", final)
    assert "pip uninstall --yes pip setuptools wheel" in _stages(DOCKERFILE)[0]


def test_compose_is_pinned_and_hardened():
    import yaml

    from honed.deploy.common import RUN_AS

    svc = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]["honed"]
    assert not svc["image"].endswith(":latest") and ":" in svc["image"]
    assert svc["user"] == f"{RUN_AS}:{RUN_AS}" and svc["read_only"] is True
    assert svc["cap_drop"] == ["ALL"] and "no-new-privileges:true" in svc["security_opt"]
    assert {t.split(":")[0] for t in svc["tmpfs"]} == {"/tmp", "/home/honed/.cache"}
    assert svc["environment"]["HONED_SERVE_API_KEYS_FILE"]
