"""The server logs every request through the monitor stage's request logger, PII redacted."""

from __future__ import annotations

from tests.unit.serve._serve_support import chat_body, run_app, settings_for


def test_requests_are_logged_with_pii_redacted(tiny, tmp_path):
    from honed.monitor.requestlog import RequestStore

    url = f"sqlite:///{tmp_path / 'requests.db'}"
    settings = settings_for(tiny, request_log_url=url)

    async def calls(client, app):
        r1 = await client.post(
            "/v1/classify", json={"model": "sent", "input": ["mail bob@example.com"]}
        )
        r2 = await client.post("/v1/chat/completions", json=chat_body("a0", "hello"))
        assert r1.status_code == 200 and r2.status_code == 200
        assert app.state.request_logger.flush(timeout=30)
        return r1.json(), r2.json()

    run_app(settings, calls)
    rows = RequestStore(url).fetch()
    routes = {r["route"] for r in rows}
    assert {"classify", "chat"} <= routes
    classify = next(r for r in rows if r["route"] == "classify")
    assert "bob@example.com" not in (classify["input_text"] or "")
    assert classify["predicted_label"] is not None


def test_request_log_can_be_turned_off(tiny):
    settings = settings_for(tiny, request_log=False)

    async def check(client, app):
        return app.state.request_logger

    assert run_app(settings, check) is None


def test_the_redaction_is_built_at_start_not_under_traffic(tiny, tmp_path, monkeypatch):
    """Presidio (and a NER model) take seconds to build: the server builds the log's redactor
    before it is ready, so the writer thread does not take that CPU from the first requests."""
    from honed.monitor import quality

    seen: list[str] = []

    def redactor(ner_model=None):
        def redact(text: str) -> str:
            seen.append(text)
            return text

        return redact

    monkeypatch.setattr(quality, "pii_redactor", redactor)
    settings = settings_for(tiny, request_log_url=f"sqlite:///{tmp_path / 'r.db'}")

    async def before_any_request(client, app):
        return list(seen)

    warmed = run_app(settings, before_any_request)
    assert len(warmed) == 1 and "212-555-0199" in warmed[0]


def test_guard_warm_up_builds_the_pii_analyzer():
    from honed.security import pii
    from honed.serve.http.guards import warm

    pii._gate.cache_clear()
    warm(pii.find_pii, pii.STRUCTURED, 0.5)
    assert pii._gate.cache_info().currsize == 1  # built with the analyzer, not at a request
