"""What the scan finds, how a finding is shown without its sensitive value, and the error a
``fail`` policy raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from honed.errors import DataError

#: Every kind of finding, in the order reports list them.
KINDS = ("secret", "pii", "conflicting_duplicate", "trigger", "label_error", "outlier")
#: Kinds found in a span of text (the others concern whole rows).
TEXT_KINDS = ("secret", "pii")


class ScanFailed(DataError):
    """The data scan found something the spec's policy says must stop the run."""


@dataclass
class Finding:
    """One finding. ``rows`` index the scanned rows; text findings also say where the span is
    (``field``: the keys leading to the string inside the row) and hold the value itself,
    which is only ever shown masked."""

    kind: str
    rows: list[int]
    detail: str
    field: tuple[Any, ...] = ()
    start: int = 0
    end: int = 0
    tag: str = ""
    value: str = ""
    score: float | None = None


def mask(value: str) -> str:
    """A sensitive value as reports show it: its first two characters and its length."""
    return f"{value[:2]}…({len(value)} chars)" if len(value) > 2 else "…"


def where(row: dict[str, Any]) -> str:
    """The row's source and line, e.g. ``data:12``."""
    return f"{row.get('origin', '?')}:{row.get('line', '?')}"


def describe(finding: Finding, rows: list[dict[str, Any]], limit: int = 5) -> str:
    """One line per finding, for errors and the console: no sensitive value in it."""
    places = ", ".join(where(rows[i]) for i in finding.rows[:limit])
    more = f" and {len(finding.rows) - limit} more" if len(finding.rows) > limit else ""
    masked = f" {mask(finding.value)}" if finding.value else ""
    return f"{finding.kind}: {finding.detail}{masked} (rows {places}{more})"
