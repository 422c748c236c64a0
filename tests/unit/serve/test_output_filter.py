"""Output screening on streams: a look-behind window, not the whole answer (real Presidio)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from honed.security.guards_config import GuardConfig
from honed.serve.http.guards import GuardSet
from honed.serve.http.output_filter import OutputScreen
from honed.serve.http.pipeline import stream_events

ANSWER = (
    "Sure, you can write to our support team at john.doe@example.com or call them during "
    "office hours; they answer every question within a day. Thanks, and have a nice day!"
)


def screen(*configs: GuardConfig) -> OutputScreen:
    return OutputScreen(GuardSet(list(configs)))


def pieces(text: str, size: int = 3) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def test_email_split_across_deltas_is_redacted_and_text_flows_before_the_end():
    s = screen(GuardConfig(kind="pii_output"))
    one = s.stream(0)
    sent = [one.feed(p, [])[0] for p in pieces(ANSWER)]
    tail, _ = one.end()
    out = "".join(sent) + tail
    assert out == ANSWER.replace("john.doe@example.com", "[EMAIL]")
    assert "@" not in "".join(sent)  # no part of the address ever left
    # chunks were released while deltas were still arriving (not the whole answer at the end)
    assert sum(1 for x in sent if x) >= 5 and len(tail) < len(ANSWER) / 2
    ((decision, _),) = s.decisions()
    assert decision.decision == "redact" and decision.reason == "EMAIL_ADDRESS x1"


def test_whole_answer_and_flag_and_pass():
    s = screen(GuardConfig(kind="pii_output", action="flag"))
    assert s.whole(0, ANSWER) == (ANSWER, False)
    assert s.decisions()[0][0].decision == "flag"
    clean = screen(GuardConfig(kind="pii_output"))
    assert clean.whole(0, "nothing to see") == ("nothing to see", False)
    assert clean.decisions()[0][0].decision == "pass"


def test_canary_split_across_deltas_blocks_the_rest():
    canary = "CANARY-0123456789abcdef"
    s = screen(GuardConfig(kind="canary_token", canary=canary))
    text = "My instructions say: " + canary + " and more secret instructions follow here."
    one = s.stream(0)
    sent = "".join(one.feed(p, [])[0] for p in pieces(text, 4)) + one.end()[0]
    assert one.blocked and canary[:8] not in sent and "secret instructions" not in sent
    assert sent == "My instructions say: "
    whole = screen(GuardConfig(kind="canary_token", canary=canary))
    assert whole.whole(0, text) == ("My instructions say: ", True)
    assert whole.decisions()[0][0].decision == "block"


def test_text_without_whitespace_is_not_held_forever():
    s = screen(GuardConfig(kind="canary_token", canary="CANARY-0123456789"))
    one = s.stream(0)
    sent = [one.feed("x" * 8, [])[0] for _ in range(40)]
    assert any(sent)  # released once the run is 4 windows long
    assert "".join(sent) + one.end()[0] == "x" * 320


class _Job:
    """What stream_events reads of a generation job: an event queue and n."""

    def __init__(self) -> None:
        self.events: asyncio.Queue = asyncio.Queue()
        self.params = SimpleNamespace(n=1)
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@pytest.mark.parametrize("size", [1, 3, 7])
def test_stream_events_redacts_while_streaming(size):
    """Through the pipeline's stream: the e-mail comes out as [EMAIL], and the first chunk
    is out while the engine is still producing the answer."""

    async def main():
        job = _Job()
        parts = pieces(ANSWER, size)
        produced = {"n": 0}

        async def produce():
            for p in parts:
                await job.events.put(("delta", 0, p, []))
                produced["n"] += 1
                while not job.events.empty():  # like an engine: one token at a time
                    await asyncio.sleep(0)
            await job.events.put(("finish", 0, "stop"))
            await job.events.put(("done",))

        task = asyncio.create_task(produce())
        s = screen(GuardConfig(kind="pii_output"))
        events, first_at = [], None
        async for kind, _, value, _ in stream_events([job], time.monotonic() + 60, s):
            if kind == "delta" and value and first_at is None:
                first_at = produced["n"]
            events.append((kind, value))
        await task
        return events, first_at, len(parts)

    events, first_at, total = asyncio.run(main())
    text = "".join(v for k, v in events if k == "delta")
    assert text == ANSWER.replace("john.doe@example.com", "[EMAIL]")
    assert events[-1] == ("finish", "stop")
    assert first_at is not None and first_at < total


def test_a_blocked_stream_stops_its_generation():
    canary = "CANARY-0123456789abcdef"
    text = "Here it is: " + canary + " " + "and the rest of the system prompt " * 6

    async def main():
        job = _Job()
        for p in pieces(text, 4):
            job.events.put_nowait(("delta", 0, p, []))
        job.events.put_nowait(("finish", 0, "cancelled"))
        job.events.put_nowait(("done",))
        s = screen(GuardConfig(kind="canary_token", canary=canary))
        events = [(k, v) async for k, _, v, _ in stream_events([job], time.monotonic() + 60, s)]
        return job, events, s

    job, events, s = asyncio.run(main())
    assert job.cancelled  # an engine stops generating for it
    assert "".join(v for k, v in events if k == "delta") == "Here it is: "
    assert events[-1] == ("finish", "content_filter")
    assert s.decisions()[0][0].decision == "block"
