"""Progress bars: on a terminal, off in pipes and CI, HONED_PROGRESS=0/1 overrides."""

from __future__ import annotations

import io

from honed import progress as prog


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.delenv("HONED_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    items = [1, 2, 3]
    assert prog.progress(items, "x") is items


def test_on_for_a_terminal_and_env_overrides(monkeypatch):
    monkeypatch.setattr("sys.stderr", _Tty())
    monkeypatch.delenv("HONED_PROGRESS", raising=False)
    assert prog.enabled()
    monkeypatch.setenv("HONED_PROGRESS", "0")
    assert not prog.enabled()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setenv("HONED_PROGRESS", "1")
    assert prog.enabled()


def test_forced_bar_goes_to_stderr_and_yields_every_item(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setenv("HONED_PROGRESS", "1")
    monkeypatch.setattr(prog, "DELAY_S", 0)
    assert list(prog.progress(range(5), "embedding", unit="batch")) == list(range(5))
    assert "embedding:" in err.getvalue() and "/5 " in err.getvalue()
