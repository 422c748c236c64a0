"""Shared by /v1/chat/completions and /v1/completions: limits, queueing, SSE, collection."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Send

from honed.serve.engine.batching import QueueFull
from honed.serve.engine.generation import GenJob, SamplingParams
from honed.serve.engine.generative import GenerativeModel
from honed.serve.http.errors import APIError, overloaded
from honed.serve.http.guards import GuardContext, run_output_guards
from honed.serve.http.schemas import _Sampling
from honed.serve.http.tracking import Tracker
from honed.serve.settings import ServeSettings


class ClientGone(Exception):
    """The client disconnected; its work was cancelled."""


def sampling_params(body: _Sampling, settings: ServeSettings) -> SamplingParams:
    max_tokens = body.max_tokens or settings.default_max_tokens
    if max_tokens > settings.max_tokens_cap:
        raise APIError(
            400,
            f"max_tokens {max_tokens} exceeds this server's cap of {settings.max_tokens_cap}",
            param="max_tokens",
            code="max_tokens",
        )
    if body.n > settings.max_n:
        raise APIError(400, f"n {body.n} exceeds this server's cap of {settings.max_n}", param="n")
    return SamplingParams(
        max_tokens, body.temperature, body.top_p, body.seed, tuple(body.stop or ()), body.n
    )


def check_prompt(ids: list[int], settings: ServeSettings) -> None:
    if len(ids) > settings.max_prompt_tokens:
        raise APIError(
            400,
            f"prompt has {len(ids)} tokens; this server's limit is {settings.max_prompt_tokens}",
            code="context_length_exceeded",
        )


def submit_all(
    gen: GenerativeModel,
    prompts: list[list[int]],
    model_id: str,
    params: SamplingParams,
    retry_after: int,
) -> list[GenJob]:
    jobs: list[GenJob] = []
    try:
        for ids in prompts:
            jobs.append(gen.submit(ids, model_id, params))
    except QueueFull:
        for j in jobs:
            j.cancel()
        raise overloaded(retry_after, "request queue is full") from None
    return jobs


async def _drain(job: GenJob) -> None:
    while True:
        event = await job.events.get()
        if event[0] == "done":
            return
        if event[0] == "error":
            raise APIError(500, "generation failed", "server_error", "generation_failed")


async def _disconnected(request: Request) -> None:
    # After the body is read, the next ASGI message is `http.disconnect`.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_for_jobs(request: Request, jobs: list[GenJob], timeout: float) -> None:
    """Until every job is done; cancels them on disconnect (ClientGone) or deadline (504)."""
    work = asyncio.ensure_future(asyncio.gather(*(_drain(j) for j in jobs)))
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait(
            {work, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        watcher.cancel()
    if work in done:
        work.result()
        if any(r.finish_reason == "cancelled" for j in jobs for r in j.rows):
            raise APIError(504, "request deadline passed", "server_error", "timeout")
        return
    for j in jobs:
        j.cancel()
    work.cancel()
    if watcher in done:
        raise ClientGone
    raise APIError(504, "request deadline passed", "server_error", "timeout")


def choices(jobs: list[GenJob], guard: Callable[[str], str]) -> list[tuple[int, str, str]]:
    """(index, text, finish_reason) per choice; prompt p's choice i has index p*n + i."""
    out = []
    for p, job in enumerate(jobs):
        for row in job.rows:
            out.append(
                (p * job.params.n + row.index, guard(row.text), row.finish_reason or "length")
            )
    return out


def usage(jobs: list[GenJob]) -> dict[str, int]:
    prompt = sum(len(j.prompt_ids) for j in jobs)
    completion = sum(j.completion_tokens for j in jobs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def output_guard(request: Request, ctx: GuardContext) -> Callable[[str], str] | None:
    guards = request.app.state.output_guards
    if not guards:
        return None
    return lambda text: run_output_guards(guards, ctx, text)


async def respond(
    request: Request,
    tracker: Tracker,
    jobs: list[GenJob],
    timeout: float,
    build: Callable[[list[GenJob]], dict[str, Any]],
) -> Any:
    """Non-streaming: wait, then build the body; records the outcome either way."""
    try:
        await wait_for_jobs(request, jobs, timeout)
    except ClientGone:
        tracker.finish(499, "client_disconnected")
        return Response(status_code=499)
    except APIError as err:
        tracker.finish(err.status, err.code)
        raise
    body = build(jobs)
    tracker.prompt_tokens = body["usage"]["prompt_tokens"]
    tracker.completion_tokens = body["usage"]["completion_tokens"]
    tracker.finish(200)
    return body


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def stream_events(
    jobs: list[GenJob], deadline: float, guard: Callable[[str], str] | None
) -> AsyncIterator[tuple[str, int, str]]:
    """("delta"|"finish", choice index, text|reason) in order; buffered per choice when guarded."""
    buffered: dict[int, list[str]] = {}
    for p, job in enumerate(jobs):
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise APIError(504, "request deadline passed", "server_error", "timeout")
            kind, *rest = await asyncio.wait_for(job.events.get(), timeout=left)
            if kind == "done":
                break
            if kind == "error":
                raise APIError(500, "generation failed", "server_error", "generation_failed")
            index = p * job.params.n + rest[0]
            if kind == "delta" and guard is not None:
                buffered.setdefault(index, []).append(rest[1])
                continue
            if kind == "finish" and guard is not None:
                yield "delta", index, guard("".join(buffered.pop(index, [])))
            yield kind, index, rest[1]


class _ClosingStream(StreamingResponse):
    """Closes the body generator as soon as sending stops. Starlette leaves it suspended at
    a `yield` when the client leaves mid-send (the task is cancelled, or `send` raises), and
    it would then only be closed by the garbage collector: its jobs would keep generating and
    the request would be recorded late, as a success."""

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def streaming_response(
    tracker: Tracker,
    jobs: list[GenJob],
    timeout: float,
    guard: Callable[[str], str] | None,
    make_chunk: Callable[..., dict],
    include_usage: bool,
    first: Callable[[], list[dict]],
) -> StreamingResponse:
    """SSE: `data: {chunk}` per token, then `data: [DONE]`; a client leaving cancels the jobs
    and records an implicit `abandoned` feedback on the request."""
    deadline = time.monotonic() + timeout

    async def body() -> AsyncIterator[str]:
        # Until the last finish chunk is out, leaving early means the client abandoned the
        # stream: CancelledError when the disconnect is noticed while waiting for tokens,
        # GeneratorExit when the response is closed while a chunk was being sent.
        status, err_code = 499, "client_disconnected"
        tracker.tokens_sent = 0
        try:
            for chunk in first():
                yield sse(chunk)
            async for kind, index, value in stream_events(jobs, deadline, guard):
                if kind == "delta" and value:
                    yield sse(make_chunk(index, value, None))
                    tracker.tokens_sent += 1  # counted once the send returned
                elif kind == "finish":
                    reason = "length" if value == "cancelled" else value
                    yield sse(make_chunk(index, None, reason))
            status, err_code = 200, None
            u = usage(jobs)
            tracker.prompt_tokens, tracker.completion_tokens = (
                u["prompt_tokens"],
                u["completion_tokens"],
            )
            if include_usage:
                yield sse({**make_chunk(None, None, None), "choices": [], "usage": u})
            yield sse("[DONE]")
        except (APIError, TimeoutError) as err:
            status = getattr(err, "status", 504)
            err_code = getattr(err, "code", "timeout")
            msg = getattr(err, "message", "request deadline passed")
            yield sse(
                {"error": {"message": msg, "type": "server_error", "param": None, "code": err_code}}
            )
        except Exception:
            status, err_code = 500, "server_error"
            raise
        finally:
            for j in jobs:
                j.cancel()
            _record_stream_end(tracker, jobs, status, err_code)

    headers = {"Cache-Control": "no-cache", "X-Request-Id": tracker.id}
    return _ClosingStream(body(), media_type="text/event-stream", headers=headers)


def _record_stream_end(tracker: Tracker, jobs: list[GenJob], status: int, code: str | None):
    if status == 499:
        tracker.abandon(usage(jobs))
    else:
        tracker.finish(status, code)
