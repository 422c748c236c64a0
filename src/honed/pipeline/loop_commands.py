"""CLI: ``honed loop run SPEC [--once] [--server URL] [--resume]``, ``honed loop status SPEC``,
``honed loop step STEP SPEC --round N`` (one step: a Kubeflow pipeline task)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    loop = sub.add_parser(
        "loop",
        help="retrain, gate, canary and promote on its own (the closed loop)",
        description="Rounds of collect (feedback export + new inbox files) -> train the "
        "challenger -> gate against the champion -> canary on the server -> promote or roll "
        "back, started by the spec's `loop.triggers` (drift alert, new feedback, schedule) or "
        "by hand (--once). State and the HTML report: $HONED_HOME/loops/NAME/.",
    )
    lsub = loop.add_subparsers(dest="loop_command", metavar="COMMAND", required=True)
    run = lsub.add_parser(
        "run",
        help="watch the triggers and run rounds (or one round with --once)",
        description="Finishes an interrupted round first (from its last finished step), then "
        "polls the triggers every loop.poll_seconds and runs a round when one fires. "
        "Only one loop per registered model runs at a time (a lock).",
    )
    run.add_argument("spec", type=Path, help="YAML run spec (with a `loop:` section)")
    run.add_argument("--once", action="store_true", help="run one round now, whatever fires")
    run.add_argument(
        "--server", help="URL of the `honed serve` holding the champion (canary); none: skipped"
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="only finish the interrupted round (if any), then exit",
    )
    run.add_argument(
        "--max-rounds",
        type=int,
        help="watch mode: stop after this many rounds (default: loop.max_rounds)",
    )
    run.set_defaults(func=cmd_run)
    _register_step(lsub)
    status = lsub.add_parser(
        "status",
        help="the loop's rounds and their decisions",
        description="Rounds (trigger, step outcomes, decision), the unfinished one if any.",
    )
    status.add_argument("spec", type=Path, help="YAML run spec")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)


def _register_step(lsub: argparse._SubParsersAction) -> None:
    step = lsub.add_parser(
        "step",
        help="run one step of a round (a pipeline task)",
        description="Runs exactly one step of round N with the code and state of `honed loop "
        "run` (collect -> train -> gate -> canary -> decide), under the loop's lock. collect "
        "starts the round; a "
        "step whose predecessors have not finished is refused; a finished step is not run "
        "again (its recorded outcome is printed). Exit 0 whenever the step ran, whatever it "
        "decided: after a round ended early (nothing collected, gate refused) the later steps "
        "record `skipped` and say so.",
    )
    step.add_argument("step", help="collect, train, gate, canary or decide")
    step.add_argument("spec", type=Path, help="YAML run spec (with a `loop:` section)")
    step.add_argument(
        "--round",
        required=True,
        type=_round_arg,
        help="round number, or `next`: the unfinished round if there is one, else a new one",
    )
    step.add_argument(
        "--server", help="URL of the `honed serve` holding the champion (canary); none: skipped"
    )
    step.add_argument(
        "--trigger",
        type=_trigger_arg,
        help="JSON object recorded as the round's trigger when this step starts it "
        "(default: manual)",
    )
    step.add_argument("--output", type=Path, help="write the step's record (JSON) here")
    step.add_argument("--round-output", type=Path, help="write the round number here")
    step.set_defaults(func=cmd_step)


def _round_arg(text: str) -> int | str:
    if text == "next":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a round number (1, 2, ...) or `next`")
    return int(text)


def _trigger_arg(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err.msg})") from None
    if not isinstance(doc, dict):
        raise argparse.ArgumentTypeError('a JSON object, e.g. {"kind": "pipeline"}')
    return doc


def _report(home: Any) -> None:
    from honed.pipeline.loop_report import decision_lines, write_report

    rounds = home.rounds()
    if rounds:
        print("\n".join(decision_lines(rounds[-1])))
    print(f"report: {write_report(home)}")


def cmd_run(args: argparse.Namespace) -> int:
    from honed.pipeline import loop_steps, triggers
    from honed.pipeline.loop import LoopHome, LoopRunner, lock_for
    from honed.spec import load_spec

    spec = load_spec(args.spec)
    home = LoopHome.for_spec(spec)

    runner = LoopRunner(
        spec,
        loop_steps.STEPS,
        home,
        server=args.server,
        check_triggers=triggers.check,
        on_round_end=_report,
    )
    with lock_for(spec) as lock:
        if lock.stale_holder:
            held = lock.stale_holder
            print(f"lock: previous holder pid {held.get('pid')} on {held.get('host')} is gone")
        runner.resume_unfinished()
        if args.resume:
            return 0
        if args.once:
            runner.run_once(triggers.manual())
        else:
            print(f"watching {spec.name}: triggers every {spec.loop.poll_seconds:g}s")
            runner.watch(args.max_rounds or spec.loop.max_rounds)
    return 0


def cmd_step(args: argparse.Namespace) -> int:
    from honed.pipeline import loop_steps, triggers
    from honed.pipeline.loop import LoopHome, LoopRunner, lock_for, write_json_atomic
    from honed.spec import load_spec

    spec = load_spec(args.spec)
    home = LoopHome.for_spec(spec)
    runner = LoopRunner(
        spec, loop_steps.STEPS, home, server=args.server or None, on_round_end=_report
    )
    trigger = {**triggers.manual("honed loop step"), **(args.trigger or {})}
    with lock_for(spec):  # the whole step: no loop or other task runs this model meanwhile
        number = _resolve_round(runner, args.round)
        rnd, ran = runner.run_step(args.step, number, trigger)
    record = rnd.state["steps"][args.step]
    if not ran:
        summary = f" - {record['summary']}" if record.get("summary") else ""
        print(f"round {number}: {args.step} already done: {record['outcome']}{summary}")
    outcomes = {s: (r or {}).get("outcome") for s, r in rnd.state["steps"].items()}
    ended = loop_steps.ended_at(outcomes)
    if ended and ended != args.step and args.step != "decide":
        print(f"skipped: round ended at {ended} ({outcomes[ended]})")
    doc = {
        "loop": spec.name,
        "round": number,
        "step": args.step,
        "ran": ran,
        **record,
        "round_ended_at": ended,
        "round_outcome": rnd.state.get("outcome"),
    }
    if args.output:
        write_json_atomic(args.output, doc)
    if args.round_output:
        args.round_output.parent.mkdir(parents=True, exist_ok=True)
        args.round_output.write_text(str(number))
    return 0


def _resolve_round(runner: Any, wanted: int | str) -> int:
    """`next`: the unfinished round (finished first, as `honed loop run` does), else a new
    one."""
    if wanted != "next":
        return int(wanted)
    pending = runner.home.unfinished()
    if pending is not None:
        print(f"round {pending['round']} is unfinished: continuing it")
        return int(pending["round"])
    return runner.next_number()


def cmd_status(args: argparse.Namespace) -> int:
    from honed.pipeline.loop import LoopHome
    from honed.pipeline.loop_report import status_doc
    from honed.spec import load_spec

    doc = status_doc(LoopHome.for_spec(load_spec(args.spec)))
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"loop folder: {doc['loop']}")
    if not doc["rounds"]:
        print("no rounds yet")
    for r in doc["rounds"]:
        steps = " ".join(f"{k}={v or '-'}" for k, v in r["steps"].items())
        print(f"round {r['round']}: {r['outcome'] or 'UNFINISHED'} ({r['trigger']}) {steps}")
    if doc["unfinished"]:
        print(f"round {doc['unfinished']} is unfinished: `honed loop run SPEC --resume`")
    if doc["report"]:
        print(f"report: {doc['report']}")
    return 0
