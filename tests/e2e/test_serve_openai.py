"""End to end: `honed serve` as a real process on 127.0.0.1, driven by the official `openai`
client (dev dependency) and plain HTTP, with an API key."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from tests.fixtures.tiny_models import build_tiny_adapters, build_tiny_classifier, build_tiny_llm

from honed.serve.http.auth import append_key

openai = pytest.importorskip("openai")
HONED = str(Path(sys.executable).parent / "honed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_models(root: Path, k: int = 2) -> dict:
    base = build_tiny_llm(root / "base")
    return {
        "base": base,
        "adapters": build_tiny_adapters(base, root / "adapters", k=k),
        "clf": build_tiny_classifier(root / "clf"),
    }


@contextmanager
def serve_process(
    args: list[str], key: str | None = None, ready_s: float = 120, log: Path | None = None
):
    """`honed serve ARGS --port P` on 127.0.0.1; yields (url, Popen) once /readyz is 200."""
    port = _free_port()
    env = {**os.environ, "HONED_SERVE_TORCH_THREADS": "1"}
    cmd = [HONED, "serve", *args, "--port", str(port), "--log-level", "warning"]
    # Server output goes to a file: an unread pipe could fill up and stall the server.
    log = log or Path(os.devnull)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, key, proc, ready_s, log)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-e2e")
    m = tiny_models(root)
    key = append_key(root / "keys.yaml", "e2e", ["infer", "admin"])
    args = [
        str(m["base"]),
        f"sent={m['clf']}",
        "--adapter",
        f"fin={m['adapters'][0]}",
        "--api-keys-file",
        str(root / "keys.yaml"),
    ]
    with serve_process(args, key) as (url, _):
        yield {"url": url, "key": key, "adapters": m["adapters"]}


def _wait_ready(
    url: str, key: str | None, proc: subprocess.Popen, ready_s: float, log: Path
) -> None:
    end = time.monotonic() + ready_s
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    while time.monotonic() < end:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:] if log.name != os.devnull else ""
            raise AssertionError(f"server exited with {proc.returncode}: {tail}")
        try:
            if httpx.get(f"{url}/readyz", headers=headers).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


def test_openai_client_chat_stream_models(server):
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=server["key"])
    ids = {m.id: m for m in client.models.list().data}
    assert {"base", "fin", "sent"} <= set(ids)
    out = client.chat.completions.create(
        model="fin", messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0
    )
    assert out.choices[0].message.role == "assistant"
    assert out.usage.completion_tokens <= 5
    stream = client.chat.completions.create(
        model="fin",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=5,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == out.choices[0].message.content
    comp = client.completions.create(model="base", prompt="the quick", max_tokens=3, temperature=0)
    assert comp.object == "text_completion"


def test_openai_client_newer_fields(server):
    """What current clients send by default or commonly: max_completion_tokens, zero
    penalties, developer role, content parts, logprobs; a refused field is named."""
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=server["key"], max_retries=0)
    out = client.chat.completions.create(
        model="fin",
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}]},
        ],
        max_completion_tokens=4,
        frequency_penalty=0,
        presence_penalty=0,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        store=False,
        metadata={"team": "e2e"},
    )
    assert out.usage.completion_tokens == len(out.choices[0].logprobs.content) <= 4
    comp = client.completions.create(model="base", prompt=[5, 6, 7], max_tokens=2, logprobs=1)
    assert len(comp.choices[0].logprobs.tokens) <= 2
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(
            model="fin",
            messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )


def test_openai_client_errors(server):
    bad = openai.OpenAI(base_url=server["url"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=server["key"], max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_curl_style_classify_and_admin(server):
    h = {"Authorization": f"Bearer {server['key']}"}
    # as the README's `curl -d` sends it: form-urlencoded content type, a JSON body
    r = httpx.post(
        f"{server['url']}/v1/classify",
        headers={**h, "Content-Type": "application/x-www-form-urlencoded"},
        content=b'{"model": "sent", "input": ["good news", "bad news"]}',
    )
    assert r.status_code == 200 and len(r.json()["data"]) == 2
    r = httpx.post(
        f"{server['url']}/v1/adapters",
        headers=h,
        json={"name": "hot", "source": str(server["adapters"][1])},
    )
    assert r.status_code == 201, r.text
    assert httpx.delete(f"{server['url']}/v1/adapters/hot", headers=h).status_code == 200
    assert httpx.get(f"{server['url']}/healthz").status_code == 200
    assert httpx.get(f"{server['url']}/metrics").status_code == 401
