"""PII and secrets in every text field of a row: find the spans, rewrite them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from honed.data.frozen import PROVENANCE
from honed.security.pii import TAGS, find_pii
from honed.security.scan.config import ScanConfig
from honed.security.scan.findings import Finding
from honed.security.secrets import SECRET_TAG, find_secrets

#: Top-level row keys never scanned: provenance, and the class label (a name from a fixed set).
_SKIP = (*PROVENANCE, "label")


def strings(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(path, text) of every string inside a row (chat messages are lists of dicts)."""
    if isinstance(obj, str):
        yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if not (not path and key in _SKIP):
                yield from strings(value, (*path, key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from strings(value, (*path, i))


def _overlaps(start: int, end: int, taken: list[tuple[int, int]]) -> bool:
    return any(start < e and end > s for s, e in taken)


def text_findings(index: int, row: dict[str, Any], cfg: ScanConfig) -> list[Finding]:
    """Secret and PII findings of one row; a PII span inside a secret is the secret's."""
    out = []
    entities = tuple(cfg.pii_entities)
    for path, text in strings(row):
        taken = []
        for span in find_secrets(text):
            taken.append((span.start, span.end))
            out.append(
                Finding("secret", [index], span.kind, path, span.start, span.end, SECRET_TAG,
                        text[span.start : span.end])
            )  # fmt: skip
        for span in find_pii(text, entities, cfg.pii_min_score) if entities else []:
            if not _overlaps(span.start, span.end, taken):
                tag = TAGS.get(span.entity, f"[{span.entity}]")
                out.append(
                    Finding("pii", [index], span.entity, path, span.start, span.end, tag,
                            text[span.start : span.end], span.score)
                )  # fmt: skip
    return out


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(obj, path[:-1])[path[-1]] = value


def redact_rows(rows: list[dict[str, Any]], findings: list[Finding]) -> int:
    """Rewrite each finding's span with its tag, in place; returns the spans rewritten."""
    by_place: dict[tuple[int, tuple[Any, ...]], list[Finding]] = {}
    for f in findings:
        by_place.setdefault((f.rows[0], f.field), []).append(f)
    for (index, path), found in by_place.items():
        text = _get(rows[index], path)
        parts, last = [], 0
        for f in sorted(found, key=lambda f: f.start):
            if f.start >= last:
                parts += [text[last : f.start], f.tag]
                last = f.end
        parts.append(text[last:])
        _set(rows[index], path, "".join(parts))
    return len(findings)
