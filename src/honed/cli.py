"""The ``honed`` command line: a thin layer over the library.

Only argparse and honed's light modules are imported at start-up; each command imports what it
needs when it runs, so ``honed --help`` stays fast. Stage packages add their own commands via
a ``commands`` module exposing ``register(subparsers)`` (listed in ``_COMMAND_MODULES``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence

from honed import __version__
from honed.errors import HonedError
from honed.quiet import defer_bitsandbytes, filter_unavoidable_warnings

# Each module defines register(subparsers) adding its sub-commands (with set_defaults(func=...)).
_COMMAND_MODULES = (
    "honed.pipeline.commands",
    "honed.pipeline.loop_commands",
    "honed.pipeline.scan_commands",
    "honed.registry.commands",
    "honed.serve.commands",
    "honed.deploy.commands",
    "honed.monitor.commands",
    "honed.security.commands",
    "honed.security.audit_commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="honed",
        description="Turn a general pretrained model into a specialist and keep it healthy.",
    )
    parser.add_argument("--version", action="version", version=f"honed {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        default=os.environ.get("HONED_DEBUG", "") not in ("", "0"),
        help="show the traceback of an unexpected error (also: HONED_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    filter_unavoidable_warnings()
    defer_bitsandbytes()  # imported by peft when installed, used by QLoRA only
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int | None] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except HonedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug or an environment problem: one line unless --debug
        if args.debug:
            raise
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        print("run with --debug for the traceback", file=sys.stderr)
        return 1
    finally:
        sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
