"""Resume: a loop killed (SIGKILL) at each step in turn finishes correctly on the next run and
never trains twice what was finished.

For every step of a round (collect, train, gate, canary, decide) and two moments (``start``:
the step is recorded running, nothing done yet; ``end``: its work is done, e.g. the model
trained and registered, but the step is not recorded yet), a child process runs
``honed loop run SPEC --once`` and kills itself there; a second child runs
``honed loop run SPEC --resume``. Checked per case: the round ended with the same decision as
an uninterrupted run; every step recorded before the kill was not run again; the training ran
(``train_and_evaluate`` completed) exactly once; one challenger version was registered.

    .venv/bin/python bench/loop_resume.py            # tiny random BERT, real steps (~5 min)
    .venv/bin/python bench/loop_resume.py --fake     # fake steps: the state machine alone

The real steps run without a server (the canary is skipped, the gate decides); the champion
is trained once and its state folder copied per case (the embedded registry is movable).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests package (tiny models)
STEPS = ("collect", "train", "gate", "canary", "decide")


# --- the child: one loop run, killed where asked ---------------------------------------------


def _journal(path: Path, **event: object) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(event) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _wrap(name: str, fn, journal: Path, kill: tuple[str, str] | None):
    def step(ctx):
        _journal(journal, event="start", step=name)
        if kill == (name, "start"):
            os.kill(os.getpid(), signal.SIGKILL)
        result = fn(ctx)
        _journal(journal, event="end", step=name)
        if kill == (name, "end"):
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    return step


def _fake_steps(journal: Path):
    from honed.pipeline.loop import StepResult

    def make(name: str):
        def step(ctx):
            if name == "train":  # an idempotent "training": done once, found afterwards
                marker = ctx.folder / "trained"
                if not marker.exists():
                    _journal(journal, event="trained")
                    marker.write_text("v2")
                return StepResult("trained", data={"version": "2", "ref": "m/2"})
            outcome = {"gate": "passed", "canary": "skipped", "decide": "promoted"}
            return StepResult(outcome.get(name, "done"), data={"step": name})

        return step

    return {s: make(s) for s in STEPS}


def child(spec_path: str, journal: Path, kill: tuple[str, str] | None, fake: bool, once: bool):
    import honed.pipeline.run as run_module
    from honed.pipeline import loop_commands, loop_steps

    real_train = run_module.train_and_evaluate

    def counted(*args, **kw):
        result = real_train(*args, **kw)
        _journal(journal, event="trained", version=result.version)
        return result

    run_module.train_and_evaluate = counted
    steps = _fake_steps(journal) if fake else dict(loop_steps.STEPS)
    loop_steps.STEPS = {s: _wrap(s, steps[s], journal, kill) for s in STEPS}
    args = argparse.Namespace(spec=Path(spec_path), once=once, resume=not once, server=None)
    args.max_rounds = None
    loop_commands.cmd_run(args)


# --- the parent: the cases and the table -----------------------------------------------------


def _events(journal: Path) -> list[dict]:
    if not journal.is_file():
        return []
    return [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]


def _run_child(env: dict, spec: Path, journal: Path, kill: str, fake: bool, once: bool) -> int:
    cmd = [sys.executable, __file__, "--child", str(spec), str(journal), kill]
    cmd += ["--fake"] if fake else []
    cmd += ["--once"] if once else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.returncode


def _prepare(work: Path, fake: bool) -> tuple[Path, Path]:
    """A spec + a state folder holding the champion (tiny mode) + one inbox file."""
    import yaml
    from tests.helpers import classification_spec_dict, tiny_bert_folder, write_phrasebank

    home = work / "home"
    home.mkdir(parents=True)
    inbox = work / "inbox"
    inbox.mkdir()
    rows = [{"text": f"sales fell sharply again {i}", "label": "negative"} for i in range(12)]
    (inbox / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = classification_spec_dict(
        tiny_bert_folder(work / "tiny"), write_phrasebank(work / "pb.txt"), work / "champion"
    )
    doc["training"]["epochs"] = 1
    doc["loop"] = {"inbox": str(inbox), "request_log_url": f"sqlite:///{work / 'req.db'}"}
    spec_path = work / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(doc))
    if not fake:
        code = (
            "import sys; from honed.spec import load_spec;"
            "from honed.pipeline.run import train_and_evaluate;"
            "from honed.registry.store import Registry;"
            "s = load_spec(sys.argv[1]); r = train_and_evaluate(s);"
            "Registry(s.registry).promote(s.registered_name(), r.version)"
        )
        env = {**os.environ, "HONED_HOME": str(home)}
        subprocess.run([sys.executable, "-c", code, str(spec_path)], env=env, check=True)
    return spec_path, home


def _case(base: Path, spec: Path, home: Path, kill: str, fake: bool) -> dict:
    case = base / kill.replace(":", "-")
    shutil.copytree(home, case / "home")
    env = {**os.environ, "HONED_HOME": str(case / "home"), "PYTHONPATH": os.pathsep.join(sys.path)}
    journal = case / "journal.jsonl"
    first = _run_child(env, spec, journal, kill, fake, once=True)
    before = _events(journal)
    second = _run_child(env, spec, journal, "none", fake, once=False) if kill != "none" else 0
    after = _events(journal)[len(before) :]
    return _judge(case / "home", spec, kill, first, second, before, after, fake)


def _judge(home, spec, kill, first, second, before, after, fake) -> dict:
    os.environ["HONED_HOME"] = str(home)
    from honed.pipeline.loop import LoopHome
    from honed.spec import load_spec

    loaded = load_spec(spec)
    rounds = LoopHome.for_spec(loaded).rounds()
    state = rounds[-1] if rounds else {}
    # Recorded before the kill: every step that ended, but the one killed right at its end
    # (its work was done, its record was not written: it must run again, idempotently).
    killed_step = kill.split(":")[0]
    ended = {e["step"] for e in before if e["event"] == "end"}
    ended_before = ended - {killed_step} if kill.endswith(":end") else ended
    rerun = sorted({e["step"] for e in after if e["event"] == "start"} & ended_before)
    trained = sum(e["event"] == "trained" for e in before + after)
    versions = None
    if not fake:
        from honed.registry.store import Registry

        versions = len(Registry(loaded.registry).versions(loaded.registered_name()))
    return {
        "kill": kill,
        "killed": first == -signal.SIGKILL,
        "rounds": len(rounds),
        "ended": bool(state.get("ended")),
        "outcome": state.get("outcome"),
        "finished_steps_rerun": rerun,
        "trainings": trained,
        "versions": versions,
    }


def _print(rows: list[dict], expected: str | None) -> bool:
    print(f"{'killed at':<16} {'killed':>6} {'ended':>5} {'outcome':<10} {'re-run':<22} "
          f"{'trainings':>9} {'versions':>8}  ok")  # fmt: skip
    all_ok = True
    for r in rows:
        ok = (
            r["ended"]
            and r["rounds"] == 1
            and r["outcome"] == expected
            and not r["finished_steps_rerun"]
            and r["trainings"] == 1
            and r["versions"] in (None, 2)
            and (r["killed"] or r["kill"] == "none")
        )
        all_ok &= bool(ok)
        rerun = ",".join(r["finished_steps_rerun"]) or "-"
        print(
            f"{r['kill']:<16} {r['killed']!s:>6} {r['ended']!s:>5} {r['outcome']!s:<10} "
            f"{rerun:<22} {r['trainings']:>9} {r['versions']!s:>8}  {'yes' if ok else 'NO'}"
        )
    return all_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fake", action="store_true", help="fake steps (state machine only)")
    parser.add_argument(
        "--child", nargs=3, metavar=("SPEC", "JOURNAL", "KILL"), help=argparse.SUPPRESS
    )
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--only", help="comma-separated cases, e.g. train:end,decide:start (default: all)"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        spec, journal, kill = args.child
        where = None if kill == "none" else tuple(kill.split(":"))
        child(spec, Path(journal), where, args.fake, args.once)
        return
    with tempfile.TemporaryDirectory(prefix="loop-resume-") as tmp:
        work = Path(tmp)
        spec, home = _prepare(work, args.fake)
        kills = ["none"] + [f"{s}:{when}" for s in STEPS for when in ("start", "end")]
        if args.only:  # the uninterrupted run stays first: the decision to compare with
            kills = ["none", *[k for k in args.only.split(",") if k != "none"]]
        rows = [_case(work / "cases", spec, home, kill, args.fake) for kill in kills]
    expected = rows[0]["outcome"]  # the uninterrupted run's decision
    mode = "fake steps" if args.fake else "real steps, tiny model, no server"
    print(f"loop resume ({mode}); uninterrupted decision: {expected}")
    ok = _print(rows, expected)
    print("all cases finish correctly, none trains twice" if ok else "SOME CASES FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
