"""The `honed` command line: every command documents itself; unexpected errors are one line
unless --debug."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

import pytest

from honed import cli


def _subcommands(parser: argparse.ArgumentParser, path: str = "honed"):
    """(command path, parser, help text) of every sub-command, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", sub, helps.get(name)
                yield from _subcommands(sub, f"{path} {name}")


def test_every_subcommand_has_help_and_description():
    found = list(_subcommands(cli.build_parser()))
    assert len(found) >= 20  # run, models list, monitor drift, deploy k8s, ...
    missing = [path for path, sub, text in found if not (text or "").strip()]
    missing += [path for path, sub, text in found if not (sub.description or "").strip()]
    assert not missing, f"sub-commands without help/description: {missing}"


def test_every_argument_has_help():
    parsers = [("honed", cli.build_parser())]
    parsers += [(path, sub) for path, sub, _ in _subcommands(parsers[0][1])]
    missing = [
        f"{path} {action.option_strings or action.dest}"
        for path, parser in parsers
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert not missing, missing


def _boom(args):
    raise ValueError("bad thing")


@pytest.fixture
def failing_command(monkeypatch):
    build = cli.build_parser

    def with_boom():
        parser = build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.add_parser("boom", help="fails", description="fails").set_defaults(func=_boom)
        return parser

    monkeypatch.setattr(cli, "build_parser", with_boom)


def test_unexpected_error_is_one_line_with_a_hint(failing_command, capsys, monkeypatch):
    monkeypatch.delenv("HONED_DEBUG", raising=False)
    assert cli.main(["boom"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: ValueError: bad thing",
        "run with --debug for the traceback",
    ]


def test_debug_flag_and_env_show_the_traceback(failing_command, monkeypatch):
    monkeypatch.delenv("HONED_DEBUG", raising=False)
    with pytest.raises(ValueError, match="bad thing"):
        cli.main(["--debug", "boom"])
    monkeypatch.setenv("HONED_DEBUG", "1")
    with pytest.raises(ValueError, match="bad thing"):
        cli.main(["boom"])


def test_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("honed.pipeline.commands.cmd_methods", interrupted)
    assert cli.main(["methods"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_cli_keeps_bitsandbytes_out_until_qlora():
    """peft imports bitsandbytes when installed (a 'kernels' notice on some CPUs, seconds of
    start-up); under the CLI it stays unimported unless QLoRA asks for it."""
    script = (
        "import sys; from honed.cli import main; main(['methods']); import peft; "
        "print(sys.modules.get('bitsandbytes') is None); "
        "from honed.models.quantize import require_bitsandbytes; require_bitsandbytes(); "
        "from peft.import_utils import is_bnb_4bit_available; print(is_bnb_4bit_available())"
    )
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["True", "True"]
