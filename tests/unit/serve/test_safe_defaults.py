"""Safe by default: no keyless server on a reachable address, no admin call without an admin
key (unless --insecure-dev, loudly), no key in a URL, broken adapters refused with 400 and
without revealing paths."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil

import pytest
from tests.unit.serve._serve_support import chat_body, run_app, settings_for

from honed.cli import main
from honed.serve.http.auth import QueryKeyFilter, access_log_config, hash_key
from honed.serve.settings import ApiKeyEntry, ServeConfigError, ServeSettings, is_loopback

KEY = "hk-app-secret-1234"
KEYS = [ApiKeyEntry(name="app", sha256=hash_key(KEY), scopes=["infer"])]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host):
    assert is_loopback(host)
    ServeSettings(host=host).check_exposure()  # no keys needed on loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com", "192.168.0.2"])
def test_a_keyless_server_refuses_a_reachable_address(host):
    with pytest.raises(ServeConfigError) as err:
        ServeSettings(host=host).check_exposure()
    message = str(err.value)
    assert "--api-keys-file" in message and "honed apikey create" in message
    ServeSettings(host=host, api_keys=KEYS).check_exposure()
    ServeSettings(host=host, insecure_dev=True).check_exposure()
    with pytest.raises(ServeConfigError):  # a keys file with no key is no key
        ServeSettings(host=host, api_keys=KEYS).check_exposure(has_keys=False)


def test_serve_command_stops_before_loading_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HONED_SERVE_INSECURE_DEV", raising=False)
    assert main(["serve", str(tmp_path / "no-model"), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve on '0.0.0.0' without API keys" in err and "--insecure-dev" in err
    monkeypatch.setenv("HONED_SERVE_INSECURE_DEV", "true")  # the environment turns it on too
    assert ServeSettings.load(host="0.0.0.0").insecure_dev is True


def test_admin_routes_need_an_admin_key_on_a_keyless_server(tiny):
    adapter = str(tiny["adapters"][2])

    async def go(c, app):
        calls = {
            "load": await c.post("/v1/adapters", json={"name": "a2", "source": adapter}),
            "unload": await c.delete("/v1/adapters/a0"),
            "canary": await c.get("/admin/canary"),
            "start": await c.post("/admin/canary", json={"model": "a0", "challenger": adapter}),
        }
        models = {m["id"] for m in (await c.get("/v1/models")).json()["data"]}
        chat = await c.post("/v1/chat/completions", json=chat_body("a0", max_tokens=2))
        return calls, models, chat.status_code

    calls, models, chat = run_app(settings_for(tiny, request_log=False), go)
    for what, r in calls.items():
        assert r.status_code == 403, what
        error = r.json()["error"]
        assert error["code"] == "admin_key_required", what
        assert "--api-keys-file" in error["message"] and "--insecure-dev" in error["message"]
    assert models == {"base", "a0", "a1", "sent"} and chat == 200  # nothing changed


def test_insecure_dev_runs_admin_routes_with_loud_warnings(tiny, caplog):
    adapter = str(tiny["adapters"][2])

    async def go(c, app):
        loaded = await c.post("/v1/adapters", json={"name": "a2", "source": adapter})
        unloaded = await c.delete("/v1/adapters/a2")
        return loaded.status_code, unloaded.status_code

    with caplog.at_level(logging.WARNING, logger="honed.serve"):
        settings = settings_for(tiny, request_log=False, insecure_dev=True)
        assert run_app(settings, go) == (201, 200)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("INSECURE DEV MODE" in w and "no API keys" in w for w in warnings)  # at start
    per_call = [w for w in warnings if "admin call" in w]
    assert len(per_call) == 2 and "/v1/adapters" in per_call[0]


def test_keys_in_the_url_are_refused_and_masked_in_the_access_log(tiny, tmp_path):
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    settings = settings_for(tiny, api_keys=KEYS, request_log_url=url)
    auth = {"Authorization": f"Bearer {KEY}"}

    async def go(c, app):
        body = {"model": "sent", "input": "hi"}
        out = [
            await c.post(f"/v1/classify?api_key={KEY}", json=body),
            await c.post("/v1/classify?access_token=x", json=body, headers=auth),
            await c.get(f"/healthz?key={KEY}"),
        ]
        ok = await c.post("/v1/classify?stream=1", json=body, headers=auth)
        assert app.state.request_logger.flush(timeout=30)
        return out, ok.status_code

    refused, ok = run_app(settings, go)
    assert ok == 200  # other query parameters pass
    from honed.monitor.requestlog import RequestStore

    logged = {row["id"]: row["status_code"] for row in RequestStore(url).fetch()}
    for r in refused:
        assert r.status_code == 400 and r.json()["error"]["code"] == "key_in_query"
        assert "Authorization: Bearer" in r.json()["error"]["message"] and KEY not in r.text
    assert logged[refused[0].headers["x-request-id"]] == 400  # in the request log too

    line = '%s - "%s %s HTTP/%s" %d'
    path = f"/v1/classify?model=x&api_key={KEY}&X-Auth-Token=abc&n=1"
    record = logging.LogRecord(
        "uvicorn.access", 20, "", 0, line, ("1.2.3.4:5", "POST", path, "1.1", 400), None
    )
    assert QueryKeyFilter().filter(record)
    text = record.getMessage()
    assert KEY not in text and "abc" not in text
    assert "api_key=[REDACTED]" in text and "model=x" in text and "n=1" in text
    assert "redact_query_keys" in access_log_config()["handlers"]["access"]["filters"]


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, **changes}))


def _broken_adapters(good, root):
    """name -> a folder that must be refused with 400."""
    out = {}
    d = out["pickle"] = _copy(good, root / "pickle")
    (d / "adapter_model.safetensors").write_bytes(pickle.dumps({"w": [1.0] * 8}))
    d = out["symlink"] = _copy(good, root / "symlink")
    (d / "adapter_model.safetensors").unlink()
    os.symlink("/etc/passwd", d / "adapter_model.safetensors")
    d = out["config-link"] = _copy(good, root / "config-link")
    (d / "adapter_config.json").unlink()
    os.symlink("/etc/passwd", d / "adapter_config.json")
    d = out["rank"] = _copy(good, root / "rank")
    _edit_config(d, r=8)
    d = out["targets"] = _copy(good, root / "targets")
    _edit_config(d, target_modules=["nope_proj"])
    d = out["bin-only"] = _copy(good, root / "bin-only")
    (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")
    return out


def test_broken_adapters_answer_400_and_leave_the_server_as_it_was(tiny, tmp_path):
    good = tiny["adapters"][2]
    broken = _broken_adapters(good, tmp_path)
    elsewhere = {
        "missing": str(tmp_path / "no" / "such" / "folder"),
        "not-an-adapter": "/etc",
        "a-file": "/etc/passwd",
        "registry": "nosuchmodel@champion",
    }
    ask = chat_body("base", "tell me", max_tokens=4)

    sources = {**{n: str(f) for n, f in broken.items()}, **elsewhere}

    async def go(c, app):
        before = (await c.post("/v1/chat/completions", json=ask)).json()["choices"]
        out = {}
        for name, source in sources.items():
            out[name] = await c.post("/v1/adapters", json={"name": name, "source": source})
        out["classifier name"] = await c.post(
            "/v1/adapters", json={"name": "sent", "source": str(good)}
        )
        sources["classifier name"] = str(good)
        after = (await c.post("/v1/chat/completions", json=ask)).json()["choices"]
        ids = [m["id"] for m in (await c.get("/v1/models")).json()["data"]]
        fine = await c.post("/v1/adapters", json={"name": "fine", "source": str(good)})
        return out, before, after, ids, fine.status_code

    out, before, after, ids, fine = run_app(settings_for(tiny, request_log=False), go, admin=True)
    state_dir = os.environ.get("HONED_HOME", ".honed")
    for name, r in out.items():
        expected = 409 if name == "classifier name" else 400
        assert r.status_code == expected, (name, r.text)
        message = r.json()["error"]["message"]
        assert "Traceback" not in r.text and "mlflow" not in message and state_dir not in message
        # The caller's own source is echoed; no other path (resolved folder, registry, base).
        rest = message.replace(sources[name], "")
        assert str(tmp_path) not in rest and "/etc" not in rest, (name, message)
    codes = {name: r.json()["error"]["code"] for name, r in out.items()}
    assert codes["config-link"] == "adapter_not_found"  # its config is no readable file
    assert codes["pickle"] == codes["rank"] == codes["targets"] == "bad_adapter"
    assert "not a valid safetensors file" in out["pickle"].json()["error"]["message"]
    assert "links outside the adapter folder" in out["symlink"].json()["error"]["message"]
    assert "r=8" in out["rank"].json()["error"]["message"]
    assert "nope_proj" in out["targets"].json()["error"]["message"]
    # Whether an arbitrary path exists is not told: one answer for all of them.
    unknown = {out[n].json()["error"]["message"].split(" not found")[1] for n in elsewhere}
    assert len(unknown) == 1 and {codes[n] for n in elsewhere} == {"adapter_not_found"}
    assert codes["classifier name"] == "name_taken"
    assert before == after  # failed loads left the base as it was
    assert sorted(ids) == ["a0", "a1", "base", "sent"] and fine == 201
