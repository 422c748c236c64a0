"""CLI: ``honed loop run SPEC [--once] [--server URL] [--resume]``, ``honed loop status SPEC``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


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
    status = lsub.add_parser(
        "status",
        help="the loop's rounds and their decisions",
        description="Rounds (trigger, step outcomes, decision), the unfinished one if any.",
    )
    status.add_argument("spec", type=Path, help="YAML run spec")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)


def cmd_run(args: argparse.Namespace) -> int:
    from honed.pipeline import loop_steps, triggers
    from honed.pipeline.loop import LoopHome, LoopRunner, lock_for
    from honed.pipeline.loop_report import decision_lines, write_report
    from honed.spec import load_spec

    spec = load_spec(args.spec)
    home = LoopHome.for_spec(spec)

    def report(home: LoopHome) -> None:
        rounds = home.rounds()
        if rounds:
            print("\n".join(decision_lines(rounds[-1])))
        print(f"report: {write_report(home)}")

    runner = LoopRunner(
        spec,
        loop_steps.STEPS,
        home,
        server=args.server,
        check_triggers=triggers.check,
        on_round_end=report,
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
