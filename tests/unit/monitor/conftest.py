"""Shared fixtures: a request-log database per test, SQLite always and PostgreSQL when
``HONED_TEST_PG_URL`` is set (``eval "$(.ci/start-postgres.sh)"`` starts one on loopback)."""

from __future__ import annotations

import os

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
