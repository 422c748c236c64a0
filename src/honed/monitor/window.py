"""A window of logged traffic ready for a drift check, and the check itself.

Embeddings are cached in the request log (``embedding`` column, float16): each input text is
embedded once, however many checks look at it, so a check over 100,000 requests costs the
database read and the statistics, not 100,000 encoder passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from honed.errors import HonedError
from honed.evals.profile import ReferenceProfile, TextEmbedder
from honed.monitor.drift import DriftConfig, DriftReport, check_drift
from honed.monitor.requestlog import RequestStore

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_COLUMNS = ["pk", "id", "created_at", "input_text", "predicted_label", "score", "embedding"]


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` -> timedelta."""
    match = _DURATION_RE.match(text or "")
    if not match:
        raise HonedError(f"bad duration {text!r}: use a number and s/m/h/d/w, e.g. 24h or 7d")
    return timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])


@dataclass
class Window:
    """Logged requests with an input text: texts (n,), embeddings (n, d), and the
    predictions / confidences of the rows that have them."""

    ids: list[str]
    texts: list[str]
    embeddings: np.ndarray
    predictions: list[str]
    confidences: list[float]
    start: datetime | None
    end: datetime | None


def load_window(
    store: RequestStore,
    since: datetime | None,
    until: datetime | None = None,
    model: str | None = None,
    embedder: TextEmbedder | None = None,
    dim: int | None = None,
) -> Window:
    """Read the window; embed texts without a cached embedding (and cache them)."""
    rows = [r for r in store.fetch(since, until, model, _COLUMNS) if r["input_text"]]
    emb = row_embeddings(store, rows, embedder, dim)
    return Window(
        ids=[r["id"] for r in rows],
        texts=[r["input_text"] for r in rows],
        embeddings=emb,
        predictions=[r["predicted_label"] for r in rows if r["predicted_label"] is not None],
        confidences=[r["score"] for r in rows if r["score"] is not None],
        start=since,
        end=until,
    )


def row_embeddings(
    store: RequestStore,
    rows: list[dict[str, Any]],
    embedder: TextEmbedder | None,
    dim: int | None,
) -> np.ndarray:
    """(n, d) embeddings of ``rows`` (pk, input_text, embedding): the cached ones, the others
    embedded now and cached."""
    missing = [i for i, r in enumerate(rows) if r["embedding"] is None]
    fresh: dict[int, np.ndarray] = {}
    if missing:
        if embedder is None:
            raise HonedError(f"{len(missing)} requests have no cached embedding and no embedder")
        vecs = np.asarray(embedder.encode([rows[i]["input_text"] for i in missing]), np.float32)
        fresh = dict(zip(missing, vecs, strict=True))
        store.store_embeddings(
            (rows[i]["pk"], v.astype(np.float16).tobytes()) for i, v in fresh.items()
        )
    return _stack(rows, fresh, dim)


def _stack(rows: list[dict[str, Any]], fresh: dict[int, np.ndarray], dim: int | None):
    if not rows:
        return np.zeros((0, dim or 0), dtype=np.float32)
    # float16 bytes -> (n, d) float32; one frombuffer over the joined bytes is ~10x faster
    # than one per row at 100k rows.
    cached = [
        fresh[i].astype(np.float16).tobytes() if i in fresh else r["embedding"]
        for i, r in enumerate(rows)
    ]
    width = {len(b) for b in cached}
    if len(width) != 1:
        raise HonedError("cached embeddings differ in size: was the embedding model changed?")
    flat = np.frombuffer(b"".join(cached), dtype=np.float16)
    return flat.reshape(len(rows), -1).astype(np.float32)


def drift_for_window(
    profile: ReferenceProfile, window: Window, config: DriftConfig | None = None
) -> DriftReport:
    report = check_drift(
        profile,
        window.texts,
        embeddings=window.embeddings if len(window.texts) else None,
        predictions=window.predictions or None,
        confidences=window.confidences or None,
        config=config,
    )
    report.window_start = window.start.isoformat() if window.start else None
    report.window_end = (window.end or datetime.now(UTC)).isoformat()
    return report
