"""Shared fixtures: a request-log database per test, SQLite always and PostgreSQL when
``HONED_TEST_PG_URL`` is set (``eval "$(.ci/start-postgres.sh)"`` starts one on loopback)."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

PG_URL = os.environ.get("HONED_TEST_PG_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty request-log database URL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'requests.db'}"
        return
    if not PG_URL:
        pytest.skip("HONED_TEST_PG_URL not set (run .ci/start-postgres.sh)")
    from sqlalchemy import create_engine

    from honed.monitor.requestlog import Base

    engine = create_engine(PG_URL)
    Base.metadata.drop_all(engine)  # the PG database is shared between tests: start clean
    engine.dispose()
    yield PG_URL


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'requests.db'}"


class _Receiver(BaseHTTPRequestHandler):
    received: list = []  # noqa: RUF012

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    """A webhook receiver on loopback: (url, list of (content type, JSON body) received)."""
    _Receiver.received = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Receiver.received
    server.shutdown()
    server.server_close()
