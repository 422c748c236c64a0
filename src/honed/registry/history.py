"""Every alias move of a registered model, recorded durably, and what served when.

Each move (``register``, ``promote``, ``forced_promote``, ``rollback``) is one entry::

    {"time": UTC ISO, "name", "alias", "from_version", "to_version", "action", "reason",
     "actor": "user@host" or "loop", "metrics": {...}, "evidence": {...}}

stored twice: appended to ``$HONED_HOME/history/NAME.jsonl`` (one line per entry, written with
one ``write`` under an exclusive lock, fsynced: concurrent writers never interleave and a crash
never leaves half an entry) and as a tag ``history.<time>`` on the version the alias moved to,
so a registry shared through a tracking server carries the record too; each move is also an
event in the hash-chained audit log (``honed audit verify``).
``read_history(name)`` reads the file (or, when the state folder has none, the tags).
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from honed.security.audit import local_actor, record
from honed.state import locked, state_dir

ACTIONS = ("register", "promote", "forced_promote", "rollback")
# Each move is also an audit-log event (honed.security.audit).
AUDIT_EVENTS = {
    "register": "model.registered",
    "promote": "model.promoted",
    "forced_promote": "model.force_promoted",
    "rollback": "model.rolled_back",
}
TAG_PREFIX = "history."
_TAG_LIMIT = 4900  # MLflow keeps model-version tag values up to 5000 characters


def default_actor() -> str:
    """Who moved the alias: ``user@host`` (the loop passes "loop")."""
    return local_actor()


def history_path(name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return state_dir() / "history" / f"{safe}.jsonl"


def make_entry(
    name: str,
    alias: str | None,
    from_version: str | None,
    to_version: str,
    action: str,
    *,
    reason: str = "",
    actor: str = "",
    metrics: dict[str, Any] | None = None,
    evidence: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if action not in ACTIONS:
        raise ValueError(f"history action {action!r}: expected one of {', '.join(ACTIONS)}")
    return {
        "time": datetime.now(UTC).isoformat(timespec="microseconds"),
        "name": name,
        "alias": alias,
        "from_version": None if from_version is None else str(from_version),
        "to_version": str(to_version),
        "action": action,
        "reason": reason,
        "actor": actor or default_actor(),
        "metrics": metrics or {},
        "evidence": evidence or {},
    }


def append_entry(entry: dict[str, Any]) -> Path:
    """Append one entry to the name's history file: one write, locked, fsynced."""
    path = history_path(entry["name"])
    line = (json.dumps(entry, default=str, ensure_ascii=False) + "\n").encode("utf-8")
    with locked(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    record(
        AUDIT_EVENTS[entry["action"]],
        entry["actor"],
        model=entry["name"],
        alias=entry["alias"],
        from_version=entry["from_version"],
        to_version=entry["to_version"],
        reason=entry["reason"],
    )
    return path


def tag_of(entry: dict[str, Any]) -> tuple[str, str]:
    """(key, value) of the model-version tag recording `entry`; bulky parts dropped to fit."""
    key = TAG_PREFIX + re.sub(r"[^0-9A-Za-z]", "", entry["time"])
    value = json.dumps(entry, default=str, separators=(",", ":"))
    for bulky in ("evidence", "metrics"):
        if len(value) > _TAG_LIMIT:
            value = json.dumps(entry | {bulky: {"truncated": True}}, default=str)
            entry = json.loads(value)
    return key, value[:_TAG_LIMIT]


def read_history(name: str, registry: Any = None) -> list[dict[str, Any]]:
    """Every recorded move of `name`, oldest first (the file; else the registry's tags)."""
    path = history_path(name)
    if path.is_file():
        entries = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash mid-write on a non-POSIX disk
        return sorted(entries, key=lambda e: e["time"])
    if registry is None:
        return []
    return history_from_tags(registry.versions(name))


def history_from_tags(versions: list[Any]) -> list[dict[str, Any]]:
    entries = []
    for version in versions:
        for key, value in (version.tags or {}).items():
            if key.startswith(TAG_PREFIX):
                try:
                    entries.append(json.loads(value))
                except json.JSONDecodeError:
                    continue
    return sorted(entries, key=lambda e: e["time"])


def holders(entries: list[dict[str, Any]], alias: str = "champion") -> list[str]:
    """The alias's holders as a stack: promotions push, a rollback pops back to its target."""
    stack: list[str] = []
    for entry in entries:
        if entry.get("alias") != alias:
            continue
        target = entry["to_version"]
        if entry["action"] == "rollback":
            while stack and stack[-1] != target:
                stack.pop()
            if not stack:
                stack.append(target)
        elif not stack or stack[-1] != target:
            stack.append(target)
    return stack


def rollback_target(entries: list[dict[str, Any]], alias: str, current: str) -> str | None:
    """The holder before `current` (skipping versions already rolled back), or None."""
    stack = holders(entries, alias)
    if stack and stack[-1] == current and len(stack) >= 2:
        return stack[-2]
    return None


def served(entries: list[dict[str, Any]], alias: str = "champion") -> list[dict[str, Any]]:
    """Which version held `alias` when: intervals {version, from, until (None: still)}."""
    intervals: list[dict[str, Any]] = []
    for entry in entries:
        if entry.get("alias") != alias:
            continue
        if intervals and intervals[-1]["version"] == entry["to_version"]:
            continue
        if intervals:
            intervals[-1]["until"] = entry["time"]
        intervals.append(
            {
                "version": entry["to_version"],
                "from": entry["time"],
                "until": None,
                "via": entry["action"],
            }
        )
    return intervals
