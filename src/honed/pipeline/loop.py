"""The closed loop (``honed loop run``): rounds of collect -> train -> gate -> canary -> decide.

This module is the state machine and nothing else: the steps themselves live in
``loop_steps.py`` and the triggers in ``triggers.py``, both passed in, so tests drive the
machine with fake steps.

State, in ``$HONED_HOME/loops/NAME/``::

    loop.lock              held (fcntl) while a loop runs; holder's pid, host, start time inside
    rounds/K/state.json    one record per step: status, start/end time, outcome, evidence, data
    rounds/K/...           the round's data folder, spec and run folder (steps write them)
    report.html            every round, rendered from the state files

Every write is atomic (temporary file + replace): a crash leaves the previous state or the
new one, never half a file. A step is recorded ``running`` when it starts and ``done`` when it
finished; the next run of the loop skips ``done`` steps (their recorded ``data`` feeds the
later ones) and re-runs a ``running`` one, which must be idempotent (the training step resumes
from its checkpoints). The champion alias moves only in the ``decide`` step, after the gate
and the canary.

``honed loop step STEP SPEC --round N`` runs one step of a round through the same code and
records (:meth:`LoopRunner.run_step`): a Kubeflow pipeline (``honed deploy pipeline``) runs
each step as its own task on the shared state volume.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from honed.errors import HonedError
from honed.spec import RunSpec

STEPS = ("collect", "train", "gate", "canary", "decide")
STATE_FILE = "state.json"


class LoopLockedError(HonedError):
    """Another loop holds the lock of this model."""


@dataclass
class StepResult:
    """What a step hands back. ``outcome``: one word (``done``, ``passed``, ``failed``,
    ``skipped``, ``promote``, ...); ``evidence``: what the decision rests on (printed and in
    the report); ``data``: what later steps need (paths, versions); ``summary``: one line."""

    outcome: str
    evidence: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


def now() -> datetime:
    return datetime.now(UTC)


def write_json_atomic(path: Path, data: Any) -> None:
    """tmp + fsync + replace: readers see the old file or the new one, never a torn write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as err:
        raise HonedError(
            f"{path}: broken loop state ({err.msg}); move it away to start over"
        ) from None


# --- the lock ------------------------------------------------------------------------------


class LoopLock:
    """An exclusive ``fcntl`` lock on ``path``. The kernel drops it when the holder dies, so a
    lock file left by a killed loop is stale by construction: the next loop takes it and says
    whose it was. A live holder makes :meth:`acquire` raise with its pid, host and start."""

    def __init__(self, path: Path):
        self.path = path
        self._fh: Any = None
        self.stale_holder: dict[str, Any] | None = None

    def acquire(self) -> LoopLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fh)
            fh.close()
            raise LoopLockedError(
                f"another loop is running for this model (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, since {holder.get('since', '?')}); "
                f"lock file {self.path}. Wait for it or stop it first."
            ) from None
        previous = _holder(fh)
        if previous.get("pid"):
            self.stale_holder = previous  # its process died without releasing: stale
        fh.seek(0)
        fh.truncate()
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": now().isoformat()}
        fh.write(json.dumps(me))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is None:
            return
        self._fh.seek(0)
        self._fh.truncate()  # an empty file: released cleanly, not stale
        self._fh.flush()
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        self._fh.close()
        self._fh = None

    def __enter__(self) -> LoopLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fh: Any) -> dict[str, Any]:
    fh.seek(0)
    try:
        return json.loads(fh.read() or "{}")
    except json.JSONDecodeError:
        return {}


# --- the loop folder -----------------------------------------------------------------------


class LoopHome:
    """``$HONED_HOME/loops/NAME``: the rounds and the lock of one loop."""

    def __init__(self, root: Path):
        self.root = root

    @classmethod
    def for_spec(cls, spec: RunSpec) -> LoopHome:
        from honed.state import state_dir

        return cls(state_dir() / "loops" / spec.name)

    @property
    def lock_path(self) -> Path:
        return self.root / "loop.lock"

    @property
    def report_path(self) -> Path:
        return self.root / "report.html"

    def round_dir(self, number: int) -> Path:
        return self.root / "rounds" / str(number)

    def rounds(self) -> list[dict[str, Any]]:
        """Every round's state, oldest first."""
        folder = self.root / "rounds"
        if not folder.is_dir():
            return []
        numbers = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
        found = [read_json(self.round_dir(n) / STATE_FILE) for n in numbers]
        return [r for r in found if r]

    def unfinished(self) -> dict[str, Any] | None:
        rounds = self.rounds()
        return rounds[-1] if rounds and not rounds[-1].get("ended") else None


def lock_for(spec: RunSpec) -> LoopLock:
    """One lock per registered model: two loops (even of two specs) never train the same
    model at once."""
    from honed.state import state_dir

    return LoopLock(state_dir() / "loops" / ".locks" / f"{spec.registered_name()}.lock")


# --- one round -----------------------------------------------------------------------------


@dataclass
class RoundContext:
    """What a step sees: the spec, the round's folder, the finished steps' records
    (``results[step]["data"]``), its own saved progress, and the loop's earlier rounds."""

    spec: RunSpec
    number: int
    folder: Path
    trigger: dict[str, Any]
    server: str | None
    results: dict[str, dict[str, Any]]
    previous_rounds: list[dict[str, Any]]
    progress: dict[str, Any] = field(default_factory=dict)
    save_progress: Callable[[dict[str, Any]], None] = lambda _p: None
    say: Callable[[str], None] = print

    def data(self, step: str) -> dict[str, Any]:
        return (self.results.get(step) or {}).get("data") or {}

    def outcome(self, step: str) -> str | None:
        return (self.results.get(step) or {}).get("outcome")


Step = Callable[[RoundContext], StepResult]


class Round:
    """One round's state file and the running of its steps in order."""

    def __init__(self, folder: Path, state: dict[str, Any]):
        self.folder = folder
        self.state = state

    @classmethod
    def start(cls, folder: Path, number: int, trigger: dict[str, Any]) -> Round:
        state = {
            "round": number,
            "trigger": trigger,
            "started": now().isoformat(),
            "ended": None,
            "outcome": None,
            "steps": {},
        }
        new = cls(folder, state)
        new.save()
        return new

    @classmethod
    def load(cls, folder: Path) -> Round:
        return cls(folder, read_json(folder / STATE_FILE))

    def save(self) -> None:
        write_json_atomic(self.folder / STATE_FILE, self.state)

    def record(self, step: str, **fields: Any) -> None:
        self.state["steps"].setdefault(step, {}).update(fields)
        self.save()

    def finished_steps(self) -> list[str]:
        return [s for s in STEPS if (self.state["steps"].get(s) or {}).get("status") == "done"]

    def waiting_for(self, name: str) -> list[str]:
        """The steps before ``name`` that have not finished (a step runs only after them)."""
        done = set(self.finished_steps())
        return [s for s in STEPS[: STEPS.index(name)] if s not in done]

    def run(
        self,
        steps: Mapping[str, Step],
        make_context: Callable[[dict[str, dict[str, Any]]], RoundContext],
    ) -> dict[str, Any]:
        """Run every step not yet done; return the final state."""
        for name in STEPS:
            if (self.state["steps"].get(name) or {}).get("status") == "done":
                continue  # finished before a crash: never run twice
            self.run_step(name, steps[name], make_context)
        return self.finish()

    def run_step(
        self,
        name: str,
        step: Step,
        make_context: Callable[[dict[str, dict[str, Any]]], RoundContext],
    ) -> dict[str, Any]:
        """Run one step (recorded ``running``, then ``done`` with its result); return its
        record. The embedded loop and ``honed loop step`` (a pipeline task) both come here."""
        record = self.state["steps"].get(name) or {}
        ctx = make_context(self._done())
        ctx.progress = dict(record.get("progress") or {})
        ctx.save_progress = self._progress_saver(name, ctx)
        if record.get("status") == "running":
            ctx.say(f"  {name}: resuming (interrupted at {record.get('started')})")
        attempts = int(record.get("attempts") or 0) + 1  # > 1: resumed after a crash
        self.record(
            name, status="running", started=now().isoformat(), ended=None, attempts=attempts
        )
        result = step(ctx)
        self.record(
            name,
            status="done",
            ended=now().isoformat(),
            outcome=result.outcome,
            summary=result.summary,
            evidence=result.evidence,
            data=result.data,
        )
        ctx.say(f"  {name}: {result.outcome}" + (f" - {result.summary}" if result.summary else ""))
        return self.state["steps"][name]

    def finish(self) -> dict[str, Any]:
        """Close the round after its last step: its outcome is the decision's."""
        decide = self.state["steps"].get("decide") or {}
        self.state.update(ended=now().isoformat(), outcome=decide.get("outcome"))
        self.save()
        return self.state

    def _done(self) -> dict[str, dict[str, Any]]:
        return {s: r for s, r in self.state["steps"].items() if (r or {}).get("status") == "done"}

    def _progress_saver(self, name: str, ctx: RoundContext) -> Callable[[dict[str, Any]], None]:
        def save(progress: dict[str, Any]) -> None:
            ctx.progress = dict(progress)
            self.record(name, progress=ctx.progress)

        return save


# --- the loop ------------------------------------------------------------------------------


@dataclass
class LoopRunner:
    """Runs rounds of one spec. ``steps``: step name -> function (``loop_steps.STEPS`` for
    real work); ``check_triggers(spec, home) -> dict | None``: the trigger that fired
    (``triggers.check``), None when none did; ``on_round_end(home)``: e.g. the HTML report."""

    spec: RunSpec
    steps: Mapping[str, Step]
    home: LoopHome
    server: str | None = None
    check_triggers: Callable[[RunSpec, LoopHome], dict[str, Any] | None] | None = None
    on_round_end: Callable[[LoopHome], None] | None = None
    say: Callable[[str], None] = print
    sleep: Callable[[float], None] = time.sleep

    def resume_unfinished(self) -> dict[str, Any] | None:
        """Finish the round a crash interrupted, if there is one."""
        pending = self.home.unfinished()
        if pending is None:
            return None
        number = int(pending["round"])
        done = Round.load(self.home.round_dir(number)).finished_steps()
        self.say(
            f"round {number}: resuming after {done[-1] if done else 'no finished step'} "
            f"(done: {', '.join(done) or 'none'})"
        )
        return self._run(Round.load(self.home.round_dir(number)))

    def next_number(self) -> int:
        return len(self.home.rounds()) + 1

    def run_once(self, trigger: dict[str, Any]) -> dict[str, Any]:
        number = self.next_number()
        self.say(f"round {number}: triggered by {trigger.get('kind')}: {trigger.get('reason', '')}")
        return self._run(Round.start(self.home.round_dir(number), number, trigger))

    def watch(self, max_rounds: int | None = None) -> list[dict[str, Any]]:
        """Poll the triggers every ``loop.poll_seconds``; a round when one fires."""
        if self.check_triggers is None:
            raise HonedError("watch mode needs triggers")
        done: list[dict[str, Any]] = []
        while max_rounds is None or len(done) < max_rounds:
            fired = self.check_triggers(self.spec, self.home)
            if fired is None:
                self.sleep(self.spec.loop.poll_seconds)
                continue
            done.append(self.run_once(fired))
        return done

    def run_step(self, name: str, number: int, trigger: dict[str, Any]) -> tuple[Round, bool]:
        """Run one step of round ``number`` (a pipeline task's unit of work) with the same
        steps, context and records as :meth:`run_once`. The first step starts the round; a
        later one refuses to run before its predecessors finished; a finished step is not run
        again. Returns the round and whether the step ran now."""
        if name not in STEPS:
            raise HonedError(f"unknown loop step {name!r}: one of {', '.join(STEPS)}")
        folder = self.home.round_dir(number)
        if (folder / STATE_FILE).is_file():
            rnd = Round.load(folder)
        else:
            self._check_new_round(name, number)
            self.say(
                f"round {number}: triggered by {trigger.get('kind')}: {trigger.get('reason', '')}"
            )
            rnd = Round.start(folder, number, trigger)
        if (rnd.state["steps"].get(name) or {}).get("status") == "done":
            return rnd, False
        waiting = rnd.waiting_for(name)
        if waiting:
            raise HonedError(
                f"round {number}: {name} runs after {', '.join(waiting)}, which "
                f"{'has' if len(waiting) == 1 else 'have'} not finished; run "
                f"`honed loop step {waiting[0]} ... --round {number}` first"
            )
        rnd.run_step(name, self.steps[name], self._context_factory(rnd))
        if name == STEPS[-1]:
            self._end(rnd.finish())
        return rnd, True

    def _check_new_round(self, name: str, number: int) -> None:
        if name != STEPS[0]:
            raise HonedError(
                f"round {number} has not started: its first step is {STEPS[0]} "
                f"(`honed loop step {STEPS[0]} ... --round {number}`)"
            )
        pending = self.home.unfinished()
        if pending is not None:
            raise HonedError(
                f"round {pending['round']} is unfinished: finish it first (its remaining "
                f"steps with --round {pending['round']}, or `honed loop run SPEC --resume`)"
            )
        if number != self.next_number():
            raise HonedError(f"round {number}: the next round of this loop is {self.next_number()}")

    def _context_factory(self, rnd: Round) -> Callable[[dict[str, dict[str, Any]]], RoundContext]:
        previous = [r for r in self.home.rounds() if r.get("round") != rnd.state["round"]]

        def make_context(results: dict[str, dict[str, Any]]) -> RoundContext:
            return RoundContext(
                spec=self.spec,
                number=int(rnd.state["round"]),
                folder=rnd.folder,
                trigger=rnd.state.get("trigger") or {},
                server=self.server,
                results=results,
                previous_rounds=previous,
                say=self.say,
            )

        return make_context

    def _run(self, rnd: Round) -> dict[str, Any]:
        return self._end(rnd.run(self.steps, self._context_factory(rnd)))

    def _end(self, state: dict[str, Any]) -> dict[str, Any]:
        self.say(f"round {state['round']}: {state['outcome']}")
        if self.on_round_end is not None:
            self.on_round_end(self.home)
        return state
