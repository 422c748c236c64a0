"""CLI: ``honed models list|show|promote|rollback|history|packaged``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser(
        "models",
        help="the model registry",
        description="List, inspect and promote the models `honed run` registered (MLflow).",
    )
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    lst = msub.add_parser(
        "list",
        help="registered models, versions and aliases",
        description="Each registered model, one line per version: method, test accuracy, aliases.",
    )
    lst.set_defaults(func=cmd_list)

    show = msub.add_parser(
        "show",
        help="one version's lineage and metrics",
        description="Print a version's lineage tags (base digest, data hash, method) and metrics "
        "as JSON.",
    )
    show.add_argument("ref", help="NAME, NAME@ALIAS or NAME/VERSION")
    show.set_defaults(func=cmd_show)

    promote = msub.add_parser(
        "promote",
        help="gate a version against the champion, then point the alias at it",
        description="Run the gate (the challenger against the alias's current holder on the "
        "champion's frozen set: paired tests per gated metric, per-class recall, golden "
        "examples; thresholds from the challenger's spec eval.gate), then move the alias. "
        "A failed gate refuses the move (exit 3) unless --force; every move is recorded "
        "(`honed models history`).",
    )
    promote.add_argument("name", help="registered model name")
    promote.add_argument("version", nargs="?", help="version number (default: the challenger)")
    promote.add_argument("--alias", default="champion", help="alias to move (champion)")
    promote.add_argument(
        "--force", action="store_true", help="move even if the gate fails (recorded as forced)"
    )
    promote.add_argument("--reason", default="", help="why (kept in the history)")
    promote.add_argument("--json", action="store_true", help="print the gate decision as JSON")
    promote.set_defaults(func=cmd_promote)

    rollback = msub.add_parser(
        "rollback",
        help="move the alias back to its previous holder",
        description="Point the alias (champion) back at the version that held it before the "
        "current one, as recorded in the history; recorded as a rollback.",
    )
    rollback.add_argument("name", help="registered model name")
    rollback.add_argument("--alias", default="champion", help="alias to move back (champion)")
    rollback.add_argument("--reason", default="", help="why (kept in the history)")
    rollback.set_defaults(func=cmd_rollback)

    history = msub.add_parser(
        "history",
        help="every alias move, and which version served when",
        description="Every recorded move (register, promote, forced_promote, rollback) with "
        "time, versions, reason and actor, then the intervals each version held each alias.",
    )
    history.add_argument("name", help="registered model name")
    history.add_argument("--json", action="store_true", help="moves and intervals as JSON")
    history.set_defaults(func=cmd_history)

    packaged = msub.add_parser(
        "packaged",
        help="base models shipped in PyPI packages",
        description="Base models usable offline as `model.base: packaged:NAME` in a spec.",
    )
    packaged.set_defaults(func=cmd_packaged)


def _aliases_by_version(model) -> dict[str, list[str]]:
    by_version: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    return by_version


def cmd_list(args: argparse.Namespace) -> int:
    from honed.registry.store import Registry

    registry = Registry()
    models = registry.models()
    if not models:
        print(f"no registered models ({registry.uri})")
        return 0
    for model in models:
        aliases = _aliases_by_version(model)
        print(model.name)
        for version in registry.versions(model.name):
            metrics = registry.run_metrics(version.run_id)
            acc = metrics.get("test_accuracy")
            shown = f"  accuracy {acc:.4f}" if acc is not None else ""
            tags = ",".join(aliases.get(str(version.version), []))
            print(f"  v{version.version:<4} {version.tags.get('method', ''):6s}{shown}  {tags}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from honed.registry.store import ModelRef, Registry, parse_ref

    registry = Registry()
    ref = parse_ref(args.ref) if ("@" in args.ref or "/" in args.ref) else ModelRef(args.ref)
    version = registry.get_version(ref)
    info = {
        "name": version.name,
        "version": version.version,
        "aliases": list(version.aliases or []),
        "source": version.source,
        "run_id": version.run_id,
        "tags": dict(version.tags),
        "metrics": registry.run_metrics(version.run_id),
    }
    print(json.dumps(info, indent=2))
    return 0


def _gate(registry, name: str, target: Any, alias: str) -> tuple[Any, str | None, str | None]:
    """(decision or None, error text, champion version): the gate of `target` against the
    alias's holder; None when the spec turns the gate off or the target already holds it."""
    from honed.errors import HonedError
    from honed.evals.gate_run import gate_folders, gate_settings, record_decision
    from honed.train.tasks.grpo import load_reward_scorer  # reward_model graders (grpo)

    holder = registry.alias_holder(name, alias)
    new_folder = registry.local_folder(target)
    cfg, floors = gate_settings(new_folder)
    if not cfg.enabled or holder == str(target.version):
        return None, None, holder
    old_folder = (
        None if holder is None else registry.local_folder(registry.get_version(f"{name}/{holder}"))
    )
    try:
        decision = gate_folders(new_folder, old_folder, cfg, floors, load_reward_scorer)
    except HonedError as err:
        return None, str(err), holder
    champion = f"{name}/{holder}" if holder else None
    record_decision(decision, name, f"{name}/{target.version}", champion)
    return decision, None, holder


def _print_decision(decision: Any, as_json: bool) -> None:
    from honed.evals.gate_run import describe

    if as_json:
        print(json.dumps(decision.to_dict(), indent=2, default=str))
    else:
        print("\n".join(describe(decision)))


def cmd_promote(args: argparse.Namespace) -> int:
    from honed.registry.store import ModelRef, Registry

    registry = Registry()
    ref = (
        ModelRef(args.name, alias="challenger")
        if args.version is None
        else ModelRef(args.name, version=args.version)
    )
    target = registry.get_version(ref)
    decision, error, holder = _gate(registry, args.name, target, args.alias)
    if decision is not None:
        _print_decision(decision, args.json)
    if error:
        print(f"gate could not run: {error}", file=sys.stderr)
    passed = decision is not None and decision.passed
    if decision is None and error is None:
        passed = True  # gate off in the spec, or nothing to move
    if not passed and not args.force:
        print(
            f"refused: v{target.version} did not pass the gate against "
            f"{f'v{holder}' if holder else 'the floors'}; "
            "pass --force to promote anyway (recorded as forced_promote)",
            file=sys.stderr,
        )
        return 3
    evidence = decision.summary() | {"path": decision.evidence.get("path")} if decision else {}
    if error:
        evidence["gate_error"] = error
    new, previous = registry.promote(
        args.name,
        str(target.version),
        args.alias,
        reason=args.reason or ("forced past the gate" if not passed else "gate passed"),
        evidence=evidence,
        forced=not passed,
    )
    was = f" (was v{previous})" if previous else ""
    forced = " (forced: the gate did not pass)" if not passed else ""
    print(f"{args.name}@{args.alias} -> v{new}{was}{forced}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from honed.registry.store import Registry

    new, old = Registry().rollback(args.name, args.alias, reason=args.reason)
    print(f"{args.name}@{args.alias} -> v{new} (rolled back from v{old})")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from honed.registry.history import read_history, served
    from honed.registry.store import Registry

    registry = Registry()
    entries = read_history(args.name, registry)
    if not entries:
        registry.latest(args.name)  # an unknown name: a RegistryError naming it (exit 2)
    aliases = sorted({e["alias"] for e in entries if e.get("alias")})
    intervals = {alias: served(entries, alias) for alias in aliases}
    if args.json:
        print(json.dumps({"moves": entries, "served": intervals}, indent=2, default=str))
        return 0
    if not entries:
        print(f"{args.name}: no recorded alias moves")
        return 0
    print(f"{args.name}: alias moves")
    for e in entries:
        was = f"v{e['from_version']}" if e.get("from_version") else "-"
        why = f"  {e['reason']}" if e.get("reason") else ""
        print(
            f"  {e['time'][:19]}Z  {e['action']:<14} {e.get('alias') or '-':<10} "
            f"{was:>5} -> v{e['to_version']:<5} by {e['actor']}{why}"
        )
    for alias, spans in intervals.items():
        print(f"{alias}: which version served when")
        for span in spans:
            until = f"{span['until'][:19]}Z" if span["until"] else "now"
            print(f"  v{span['version']:<5} {span['from'][:19]}Z -> {until}  ({span['via']})")
    return 0


def cmd_packaged(args: argparse.Namespace) -> int:
    from honed.models.packaged import PACKAGED

    for name in sorted(PACKAGED):
        print(f"packaged:{name}")
    return 0
