"""The audit log: who changed what a server serves, in an append-only, hash-chained file.

``$HONED_HOME/audit/audit.jsonl``, one JSON row per event::

    {"seq": 7, "time": UTC ISO, "event": "adapter.loaded", "actor": "key:ops",
     ...event fields..., "prev": <hash of row 6>, "hash": <sha256 of this row without "hash">}

The hash is the sha256 of the row's canonical JSON (sorted keys, no spaces, UTF-8) without
its ``hash`` key, and ``prev`` chains each row to the one before (the first row's ``prev`` is
64 zeros). Editing a row breaks its hash; deleting, inserting or reordering rows breaks the
``seq`` numbering and the ``prev`` links; rewriting a row *and* its hash breaks the next
row's ``prev``. A head pointer (``audit.head``: the last row's seq and hash, replaced
atomically after every append) catches a truncated tail, which the chain alone cannot.
Someone able to rewrite the whole file and the head from some row on is caught only by a copy
of the head kept elsewhere: ``honed audit verify --json`` prints it (``head``) for that.

Appends hold an exclusive file lock (:func:`honed.state.locked`) across reading the tail and
writing the row (one ``write``, fsynced), so the server and CLI processes can append at once
without forking the chain. An append refuses to extend a chain whose tail no longer matches
the head pointer (it would hide the truncation): the error says to run ``honed audit verify``.

Events: ``apikey.created``, ``adapter.loaded``, ``adapter.unloaded``, ``model.registered``,
``model.promoted``, ``model.force_promoted``, ``model.rolled_back``, ``canary.started``,
``canary.promoted``, ``canary.rolled_back``.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from honed.errors import HonedError
from honed.state import locked
from honed.state import state_dir as default_state_dir

log = logging.getLogger(__name__)

GENESIS = "0" * 64
RESERVED = frozenset({"seq", "time", "event", "actor", "prev", "hash"})
_TAIL_CHUNK = 65_536


class AuditError(HonedError):
    """The audit log cannot be appended to or read (e.g. its tail was truncated)."""


def local_actor() -> str:
    """Who runs this process: ``user@host`` (CLI commands, the loop)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = os.environ.get("USER", "unknown")
    return f"{user}@{socket.gethostname()}"


def canonical(row: dict[str, Any]) -> bytes:
    """The bytes a row is hashed (and stored) as: sorted keys, no spaces, UTF-8."""
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def row_hash(row: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in row.items() if k != "hash"})).hexdigest()


@dataclass
class VerifyResult:
    """What :meth:`AuditLog.verify` found. ``ok`` False: ``seq`` / ``line`` name the first
    broken row (``seq`` None when the line is not a row at all) and ``problem`` says how."""

    ok: bool
    rows: int
    head: str | None = None  # the last good row's hash: keep a copy elsewhere to anchor it
    seq: int | None = None
    line: int | None = None
    problem: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.ok:
            return f"audit log ok: {self.rows} rows, head {self.head}"
        where = f"row seq {self.seq} (line {self.line})" if self.seq else f"line {self.line}"
        return f"audit log BROKEN at {where}: {self.problem}"


class _Broken(Exception):
    def __init__(self, line: int, seq: int | None, problem: str) -> None:
        super().__init__(problem)
        self.line, self.seq, self.problem = line, seq, problem


class AuditLog:
    """An append-only hash-chained jsonl file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_suffix(".head")

    # --- writing ---------------------------------------------------------------------------

    def append(self, event: str, actor: str | None, **fields: Any) -> dict[str, Any]:
        """Append one event; returns the row as stored. ``fields`` must be JSON-able (other
        values are stored as their ``str``) and must not use the row's own keys."""
        clash = RESERVED & fields.keys()
        if clash:
            raise ValueError(f"audit fields {sorted(clash)} clash with the row's own keys")
        # What is hashed is exactly what a reader parses back.
        fields = json.loads(json.dumps(fields, default=str))
        with locked(self.path):
            last = self._checked_tail()
            row = {
                "seq": last["seq"] + 1 if last else 1,
                "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                "event": event,
                "actor": actor or "anonymous",
                **fields,
                "prev": last["hash"] if last else GENESIS,
            }
            row["hash"] = row_hash(row)
            self._write_line(canonical(row) + b"\n")
            self._write_head(row)
        return row

    def _write_line(self, line: bytes) -> None:
        # One write on an O_APPEND descriptor, fsynced: a crash never leaves half a row
        # followed by a whole one.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_head(self, row: dict[str, Any]) -> None:
        tmp = self.head_path.with_suffix(".head.tmp")
        tmp.write_text(json.dumps({"seq": row["seq"], "hash": row["hash"]}))
        os.replace(tmp, self.head_path)

    def _checked_tail(self) -> dict[str, Any] | None:
        """The last row, checked against the head pointer (called under the lock)."""
        last = self._last_row()
        head = self._head()
        if head is None:
            return last
        if last is None or (last.get("seq"), last.get("hash")) != (head["seq"], head["hash"]):
            seen = "no rows" if last is None else f"ends at seq {last.get('seq')}"
            raise AuditError(
                f"audit log {self.path} {seen} but its head pointer names seq {head['seq']}: "
                "rows were removed or edited; run `honed audit verify` (no row appended)"
            )
        return last

    def _last_row(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        text = _last_line(self.path)
        if text is None:
            return None
        try:
            row = json.loads(text)
        except json.JSONDecodeError:
            raise AuditError(
                f"audit log {self.path}: its last line is not a row (torn or edited); "
                "run `honed audit verify` (no row appended)"
            ) from None
        if not isinstance(row, dict) or not {"seq", "hash"} <= row.keys():
            raise AuditError(f"audit log {self.path}: its last line is not an audit row")
        return row

    def _head(self) -> dict[str, Any] | None:
        try:
            head = json.loads(self.head_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as err:
            raise AuditError(f"audit head {self.head_path}: unreadable ({err})") from None
        if not isinstance(head, dict) or not {"seq", "hash"} <= head.keys():
            raise AuditError(f"audit head {self.head_path}: not a head pointer")
        return head

    # --- reading ---------------------------------------------------------------------------

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every parseable row, oldest first (use :meth:`verify` to trust them)."""
        if not self.path.is_file():
            return
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue

    def tail(self, n: int) -> list[dict[str, Any]]:
        return list(deque(self.rows(), maxlen=max(n, 0)))

    def verify(self) -> VerifyResult:
        """Walk the chain; the first broken row, or ok with the head hash."""
        head = self._head_or_none()
        count, last, at_head = 0, GENESIS, None
        try:
            for line_no, row in enumerate(self._lines(), start=1):
                _check_row(row, line_no, count + 1, last)
                count, last = count + 1, row["hash"]
                if head is not None and row["seq"] == head["seq"]:
                    at_head = row["hash"]
            warnings = _check_head(head, count, at_head, last)
        except _Broken as err:
            good = last if count else None
            return VerifyResult(False, count, good, err.seq, err.line, err.problem)
        return VerifyResult(True, count, last if count else None, warnings=warnings)

    def _head_or_none(self) -> dict[str, Any] | None:
        try:
            return self._head()
        except AuditError:
            return {"seq": -1, "hash": "unreadable"}

    def _lines(self) -> Iterator[Any]:
        if not self.path.is_file():
            return
        with self.path.open(encoding="utf-8", errors="replace") as fh:
            for line_no, line in enumerate(fh, start=1):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    raise _Broken(line_no, None, "not a JSON row (torn or edited)") from None


def _check_row(row: Any, line_no: int, seq: int, prev: str) -> None:
    """Raise _Broken when ``row`` (on ``line_no``) is not the chain's row ``seq``."""
    if not isinstance(row, dict) or not row.keys() >= RESERVED:
        raise _Broken(line_no, None, f"not an audit row (needs {', '.join(sorted(RESERVED))})")
    got = row["seq"]
    if got != seq:
        raise _Broken(
            line_no, got, f"expected seq {seq} here: rows were deleted, inserted or reordered"
        )
    if row["hash"] != row_hash(row):
        raise _Broken(line_no, got, "its hash does not match its contents: the row was edited")
    if row["prev"] != prev:
        raise _Broken(
            line_no,
            got,
            f"its prev does not match the hash of row {seq - 1}: that row was rewritten "
            "(hash recomputed) or rows were replaced",
        )


def _check_head(head: dict | None, count: int, at_head: str | None, last: str) -> list[str]:
    """Compare the walked chain with the head pointer; warnings, or _Broken."""
    if head is None:
        missing = "no head pointer (audit.head): a truncated tail cannot be detected"
        return [missing] if count else []
    if head["seq"] == -1:
        raise _Broken(count, None, "the head pointer (audit.head) is unreadable")
    if head["seq"] > count:
        raise _Broken(
            count + 1,
            head["seq"],
            f"the log ends at seq {count} but its head pointer names seq {head['seq']}: "
            f"rows {count + 1}..{head['seq']} were removed",
        )
    if at_head != head["hash"]:
        raise _Broken(
            head["seq"], head["seq"], "differs from the row the head pointer recorded (rewritten)"
        )
    if head["seq"] < count:  # a writer died between its row and the head: not tampering
        return [f"head pointer lags: seq {head['seq']} of {count}"]
    return []


def _last_line(path: Path) -> str | None:
    """The file's last non-empty line, reading backwards from the end."""
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        buf = b""
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            fh.seek(start)
            buf = fh.read(end - start) + buf
            end = start
            lines = buf.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or start == 0:
                text = lines[-1].decode("utf-8", errors="replace")
                return text or None
    return None


def audit_log(state_dir: Path | None = None) -> AuditLog:
    """The audit log of ``state_dir`` (default: the state folder, ``$HONED_HOME``)."""
    root = Path(state_dir) if state_dir is not None else default_state_dir()
    folder = root / "audit"
    folder.mkdir(parents=True, exist_ok=True)
    return AuditLog(folder / "audit.jsonl")


def record(event: str, actor: str | None, **fields: Any) -> dict[str, Any] | None:
    """Append to the state folder's audit log, never raising: for callers whose action has
    already happened (a loaded adapter, a moved alias) and must not fail because of the log.
    A failure is logged at ERROR with the event, so it is not silent."""
    try:
        return audit_log().append(event, actor, **fields)
    except Exception:
        log.exception("audit log: %s by %s NOT recorded", event, actor or "anonymous")
        return None
