"""Train-stage commands: ``honed merge`` and ``honed score`` (reward models).

Each command imports its heavy modules inside the handler so ``honed --help`` stays fast.
"""

from __future__ import annotations

import argparse


def _merge(args: argparse.Namespace) -> int:
    from honed.registry.store import resolve_ref
    from honed.train.merge import merge_adapter

    adapter = resolve_ref(args.ref)
    out = merge_adapter(adapter, args.out, force=args.force)
    print(f"merged {adapter} -> {out}")
    return 0


def _register_merge(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "merge",
        help="Merge a LoRA/QLoRA adapter into its base: one standalone model folder.",
        description="Load the adapter's base (checking its digest), apply the adapter, "
        "merge_and_unload and save a plain model folder with the tokenizer and a lineage.json "
        "that points to the base digest and the adapter. A QLoRA adapter's 4-bit base is "
        "dequantized first (a warning explains the quality cost).",
    )
    parser.add_argument("ref", help="Adapter folder, NAME@ALIAS or NAME/VERSION.")
    parser.add_argument("--out", required=True, help="Folder to write the merged model into.")
    parser.add_argument("--force", action="store_true", help="Replace a non-empty --out folder.")
    parser.set_defaults(func=_merge)


def register(sub: argparse._SubParsersAction) -> None:
    _register_merge(sub)
    from honed.train.score import register_score  # light at import: argparse only

    register_score(sub)
