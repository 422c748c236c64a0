"""The one request pipeline: every inference route (/v1/chat/completions, /v1/completions,
/v1/classify, SageMaker's /invocations) calls `run` once, and a request goes
route -> pipeline -> engine and back the same way:

  1. admit   the engine picks the model (404 / 400 for a wrong id or kind), input guards run
             (honed.serve.http.guards: hooks, then the configured guards in a worker thread),
             texts become prompts and go to the engine's queue (503 when it is full)
  2. wait    until the engine answers, the client leaves (499) or the deadline passes (504);
             a streamed request instead sends server-sent events as tokens arrive
  3. answer  output screening (honed.serve.http.output_filter: configured output guards,
             output hooks, response_format; on streams with a look-behind window), the
             response body, and the request recorded exactly once (metrics, request log with
             the guards' decisions, implicit feedback: honed.serve.http.tracking)

What differs between the routes (which texts are guarded and logged, how they become prompts,
the body's shape) is one small class per request kind (`_Chat`, `_Completion`, `_Classify`);
the steps and their order are the same for all.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Send

from honed.serve.engine.canary import route_key
from honed.serve.engine.classifier import ClassifierModel, ClassifyJob
from honed.serve.engine.core import Engine
from honed.serve.engine.errors import EngineError
from honed.serve.engine.generation import GenJob, SamplingParams
from honed.serve.engine.generative import GenerativeModel
from honed.serve.http import openai_fields as fields
from honed.serve.http.auth import ApiKey
from honed.serve.http.errors import APIError, from_engine
from honed.serve.http.guards import (
    GuardContext,
    check_logprobs,
    insert_canary,
    run_input_guards,
    run_output_guards,
    screen_inputs,
)
from honed.serve.http.logprob_shapes import chat_logprobs, completion_logprobs
from honed.serve.http.output_filter import ChoiceStream, OutputScreen
from honed.serve.http.request_ids import log_texts
from honed.serve.http.response_format import JsonFormat
from honed.serve.http.schemas import (
    ChatCompletionRequest,
    ClassifyRequest,
    CompletionRequest,
    _Sampling,
)
from honed.serve.http.tracking import Tracker, caller_of, is_sampled
from honed.serve.settings import ServeSettings

RequestBody = ChatCompletionRequest | CompletionRequest | ClassifyRequest


class ClientGone(Exception):
    """The client disconnected; its work was cancelled."""


async def run(
    request: Request,
    body: RequestBody,
    engine: Engine,
    settings: ServeSettings,
    key: ApiKey | None,
) -> Any:
    """Answer one inference request (the steps are in the module docstring)."""
    call = _CALLS[type(body)](body)
    tracker = Tracker(request, call.route, body.model, call.prefix)
    try:
        ctx, work = await _admit(request, call, engine, settings, key, tracker)
    except (APIError, EngineError) as err:
        raise _refused(tracker, err, settings) from None
    tracker.records = [log_texts(settings, input=text) for text in call.inputs]
    if call.regenerate is not None:
        caller = caller_of(request, ctx.api_key)
        tracker.watch_regenerate(caller, call.regenerate, is_sampled(call.body))
    guard = output_screen(request, ctx, call.body)
    timeout = settings.request_timeout_s
    if isinstance(call, _Generate) and call.body.stream:
        chunk, opening = partial(call.chunk, tracker.id), partial(call.opening, tracker.id)
        return streaming_response(tracker, work, timeout, guard, chunk, call.include_usage, opening)
    try:
        await call.wait(request, work, timeout)
    except ClientGone:
        tracker.finish(499, "client_disconnected")
        return Response(status_code=499)
    except APIError as err:
        tracker.finish(err.status, err.code)
        raise
    try:
        answer = await _answer(call, work, guard, tracker)
    except APIError as err:  # a response_format mismatch
        tracker.finish(err.status, err.code)
        raise
    tracker.finish(200)
    _shadow(request, engine, call, work, tracker)
    return answer


async def _admit(
    request: Request,
    call: _Call,
    engine: Engine,
    settings: ServeSettings,
    key: ApiKey | None,
    tracker: Tracker,
) -> tuple[GuardContext, Any]:
    """Pick the model (the tracker records which version answers), run the input guards,
    submit: (guard context, the engine's job(s))."""
    caller = caller_of(request, key.name if key else None)
    call.route_key = route_key(engine.traffic, call.body.model, caller, request.headers)
    model = call.model_for(engine, settings)
    tracker.answered_by(model, call.body.model)
    ctx = GuardContext(call.route, call.body.model, call.texts, key.name if key else None)
    run_input_guards(request.app.state.input_guards, ctx)
    await _configured_guards(request, call, tracker)
    # Off the event loop: rendering a chat template and tokenizing a long prompt would hold
    # every other request (and /healthz) for as long as they take.
    prepared = await asyncio.to_thread(call.prepare, model, settings)
    return ctx, call.submit(model, prepared)


async def _configured_guards(request: Request, call: _Call, tracker: Tracker) -> None:
    """The configured input guards (redaction changes what the model sees); the canary
    in chat system prompts."""
    guards = getattr(request.app.state, "guard_set", None)
    if guards is None:
        return
    roles = [m["role"] for m in call.messages] if isinstance(call, _Chat) else None
    try:
        texts = await screen_inputs(tracker, call.texts, roles)
    except APIError:  # the refused input stays in the log (redacted there), for review
        settings = tracker.state.settings
        tracker.records = [log_texts(settings, input=t) for t in call.inputs or call.texts]
        raise
    if texts != call.texts:
        call.use_texts(texts)
    if isinstance(call, _Generate):
        check_logprobs(guards, fields.logprobs_k(call.body))
    if isinstance(call, _Chat) and guards.canary:
        insert_canary(call.messages, guards.canary)


def _refused(tracker: Tracker, err: APIError | EngineError, settings: ServeSettings) -> APIError:
    """Record a request refused before the engine took it; the error to answer with."""
    if isinstance(err, EngineError):
        err = from_engine(err, settings.retry_after_s)
    tracker.finish(err.status, err.code)
    return err


_UNSCREENED = OutputScreen(None)


async def _answer(call: _Call, work: Any, screen: OutputScreen | None, tracker: Tracker) -> Any:
    """The response body; output detectors run in a worker thread (off the event loop)."""
    if screen is not None and screen.heavy:
        return await asyncio.to_thread(call.answer, work, screen, tracker)
    return call.answer(work, screen or _UNSCREENED, tracker)


def _shadow(request: Request, engine: Engine, call: _Call, work: Any, tracker: Tracker) -> None:
    """A copy to the model's shadow challenger, if one runs (never waits, never raises)."""
    inputs = [r.get("input") for r in tracker.records]
    logger = request.app.state.request_logger
    engine.traffic.shadow(
        call.body.model, call.route, work, tracker.id, inputs, logger, call.route_key
    )


class _Generate:
    """Chat and text completions: prompts -> generation jobs -> choices."""

    route: str  # the metrics / request-log route label
    prefix: str  # of the response id
    object: str  # the response's `object`
    chunk_object: str  # a streamed chunk's `object`
    include_usage = False  # a last streamed chunk with the token usage
    route_key: str | None = None  # what a sticky canary splits on (set when admitted)

    def __init__(self, body: _Sampling, texts: list[str], inputs: list[str], regenerate: Any):
        self.body = body
        self.texts = texts  # what the input guards see
        self.inputs = inputs  # one request-log record each
        self.regenerate = regenerate  # what a caller repeats when regenerating
        self.created = int(time.time())
        self.gen: GenerativeModel | None = None  # set by model_for; its tokenizer shapes logprobs

    def model_for(self, engine: Engine, settings: ServeSettings) -> GenerativeModel:
        self.gen = engine.generator_for(self.body.model, self.route_key)
        return self.gen

    def use_texts(self, texts: list[str]) -> None:
        """The texts as an input guard redacted them (what the model and the log get)."""
        self.texts = self.inputs = self.regenerate = texts

    def prompts(
        self, gen: GenerativeModel, params: SamplingParams, settings: ServeSettings
    ) -> list[list[int]]:
        raise NotImplementedError

    def prepare(
        self, gen: GenerativeModel, settings: ServeSettings
    ) -> tuple[SamplingParams, list[list[int]]]:
        """Worker thread: the decoding settings and the prompts' token ids."""
        params = sampling_params(self.body, settings, vocab_size(gen))
        prompts = self.prompts(gen, params, settings)
        for ids in prompts:
            check_prompt(ids, settings)
        return params, prompts

    def submit(
        self, gen: GenerativeModel, prepared: tuple[SamplingParams, list[list[int]]]
    ) -> list[GenJob]:
        params, prompts = prepared
        return gen.submit_all(prompts, self.body.model, params)

    async def wait(self, request: Request, jobs: list[GenJob], timeout: float) -> None:
        await wait_for_jobs(request, jobs, timeout)

    def answer(self, jobs: list[GenJob], screen: OutputScreen, tracker: Tracker) -> dict[str, Any]:
        try:
            done = choices(jobs, screen)
        finally:
            screen.record(tracker)
        n = jobs[0].params.n
        for p, rec in enumerate(tracker.records):  # each prompt's first choice
            rec.update(log_texts(tracker.state.settings, output=done[p * n][1]))
        u = usage(jobs)
        tracker.prompt_tokens = u["prompt_tokens"]
        tracker.completion_tokens = u["completion_tokens"]
        return {
            "id": tracker.id,
            "object": self.object,
            "created": self.created,
            "model": self.body.model,
            "choices": [self.choice(i, text, reason, lps) for i, text, reason, lps in done],
            "usage": u,
        }

    def choice(self, index: int, text: str, reason: str, lps: list | None) -> dict[str, Any]:
        """One choice of the answer; ``lps``: its logprob entries (None: not asked)."""
        raise NotImplementedError

    def delta(
        self, index: int | None, text: str | None, reason: str | None, entries: list | None
    ) -> dict[str, Any]:
        """One streamed choice; ``entries``: the logprobs of the tokens it sends."""
        raise NotImplementedError

    def chunk(
        self,
        rid: str,
        index: int | None,
        text: str | None,
        reason: str | None,
        entries: list | None = None,
    ) -> dict[str, Any]:
        return {
            "id": rid,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.body.model,
            "choices": [self.delta(index, text, reason, entries)],
        }

    def opening(self, rid: str) -> list[dict[str, Any]]:
        """Chunks sent before the first token."""
        return []


class _Chat(_Generate):
    route, prefix = "chat", "chatcmpl"
    object, chunk_object = "chat.completion", "chat.completion.chunk"

    def __init__(self, body: ChatCompletionRequest) -> None:
        self.messages = fields.chat_messages(body.messages)
        texts = [m["content"] for m in self.messages]
        # The request log keeps the last message: the one this answer answers.
        super().__init__(body, texts, texts[-1:], self.messages)
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def use_texts(self, texts: list[str]) -> None:
        for m, text in zip(self.messages, texts, strict=True):
            m["content"] = text
        self.texts, self.inputs = texts, texts[-1:]

    def prompts(
        self, gen: GenerativeModel, params: SamplingParams, settings: ServeSettings
    ) -> list[list[int]]:
        fields.check_template(self.body.messages, gen.tokenizer)
        check_prompt_chars(sum(len(t) for t in self.texts), gen, settings)
        return [gen.encode_chat(self.messages)]

    def choice(self, index: int, text: str, reason: str, lps: list | None) -> dict[str, Any]:
        return {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "finish_reason": reason,
            "logprobs": None if lps is None else chat_logprobs(self.gen.tokenizer, lps),
        }

    def delta(
        self, index: int | None, text: str | None, reason: str | None, entries: list | None
    ) -> dict[str, Any]:
        delta = {"content": text} if text is not None else {}
        lps = chat_logprobs(self.gen.tokenizer, entries) if self.body.logprobs and entries else None
        return {"index": index, "delta": delta, "finish_reason": reason, "logprobs": lps}

    def opening(self, rid: str) -> list[dict[str, Any]]:
        # OpenAI opens each choice with the assistant role and empty content.
        out = []
        for i in range(self.body.n):
            c = self.chunk(rid, i, "", None)
            c["choices"][0]["delta"]["role"] = "assistant"
            out.append(c)
        return out


class _Completion(_Generate):
    route, prefix = "completions", "cmpl"
    object = chunk_object = "text_completion"

    def __init__(self, body: CompletionRequest) -> None:
        self.token_ids = fields.token_prompts(body.prompt)  # None: text prompts
        prompts = [] if self.token_ids is not None else _text_prompts(body.prompt)
        super().__init__(body, prompts, prompts, prompts)
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.offsets: dict[int, int] = {}  # streamed choice -> text_offset of its next token

    def model_for(self, engine: Engine, settings: ServeSettings) -> GenerativeModel:
        gen = super().model_for(engine, settings)
        if self.token_ids is not None:
            # Token-array prompts, decoded for the guards and the request log.
            vocab = vocab_size(gen)
            for one in self.token_ids:
                fields.check_ids(one, vocab, "prompt")
            texts = [gen.tokenizer.decode(one) for one in self.token_ids]
            self.texts = self.inputs = self.regenerate = texts
        return gen

    def use_texts(self, texts: list[str]) -> None:
        self.token_ids = None  # redacted token prompts are encoded again, as text
        super().use_texts(texts)

    def prompts(
        self, gen: GenerativeModel, params: SamplingParams, settings: ServeSettings
    ) -> list[list[int]]:
        if len(self.texts) * params.n > settings.max_batch_size * 4:
            raise APIError(400, "too many prompts x n for one request", param="prompt")
        if self.token_ids is not None:
            return self.token_ids
        for p in self.texts:
            check_prompt_chars(len(p), gen, settings)
        return [gen.encode_text(p) for p in self.texts]

    def choice(self, index: int, text: str, reason: str, lps: list | None) -> dict[str, Any]:
        shaped = None if lps is None else completion_logprobs(self.gen.tokenizer, lps)[0]
        return {"index": index, "text": text, "finish_reason": reason, "logprobs": shaped}

    def delta(
        self, index: int | None, text: str | None, reason: str | None, entries: list | None
    ) -> dict[str, Any]:
        lps = None
        if self.body.logprobs is not None and entries:
            lps, self.offsets[index] = completion_logprobs(
                self.gen.tokenizer, entries, self.offsets.get(index, 0)
            )
        return {"index": index, "text": text or "", "finish_reason": reason, "logprobs": lps}


def _text_prompts(prompt: str | list[str]) -> list[str]:
    return [prompt] if isinstance(prompt, str) else list(prompt)


class _Classify:
    """A batch of texts -> one classification job -> labels and scores."""

    route, prefix = "classify", "cls"
    regenerate = None
    route_key: str | None = None  # what a sticky canary splits on (set when admitted)
    inputs: tuple[str, ...] = ()  # records are written with the answers (`answer`)

    def __init__(self, body: ClassifyRequest) -> None:
        self.body = body
        self.texts = [body.input] if isinstance(body.input, str) else list(body.input)

    def model_for(self, engine: Engine, settings: ServeSettings) -> ClassifierModel:
        if len(self.texts) > settings.max_classify_inputs:
            raise APIError(
                400,
                f"{len(self.texts)} inputs; this server's limit is {settings.max_classify_inputs}",
                param="input",
            )
        return engine.classifier_for(self.body.model, self.route_key)

    def use_texts(self, texts: list[str]) -> None:
        self.texts = texts

    def prepare(self, clf: ClassifierModel, settings: ServeSettings) -> None:
        return None  # the classifier's worker tokenizes

    def submit(self, clf: ClassifierModel, prepared: None) -> ClassifyJob:
        return clf.submit(self.texts)

    async def wait(self, request: Request, job: ClassifyJob, timeout: float) -> None:
        await _until_done(request, job.future, timeout)
        if job.future.exception() is not None:
            raise APIError(500, "classification failed", "server_error", "inference_failed")

    def answer(self, job: ClassifyJob, screen: OutputScreen, tracker: Tracker) -> dict[str, Any]:
        data = [
            {"index": i, **r, "label": screen.label(r["label"])}
            for i, r in enumerate(job.future.result())
        ]
        tracker.prompt_tokens = job.prompt_tokens
        settings = tracker.state.settings
        tracker.records = [
            {
                **log_texts(settings, input=t, output=d["label"]),
                "label": d["label"],
                "score": d["score"],
            }
            for t, d in zip(self.texts, data, strict=True)
        ]
        usage = {"prompt_tokens": job.prompt_tokens, "total_tokens": job.prompt_tokens}
        return {
            "id": tracker.id,
            "object": "list",
            "model": self.body.model,
            "data": data,
            "usage": usage,
        }


_Call = _Chat | _Completion | _Classify
_CALLS: dict[type, Callable[[Any], _Call]] = {
    ChatCompletionRequest: _Chat,
    CompletionRequest: _Completion,
    ClassifyRequest: _Classify,
}


def sampling_params(body: _Sampling, settings: ServeSettings, vocab: int) -> SamplingParams:
    """The request's decoding settings; refuses (400, naming the field) what is not served.
    ``vocab``: the model's vocabulary size, for logit_bias ids."""
    fields.check_fields(body)
    max_tokens = fields.max_tokens(body) or settings.default_max_tokens
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
        max_tokens,
        body.temperature,
        body.top_p,
        body.seed,
        tuple(body.stop or ()),
        body.n,
        frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty,
        logit_bias=fields.logit_bias(body, vocab),
        logprobs=fields.logprobs_k(body),
    )


def vocab_size(gen: GenerativeModel) -> int:
    """Token ids a request may name: in the tokenizer and in the model's output layer."""
    size = len(gen.tokenizer)
    return min(size, getattr(getattr(gen.model, "config", None), "vocab_size", None) or size)


def check_prompt(ids: list[int], settings: ServeSettings) -> None:
    if len(ids) > settings.max_prompt_tokens:
        raise APIError(
            400,
            f"prompt has {len(ids)} tokens; this server's limit is {settings.max_prompt_tokens}",
            code="context_length_exceeded",
        )


def check_prompt_chars(chars: int, gen: GenerativeModel, settings: ServeSettings) -> None:
    """Refuse before tokenizing a prompt too long for max_prompt_tokens however it tokenizes
    (x2 for normalizers that merge characters): a 750 KB prompt costs no tokenizer time."""
    if chars > settings.max_prompt_tokens * gen.max_token_chars * 2:
        raise APIError(
            400,
            f"prompt has {chars} characters, more than this server's limit of "
            f"{settings.max_prompt_tokens} tokens can hold",
            code="context_length_exceeded",
        )


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


async def _until_done(request: Request, work: asyncio.Future, timeout: float) -> None:
    """Until ``work`` is done; cancels it on disconnect (ClientGone) or deadline (504)."""
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait(
            {work, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        watcher.cancel()
    if work in done:
        return
    work.cancel()  # a classifier worker skips cancelled jobs that have not started
    if watcher in done:
        raise ClientGone
    raise APIError(504, "request deadline passed", "server_error", "timeout")


async def wait_for_jobs(request: Request, jobs: list[GenJob], timeout: float) -> None:
    """Until every job is done; cancels them on disconnect (ClientGone) or deadline (504)."""
    work = asyncio.ensure_future(asyncio.gather(*(_drain(j) for j in jobs)))
    try:
        await _until_done(request, work, timeout)
    except (ClientGone, APIError):
        for j in jobs:
            j.cancel()
        raise
    work.result()
    if any(r.finish_reason == "cancelled" for j in jobs for r in j.rows):
        raise APIError(504, "request deadline passed", "server_error", "timeout")


def choices(jobs: list[GenJob], screen: OutputScreen) -> list[tuple[int, str, str, list | None]]:
    """(index, text, finish_reason, logprob entries or None) per choice; prompt p's choice i
    has index p*n + i. A choice an output guard blocked ends with "content_filter"."""
    out = []
    for p, job in enumerate(jobs):
        for row in job.rows:
            lps = list(row.logprobs) if job.params.logprobs is not None else None
            index = p * job.params.n + row.index
            text, blocked = screen.whole(index, row.text)
            reason = "content_filter" if blocked else row.finish_reason or "length"
            out.append((index, text, reason, lps))
    return out


def usage(jobs: list[GenJob]) -> dict[str, int]:
    prompt = sum(len(j.prompt_ids) for j in jobs)
    completion = sum(j.completion_tokens for j in jobs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def output_screen(request: Request, ctx: GuardContext, body: Any) -> OutputScreen | None:
    """What screens this request's answers (None: nothing, they are sent as generated)."""
    hooks = request.app.state.output_guards
    hook = (lambda text: run_output_guards(hooks, ctx, text)) if hooks else None
    fmt = JsonFormat.from_request(getattr(body, "response_format", None))
    guards = getattr(request.app.state, "guard_set", None) if ctx.route != "classify" else None
    if hook is None and fmt is None and not (guards and guards.outputs):
        return None
    return OutputScreen(guards, hook, fmt)


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def stream_events(
    jobs: list[GenJob], deadline: float, screen: OutputScreen | None
) -> AsyncIterator[tuple[str, int, str, list]]:
    """("delta"|"finish", choice index, text|reason, logprob entries) in order, each choice
    through the output screen when there is one."""
    streams: dict[int, ChoiceStream] = {}
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
            entries = rest[2] if len(rest) > 2 else []
            if screen is None:
                yield kind, index, rest[1], entries
                continue
            one = streams.get(index) or streams.setdefault(index, screen.stream(index))
            async for event in _screened(screen, one, kind, rest[1], entries):
                yield event
            _stop_if_blocked(job, p, streams)


def _stop_if_blocked(job: GenJob, p: int, streams: dict[int, ChoiceStream]) -> None:
    """A job whose choices an output guard all blocked stops generating (nothing more of it
    would be sent)."""
    n = job.params.n
    if not job.cancelled and all(
        (one := streams.get(p * n + i)) is not None and one.blocked for i in range(n)
    ):
        job.cancel()


async def _screened(
    screen: OutputScreen, one: ChoiceStream, kind: str, value: str, entries: list
) -> AsyncIterator[tuple[str, int, str, list]]:
    """One engine event of a screened choice as the events to send (detectors off the loop)."""
    run = asyncio.to_thread if screen.heavy else _now
    if kind == "delta":
        text, entries = await run(one.feed, value, entries)
        yield "delta", one.index, text, entries
        return
    text, entries = await run(one.end)
    if text or entries:
        yield "delta", one.index, text, entries
    yield "finish", one.index, "content_filter" if one.blocked else value, []


async def _now(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


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
    guard: OutputScreen | None,
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
            async for kind, index, value, entries in stream_events(jobs, deadline, guard):
                if kind == "delta" and (value or entries):
                    yield sse(make_chunk(index, value, None, entries))
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
            _record_stream_end(tracker, jobs, status, err_code, guard)

    headers = {"Cache-Control": "no-cache", "X-Request-Id": tracker.id}
    return _ClosingStream(body(), media_type="text/event-stream", headers=headers)


def _record_stream_end(
    tracker: Tracker,
    jobs: list[GenJob],
    status: int,
    code: str | None,
    screen: OutputScreen | None = None,
):
    if screen is not None:
        screen.record(tracker)  # the guards' decisions go in the request's log row
    if status == 499:
        tracker.abandon(usage(jobs))
    else:
        tracker.finish(status, code)
