"""`response_format` on chat completions: `json_object` and `json_schema` answers are checked
before they leave the server.

The server does not constrain decoding, so a model may produce text that is not the JSON
asked for. Such an answer is not sent: the request fails with 422 (the `openai` client raises
`UnprocessableEntityError`), `type: "invalid_response_error"`, code `invalid_json` or
`json_schema_mismatch`, and a message naming the choice and where the answer breaks the
schema. A retry may succeed when sampling; a greedy request fails the same way again, so
the schema or the model is what needs changing. Streamed requests with a JSON
response_format are held until the choice finishes and sent as one chunk (or, on a
mismatch, a stream `error` event instead). A schema that is not a valid JSON Schema is
refused up front (400, param `response_format`).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from honed.serve.http.errors import APIError

_PARAM = "response_format"


def _bad(message: str) -> APIError:
    return APIError(400, message, param=_PARAM)


class JsonFormat:
    """The JSON an answer must be: any object (`json_object`) or a JSON Schema."""

    def __init__(self, schema: dict[str, Any] | None) -> None:
        self.schema = schema
        self.validator: Any = None
        if schema is not None:
            cls = jsonschema.validators.validator_for(schema)
            try:
                cls.check_schema(schema)
            except jsonschema.SchemaError as err:
                raise _bad(
                    f"response_format.json_schema.schema is not a JSON Schema: {err.message}"
                ) from None
            self.validator = cls(schema)

    @classmethod
    def from_request(cls, fmt: dict[str, Any] | None) -> JsonFormat | None:
        """None for no response_format or `text`; 400 for what cannot be honoured."""
        kind = (fmt or {}).get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            return cls({"type": "object"})
        if kind != "json_schema":
            raise APIError(
                400,
                f"response_format type {kind!r} is not supported by this server "
                "(text, json_object, json_schema)",
                param=_PARAM,
                code="unsupported_parameter",
            )
        spec = fmt.get("json_schema") if fmt else None
        if not isinstance(spec, dict):
            raise _bad("response_format.json_schema must be an object with a `schema`")
        schema = spec.get("schema")
        if schema is not None and not isinstance(schema, dict):
            raise _bad("response_format.json_schema.schema must be a JSON Schema object")
        return cls(schema)

    def check(self, text: str, index: int) -> None:
        """422 when choice `index`'s text is not JSON matching the schema."""
        try:
            value = json.loads(text)
        except ValueError as err:
            raise _mismatch(
                f"choice {index}: the model's answer is not valid JSON ({err}); "
                "response_format asked for JSON",
                "invalid_json",
            ) from None
        if self.validator is None:
            return
        error = jsonschema.exceptions.best_match(self.validator.iter_errors(value))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise _mismatch(
                f"choice {index}: the model's answer does not match response_format's schema "
                f"at {where}: {error.message}",
                "json_schema_mismatch",
            )


def _mismatch(message: str, code: str) -> APIError:
    return APIError(422, message, "invalid_response_error", code, _PARAM)
