"""CLI: ``honed data scan SPEC``: the data scan ``honed run`` does before training, alone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser(
        "data",
        help="inspect a spec's training data",
        description="Commands on the data a spec trains on.",
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    scan = data_sub.add_parser(
        "scan",
        help="scan a spec's data for PII, secrets, poisoning and label problems",
        description="Prepare the spec's data as `honed run` does, then scan it: PII, secrets, "
        "duplicates with conflicting labels, likely label errors, planted trigger phrases and "
        "outliers (the last four for classification). Prints what was found and what the "
        "spec's scan.policy would do; nothing is written. Exit 1 when a finding's policy is "
        "'fail' (the run would stop), 0 otherwise.",
    )
    scan.add_argument("spec", type=Path, help="YAML run spec")
    scan.add_argument("--json", action="store_true", help="print the report's scan section")
    scan.set_defaults(func=cmd_scan)
    data.set_defaults(func=lambda args: data.print_help() or 2)


def cmd_scan(args: argparse.Namespace) -> int:
    from honed.pipeline.check import check_data
    from honed.pipeline.scan import scan_data, summary_lines
    from honed.spec import load_spec
    from honed.train.tasks import get_task

    spec = load_spec(args.spec)
    if not spec.scan.enabled:
        spec = spec.with_overrides(scan={**spec.scan.model_dump(), "enabled": True})
    check_data(spec)
    data = get_task(spec.task).prepare_data(spec)
    outcome = scan_data(spec, data)
    assert outcome is not None  # enabled above: scanning is what was asked for
    if args.json:
        print(json.dumps(outcome.report, indent=2, default=str))
    else:
        print("\n".join(summary_lines(outcome)))
    return 1 if outcome.failures else 0
