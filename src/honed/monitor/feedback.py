"""User feedback: store it next to the request log, accept it over HTTP, turn it into
training data.

- ``POST /v1/feedback``: ``{"request_id", "rating": "up"|"down", "correction", "preferred",
  "comment"}``; 404 when the request id is unknown.
- Implicit signals the server sees: ``regenerate`` (the same caller sent the same prompt to
  the same model again soon after; recorded on the earlier request) and ``abandoned`` (a
  stream whose client left before the final chunk). The server queues them through its
  request logger (:meth:`~honed.monitor.requestlog.RequestLogger.submit_feedback`); other
  code can use :meth:`FeedbackStore.add_signal`. :func:`feedback_summary` counts them apart
  from explicit feedback.
- Export: corrections of a classifier's label -> classification rows ``{text, label}``;
  corrections / preferred answers of a generator -> SFT rows ``{prompt, completion}`` and DPO
  pairs ``{prompt, chosen, rejected}`` (the logged answer is the rejected one). Rows are
  de-duplicated (latest feedback wins) and carry ``request_id`` / ``feedback_id`` provenance.
  Implicit signals are never exported: they say an answer was unsatisfying, not what a better
  one is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import Request  # module level: route annotations are resolved from globals
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import Engine, insert, select

from honed.errors import HonedError
from honed.monitor.requestlog import (
    FeedbackRow,
    RequestLogger,
    RequestRow,
    as_utc,
    make_engine,
    utcnow,
)
from honed.progress import progress

Signal = Literal["explicit", "regenerate", "abandoned"]
IMPLICIT_SIGNALS = ("regenerate", "abandoned")
KINDS = ("classification", "sft", "dpo")
_MAX_TEXT = 100_000


class UnknownRequestError(HonedError):
    """Feedback names a request id that the request log does not hold."""


class FeedbackIn(BaseModel):
    """Body of ``POST /v1/feedback``."""

    request_id: str = Field(..., min_length=1, max_length=64, description="Id of the request.")
    item: int = Field(
        0, ge=0, le=10_000, description="Which item of a batch request (0 for single ones)."
    )
    rating: Literal["up", "down"] | None = Field(None, description="Thumbs up or down.")
    signal: Signal = Field("explicit", description="explicit, or an implicit server signal.")
    correction: str | None = Field(
        None, max_length=_MAX_TEXT, description="The right label / answer."
    )
    preferred: str | None = Field(
        None, max_length=_MAX_TEXT, description="A better answer than the one given."
    )
    comment: str | None = Field(None, max_length=10_000, description="Free text.")

    @model_validator(mode="after")
    def _says_something(self) -> FeedbackIn:
        if self.signal == "explicit" and not any(
            (self.rating, self.correction, self.preferred, self.comment)
        ):
            raise ValueError("feedback needs a rating, correction, preferred answer or comment")
        return self


class FeedbackStore:
    """Feedback rows in the request-log database."""

    def __init__(
        self,
        url: str | None = None,
        *,
        engine: Engine | None = None,
        logger: RequestLogger | None = None,
    ):
        self.engine = engine or (logger.engine if logger else make_engine(url))
        # With a logger, a miss flushes it once: the request may still sit in its queue.
        self.logger = logger

    def request_exists(self, request_id: str) -> bool:
        if self._exists(request_id):
            return True
        if self.logger is not None:
            self.logger.flush(timeout=5.0)
            return self._exists(request_id)
        return False

    def _exists(self, request_id: str) -> bool:
        with self.engine.connect() as conn:
            query = select(RequestRow.id).where(RequestRow.id == request_id)
            return conn.execute(query).first() is not None

    def add(
        self, feedback: FeedbackIn | dict[str, Any], detail: dict[str, Any] | None = None
    ) -> int:
        """Store one feedback (``detail``: what the server saw with an implicit signal);
        raises UnknownRequestError for an unknown request id."""
        fb = feedback if isinstance(feedback, FeedbackIn) else FeedbackIn(**feedback)
        if not self.request_exists(fb.request_id):
            raise UnknownRequestError(f"unknown request id {fb.request_id!r}")
        row = {
            "request_id": fb.request_id,
            "item": fb.item,
            "created_at": utcnow(),
            "rating": {"up": 1, "down": -1}.get(fb.rating or ""),
            "signal": fb.signal,
            "correction": fb.correction,
            "preferred": fb.preferred,
            "comment": fb.comment,
            "detail": detail,
        }
        with self.engine.begin() as conn:
            result = conn.execute(insert(FeedbackRow).returning(FeedbackRow.id), [row])
            return int(result.scalar_one())

    def add_signal(
        self,
        request_id: str,
        signal: Signal,
        item: int = 0,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Record an implicit signal the server saw (``regenerate``, ``abandoned`` stream)."""
        return self.add(FeedbackIn(request_id=request_id, signal=signal, item=item), detail)

    def joined(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """Feedback rows with their request's fields (``req_*``), oldest first."""
        query = (
            select(
                *FeedbackRow.__table__.columns,
                RequestRow.input_text.label("req_input"),
                RequestRow.output_text.label("req_output"),
                RequestRow.predicted_label.label("req_label"),
                RequestRow.model.label("req_model"),
            )
            .join(
                RequestRow,
                (RequestRow.id == FeedbackRow.request_id) & (RequestRow.item == FeedbackRow.item),
            )
            .order_by(FeedbackRow.created_at, FeedbackRow.id)
        )
        if since is not None:
            query = query.where(FeedbackRow.created_at >= as_utc(since))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [dict(r._mapping) for r in rows]


def build_feedback_router(
    store: FeedbackStore | None = None, auth_dependency: Callable | None = None
):
    """A FastAPI router with ``POST /v1/feedback`` (201 with the feedback id; 404 for an
    unknown request id; 422 for a malformed body). Without ``store``, the app's request
    logger (``app.state.request_logger``, when it is a :class:`RequestLogger`) decides the
    database, else the default one; the store is made on first use."""
    from fastapi import APIRouter, Depends, HTTPException

    deps = [Depends(auth_dependency)] if auth_dependency is not None else []
    router = APIRouter(dependencies=deps)

    # A plain def: FastAPI runs it in its thread pool, so the database calls (and a logger
    # flush on a miss) do not block the event loop.
    @router.post("/v1/feedback", status_code=201, tags=["feedback"])
    def post_feedback(body: FeedbackIn, request: Request) -> dict[str, Any]:
        target = store or _app_store(request.app.state)
        try:
            feedback_id = target.add(body)
        except UnknownRequestError as err:
            raise HTTPException(status_code=404, detail=str(err)) from None
        return {"id": feedback_id, "request_id": body.request_id, "item": body.item}

    return router


def _app_store(state: Any) -> FeedbackStore:
    found = getattr(state, "feedback_store", None)
    if found is None:
        logger = getattr(state, "request_logger", None)
        found = FeedbackStore(logger=logger if isinstance(logger, RequestLogger) else None)
        state.feedback_store = found
    return found


# --- summary ---------------------------------------------------------------------------------


def feedback_summary(feedback: list[dict[str, Any]], n_requests: int) -> dict[str, Any]:
    """Counts and per-request rates of explicit feedback (thumbs up/down, corrections or
    preferred answers, comments) and, apart, of each implicit signal.

    ``feedback``: rows with ``rating``, ``signal``, ``correction``, ``preferred``, ``comment``
    (e.g. :meth:`FeedbackStore.joined`)."""
    counts = dict.fromkeys(("up", "down", "correction", "comment"), 0)
    implicit = dict.fromkeys(IMPLICIT_SIGNALS, 0)
    explicit = 0
    for fb in feedback:
        signal = fb.get("signal") or "explicit"
        if signal != "explicit":
            implicit[signal] = implicit.get(signal, 0) + 1
            continue
        explicit += 1
        counts["up"] += fb.get("rating") == 1
        counts["down"] += fb.get("rating") == -1
        counts["correction"] += bool(fb.get("correction") or fb.get("preferred"))
        counts["comment"] += bool(fb.get("comment"))
    per = max(n_requests, 1)
    return {
        "requests": n_requests,
        "explicit": {"n": explicit, **counts},
        "implicit": implicit,
        "rates": {
            **{k: v / per for k, v in counts.items()},
            **{k: v / per for k, v in implicit.items()},
        },
    }


# --- export ----------------------------------------------------------------------------------


def training_rows(feedback: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Feedback (from :meth:`FeedbackStore.joined`) -> rows per kind, de-duplicated."""
    rows: dict[str, dict[tuple, dict[str, Any]]] = {k: {} for k in KINDS}
    # oldest first: a later row with the same key replaces the earlier
    for fb in progress(feedback, "exporting", unit="row"):
        prompt = fb["req_input"]
        if not prompt or fb.get("signal", "explicit") != "explicit":
            continue  # implicit signals are weak: never training data
        prov = {"request_id": fb["request_id"], "feedback_id": fb["id"], "model": fb["req_model"]}
        better = (fb["preferred"] or fb["correction"] or "").strip()
        if fb["req_label"] is not None:  # a classifier's request: the correction is a label
            if fb["correction"]:
                label = fb["correction"].strip()
                rows["classification"][(prompt,)] = {"text": prompt, "label": label, **prov}
            continue
        if not better:
            continue
        rows["sft"][(prompt, better)] = {"prompt": prompt, "completion": better, **prov}
        rejected = (fb["req_output"] or "").strip()
        if rejected and rejected != better:
            pair = {"prompt": prompt, "chosen": better, "rejected": rejected, **prov}
            rows["dpo"][(prompt, better, rejected)] = pair
    return {kind: list(found.values()) for kind, found in rows.items()}


def export_training_data(
    store: FeedbackStore,
    out: str | Path,
    kind: Literal["auto", "classification", "sft", "dpo"] = "auto",
    since: datetime | None = None,
) -> dict[str, tuple[Path, int]]:
    """Write jsonl training data from feedback. One kind: to ``out``. ``auto``: every kind
    that has rows, to ``out`` when only one does, else ``<out stem>.<kind>.jsonl``.
    Returns kind -> (path, rows)."""
    out = Path(out)
    by_kind = training_rows(store.joined(since))
    wanted = [kind] if kind != "auto" else [k for k in KINDS if by_kind[k]]
    if not wanted:
        raise HonedError("no feedback with corrections or preferred answers to export")
    written = {}
    for k in wanted:
        path = out if len(wanted) == 1 else out.with_name(f"{out.stem}.{k}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            for row in by_kind[k]:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        written[k] = (path, len(by_kind[k]))
    return written
