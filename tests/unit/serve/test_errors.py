"""Engine refusals become OpenAI-shaped errors with their HTTP status (honed.serve.http.errors)."""

from __future__ import annotations

import json

import pytest

from honed.serve.engine import errors as engine_errors
from honed.serve.engine.errors import Conflict, EngineError, InvalidRequest, NotFound, QueueFull
from honed.serve.http.errors import from_engine


@pytest.mark.parametrize(
    ("err", "status", "body"),
    [
        (
            NotFound("model", "nope"),
            404,
            {
                "message": "model 'nope' does not exist",
                "type": "invalid_request_error",
                "param": None,
                "code": "not_found",
            },
        ),
        (
            InvalidRequest("'clf' is a classifier; use /v1/classify", param="model"),
            400,
            {
                "message": "'clf' is a classifier; use /v1/classify",
                "type": "invalid_request_error",
                "param": "model",
                "code": None,
            },
        ),
        (
            Conflict("merged", code="merged"),
            409,
            {"message": "merged", "type": "invalid_request_error", "param": None, "code": "merged"},
        ),
        (
            QueueFull("base"),
            503,
            {
                "message": "request queue is full; retry later",
                "type": "server_error",
                "param": None,
                "code": "overloaded",
            },
        ),
    ],
)
def test_engine_errors_map_to_openai_errors(err, status, body):
    response = from_engine(err, retry_after=7).response()
    assert response.status_code == status
    assert json.loads(response.body) == {"error": body}
    if status == 503:
        assert response.headers["Retry-After"] == "7"


def test_every_engine_error_kind_has_a_status():
    kinds = [
        k
        for k in vars(engine_errors).values()
        if isinstance(k, type) and issubclass(k, EngineError) and k is not EngineError
    ]
    assert len(kinds) == 4
    for kind in kinds:
        err = kind.__new__(kind)
        EngineError.__init__(err, "x", code="c")
        assert from_engine(err, 1).status != 500, kind
