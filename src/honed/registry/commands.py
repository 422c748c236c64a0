"""CLI: ``honed models list|show|promote``."""

from __future__ import annotations

import argparse
import json


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
        help="point an alias (default: champion) at a version",
        description="Move an alias to a version: NAME@ALIAS refs resolve to it from then on.",
    )
    promote.add_argument("name", help="registered model name")
    promote.add_argument("version", nargs="?", help="version number (default: the challenger)")
    promote.add_argument("--alias", default="champion", help="alias to move (champion)")
    promote.set_defaults(func=cmd_promote)

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


def cmd_promote(args: argparse.Namespace) -> int:
    from honed.registry.store import Registry

    new, previous = Registry().promote(args.name, args.version, args.alias)
    was = f" (was v{previous})" if previous else ""
    print(f"{args.name}@{args.alias} -> v{new}{was}")
    return 0


def cmd_packaged(args: argparse.Namespace) -> int:
    from honed.models.packaged import PACKAGED

    for name in sorted(PACKAGED):
        print(f"packaged:{name}")
    return 0
