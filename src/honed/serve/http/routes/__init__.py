"""One router per resource; the inference routes hand their request to honed.serve.http.pipeline."""

# SSE events are `data: <chunk JSON>` lines ending with `data: [DONE]`: no single JSON schema.
STREAM_DOC: dict[int | str, dict] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "JSON, or server-sent events when stream is true",
    }
}
