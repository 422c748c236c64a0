"""CLI: ``honed audit verify|show`` (the hash-chained audit log, honed.security.audit)."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser(
        "audit",
        help="the audit log (key creation, adapter loads, promotions, canaries)",
        description="The append-only, hash-chained audit log in $HONED_HOME/audit/.",
    )
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = asub.add_parser(
        "verify",
        help="check the hash chain; exit 1 naming the first broken row",
        description="Walk the chain: every row's hash, seq and link to the row before, and "
        "the head pointer (a truncated tail). Exit 0 when intact, 1 naming the first broken "
        "row. Keep the printed head hash elsewhere to detect a rewrite of the whole tail.",
    )
    verify.add_argument("--json", action="store_true", help="the result as JSON")
    verify.set_defaults(func=cmd_verify)
    show = asub.add_parser("show", help="print the latest rows", description="Latest rows.")
    show.add_argument("--tail", type=int, default=20, metavar="N", help="rows to show (20)")
    show.add_argument("--json", action="store_true", help="one JSON row per line")
    show.set_defaults(func=cmd_show)


def cmd_verify(args: argparse.Namespace) -> int:
    from honed.security.audit import audit_log

    log = audit_log()
    result = log.verify()
    if args.json:
        print(json.dumps({"path": str(log.path), **result.to_dict()}, indent=2))
    else:
        print(result.describe(), file=sys.stdout if result.ok else sys.stderr)
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return 0 if result.ok else 1


def cmd_show(args: argparse.Namespace) -> int:
    from honed.security.audit import RESERVED, audit_log

    rows = audit_log().tail(args.tail)
    for row in rows:
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
            continue
        extra = {k: v for k, v in row.items() if k not in RESERVED}
        shown = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in extra.items())
        when = str(row.get("time", "?"))[:19]
        head = f"{row.get('seq', '?'):>6}  {when}Z  {row.get('event', '?'):<20}"
        print(f"{head} {row.get('actor', '?'):<24} {shown}")
    if not rows:
        print("audit log is empty")
    return 0
