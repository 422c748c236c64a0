"""User feedback: store it next to the request log, accept it over HTTP, turn it into
training data.

- ``POST /v1/feedback``: ``{"request_id", "item", "rating": "up"|"down", "correction",
  "preferred", "comment"}``. Checked against the request it names, never stored as an orphan:
  404 when the request id is unknown, 422 when ``item`` is beyond the request's items, and 422
  naming the allowed values when a correction (or preferred answer) of a classification is not
  a label of the model version that answered it, or one of a generation is empty text. The
  labels come from the request log's ``honed_model_versions`` table (written by the server the
  first time a version answers, so they outlive that version being unloaded), else from the
  serving engine, else (requests logged before label sets were recorded) from the labels that
  model predicted in the log.
- Tied to the caller: on a server with API keys, feedback is accepted only from the key that
  made the request (the request log's ``key_name``); another key's request answers 404, the
  same as an unknown id, so ids cannot be probed for whose they are. One explicit feedback
  per request item per key: a later post replaces the earlier (a changed mind, not a second
  vote). Each key may post ``feedback_per_key_per_hour`` (serve settings) in any rolling
  hour; beyond it 429 with Retry-After. The server counts that quota on its rate-limit
  storage (``rate_limit_storage``: shared by every replica on Redis) and hands the route a
  :class:`Quota` (``app.state.feedback_quota``); a replacing post spends none of it. Without
  keys (loopback development) none of this applies.
- Implicit signals the server sees: ``regenerate`` (the same caller sent the same prompt to
  the same model again soon after; recorded on the earlier request) and ``abandoned`` (a
  stream whose client left before the final chunk). The server queues them through its
  request logger (:meth:`~honed.monitor.requestlog.RequestLogger.submit_feedback`); other
  code can use :meth:`FeedbackStore.add_signal`. Clients cannot post them (422 naming the
  field). :func:`feedback_summary` counts them apart from explicit feedback.
- Export: corrections of a classifier's label -> classification rows ``{text, label}`` (labels
  checked again, so rows stored before feedback was checked cannot poison training data: bad
  ones are skipped and counted);
  corrections / preferred answers of a generator -> SFT rows ``{prompt, completion}`` and DPO
  pairs ``{prompt, chosen, rejected}`` (the logged answer is the rejected one). Rows are
  de-duplicated (latest feedback wins) and carry ``request_id`` / ``feedback_id`` provenance.
  Implicit signals are never exported: they say an answer was unsatisfying, not what a better
  one is. Before export, each key's label corrections are compared with other keys' and with
  the served model's (:mod:`honed.monitor.disagreement`); rows of a key that disagrees far
  beyond the others are held back (``hold_flagged``) and the key is named in the report.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

from fastapi import Request  # module level: route annotations are resolved from globals
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import Engine, delete, func, insert, select

from honed.errors import HonedError
from honed.monitor.requestlog import (
    FeedbackRow,
    RequestLogger,
    RequestRow,
    as_utc,
    latest_model_version,
    make_engine,
    utcnow,
)
from honed.progress import progress

log = logging.getLogger(__name__)

Signal = Literal["explicit", "regenerate", "abandoned"]
IMPLICIT_SIGNALS = ("regenerate", "abandoned")
KINDS = ("classification", "sft", "dpo")
_MAX_TEXT = 100_000


class UnknownRequestError(HonedError):
    """Feedback names a request id that the request log does not hold."""


class FeedbackLimitError(HonedError):
    """A key posted more feedback than ``feedback_per_key_per_hour`` allows (HTTP 429), or
    the quota's storage is down and the server fails closed (``status`` 503)."""

    def __init__(self, message: str, retry_after: int, status: int = 429) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class Quota(Protocol):
    """A key's feedback quota (the server's: honed.serve.http.limits_store.FeedbackQuota).
    ``check`` and ``spend`` answer an object with ``allowed``, ``retry_after`` (seconds) and
    ``unavailable`` (the storage is down and the server fails closed)."""

    per_hour: int

    def check(self) -> Any: ...

    def spend(self) -> Any: ...


class InvalidFeedbackError(HonedError):
    """Feedback that does not fit the request it names (HTTP 422): an item beyond the
    request's items, a correction that is not a label of the model that answered, empty text."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


# (model, digest) -> that version's labels, or None when not known.
LabelSource = Callable[[str | None, str | None], list[str] | None]
# Rows logged by a canary's shadow arm share the request id but never answered the client.
_ANSWERED = (RequestRow.arm.is_(None)) | (RequestRow.arm != "shadow")


def is_classification(row: dict[str, Any]) -> bool:
    """A request-log row (its ``route`` / ``predicted_label``) of a classification."""
    return row.get("route") == "classify" or row.get("predicted_label") is not None


class FeedbackIn(BaseModel):
    """Body of ``POST /v1/feedback``."""

    request_id: str = Field(..., min_length=1, max_length=64, description="Id of the request.")
    item: int = Field(
        0, ge=0, le=10_000, description="Which item of a batch request (0 for single ones)."
    )
    rating: Literal["up", "down"] | None = Field(None, description="Thumbs up or down.")
    signal: Signal = Field(
        "explicit",
        description="Clients send 'explicit' (the default) only; 'regenerate' and 'abandoned' "
        "are recorded by the server itself (422 when posted).",
    )
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
        labels: LabelSource | None = None,
    ):
        self.engine = engine or (logger.engine if logger else make_engine(url))
        # With a logger, a miss flushes it once: the request may still sit in its queue.
        self.logger = logger
        # Where labels come from when the versions table lacks them (the serving engine).
        self.fallback_labels = labels

    def request_exists(self, request_id: str) -> bool:
        return bool(self.request_rows(request_id))

    def request_rows(self, request_id: str) -> list[dict[str, Any]]:
        """The request's logged rows (one per item; a shadow arm's excluded), oldest first;
        [] when the request is unknown."""
        rows = self._rows(request_id)
        if not rows and self.logger is not None:
            self.logger.flush(timeout=5.0)
            rows = self._rows(request_id)
        return rows

    def _rows(self, request_id: str) -> list[dict[str, Any]]:
        cols = ("item", "model", "digest", "version", "route", "predicted_label", "key_name")
        query = (
            select(*(getattr(RequestRow, c) for c in cols))
            .where((RequestRow.id == request_id) & _ANSWERED)
            .order_by(RequestRow.pk)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def labels_of(self, model: str | None, digest: str | None) -> list[str] | None:
        """The labels of the version ``digest`` of ``model`` (when ``digest`` is None, of its
        latest recorded version); None when not known."""
        found = latest_model_version(self.engine, model, digest) if model else None
        if found is not None and found["labels"]:
            return list(found["labels"])
        return self.fallback_labels(model, digest) if self.fallback_labels else None

    def allowed_labels(self, model: str | None, digest: str | None) -> list[str] | None:
        """What a correction of ``model``'s answer may be: :meth:`labels_of`, else (requests
        logged before label sets were recorded) the labels that model predicted in the log;
        None when neither is known."""
        found = self.labels_of(model, digest)
        return found if found is not None else self.observed_labels(model) or None

    def observed_labels(self, model: str | None) -> list[str]:
        """The labels ``model`` predicted in the log: for rows logged before label sets were."""
        query = (
            select(RequestRow.predicted_label)
            .where((RequestRow.model == model) & RequestRow.predicted_label.is_not(None))
            .distinct()
        )
        with self.engine.connect() as conn:
            return sorted(r[0] for r in conn.execute(query))

    def check(self, fb: FeedbackIn, rows: list[dict[str, Any]]) -> FeedbackIn:
        """``fb`` checked against the request's ``rows`` (InvalidFeedbackError when it does
        not fit); a label correction comes back stripped."""
        items = {r["item"] for r in rows}
        if fb.item not in items:
            raise InvalidFeedbackError(
                f"item {fb.item} is out of range: request {fb.request_id!r} had "
                f"{len(items)} item(s), numbered from 0",
                "item",
            )
        row = [r for r in rows if r["item"] == fb.item][-1]
        texts = {f: v for f in ("correction", "preferred") if (v := getattr(fb, f)) is not None}
        if not is_classification(row):
            for field, value in texts.items():
                if not value.strip():
                    raise InvalidFeedbackError(f"{field} must be non-empty text", field)
            return fb
        if not texts:
            return fb
        labels = self.allowed_labels(row["model"], row["digest"])
        return fb.model_copy(update={f: self._label(f, v, labels, row) for f, v in texts.items()})

    @staticmethod
    def _label(field: str, value: str, labels: list[str] | None, row: dict[str, Any]) -> str:
        who = f"model {row['model']!r}" + (f" ({row['version']})" if row.get("version") else "")
        if labels is None:
            raise InvalidFeedbackError(
                f"{field} cannot be checked: the labels of {who} that answered are not known",
                field,
            )
        if value.strip() not in labels:
            allowed = ", ".join(repr(x) for x in labels)
            raise InvalidFeedbackError(
                f"{field} {value[:100]!r} is not a label of {who}, which answered this "
                f"request; allowed values: {allowed}",
                field,
            )
        return value.strip()

    def add(
        self,
        feedback: FeedbackIn | dict[str, Any],
        detail: dict[str, Any] | None = None,
        key_name: str | None = None,
    ) -> int:
        """Store one feedback (``detail``: what the server saw with an implicit signal);
        raises UnknownRequestError for an unknown request id, InvalidFeedbackError for
        feedback that does not fit the request (see :meth:`check`).

        ``key_name``: the API key posting it. Then the request must have been made by that
        key (else UnknownRequestError, as for an unknown id) and its earlier explicit
        feedback on the same item is replaced (see :meth:`add_for_key`)."""
        return self.add_for_key(feedback, key_name, detail=detail)[0]

    def add_for_key(
        self,
        feedback: FeedbackIn | dict[str, Any],
        key_name: str | None,
        quota: Quota | None = None,
        detail: dict[str, Any] | None = None,
    ) -> tuple[int, int]:
        """:meth:`add` for the key ``key_name`` (None: a server without keys, no checks):
        (feedback id, earlier rows of that key on the item it replaced). ``quota``: the key's
        hourly cap, checked after the feedback itself (so 404/422 come first) and spent once
        stored, unless the post replaced earlier feedback (FeedbackLimitError when spent;
        concurrent posts may pass it by a few)."""
        fb = feedback if isinstance(feedback, FeedbackIn) else FeedbackIn(**feedback)
        rows = self.request_rows(fb.request_id)
        if key_name is not None:
            # Another key's request answers like an unknown one: no oracle of whose ids exist.
            rows = [r for r in rows if r.get("key_name") == key_name]
        if not rows:
            raise UnknownRequestError(f"unknown request id {fb.request_id!r}")
        fb = self.check(fb, rows)
        if key_name is not None and quota is not None:
            _check_quota(quota, key_name)
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
            "key_name": key_name,
        }
        with self.engine.begin() as conn:
            replaced = 0
            if key_name is not None and fb.signal == "explicit":
                mine = (
                    (FeedbackRow.request_id == fb.request_id)
                    & (FeedbackRow.item == fb.item)
                    & (FeedbackRow.key_name == key_name)
                    & (FeedbackRow.signal == "explicit")
                )
                replaced = conn.execute(delete(FeedbackRow).where(mine)).rowcount or 0
            result = conn.execute(insert(FeedbackRow).returning(FeedbackRow.id), [row])
            feedback_id = int(result.scalar_one())
        if key_name is not None and quota is not None and not replaced:
            quota.spend()
        return feedback_id, replaced

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
                RequestRow.route.label("req_route"),
                RequestRow.digest.label("req_digest"),
                RequestRow.version.label("req_version"),
            )
            .join(
                RequestRow,
                (RequestRow.id == FeedbackRow.request_id)
                & (RequestRow.item == FeedbackRow.item)
                & _ANSWERED,
            )
            .order_by(FeedbackRow.created_at, FeedbackRow.id)
        )
        if since is not None:
            query = query.where(FeedbackRow.created_at >= as_utc(since))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [dict(r._mapping) for r in rows]

    def orphans(self) -> int:
        """Feedback rows whose request (and item) the log does not hold (stored before
        feedback was checked); never exported."""
        matched = select(RequestRow.pk).where(
            (RequestRow.id == FeedbackRow.request_id) & (RequestRow.item == FeedbackRow.item)
        )
        query = select(func.count()).select_from(FeedbackRow).where(~matched.exists())
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


def build_feedback_router(
    store: FeedbackStore | None = None, auth_dependency: Callable | None = None
):
    """A FastAPI router with ``POST /v1/feedback`` (201 with the feedback id, and
    ``replaced`` when it replaced the key's earlier feedback on that item; 404 for an unknown
    request id or one another key made; 422 for a malformed body, an implicit signal, or
    feedback that does not fit its request; 429 beyond the key's hourly cap).
    Without ``store``, the app's request logger (``app.state.request_logger``, when it is a
    :class:`RequestLogger`) decides the database, else the default one; the store is made on
    first use and falls back on the serving engine's label sets."""
    from fastapi import APIRouter, Depends, HTTPException

    deps = [Depends(auth_dependency)] if auth_dependency is not None else []
    router = APIRouter(dependencies=deps)

    # A plain def: FastAPI runs it in its thread pool, so the database calls (and a logger
    # flush on a miss) do not block the event loop.
    @router.post("/v1/feedback", status_code=201, tags=["feedback"])
    def post_feedback(body: FeedbackIn, request: Request) -> dict[str, Any]:
        if body.signal != "explicit":
            raise HTTPException(
                status_code=422,
                detail=f"signal {body.signal!r} is recorded by the server itself; clients "
                "post explicit feedback only (omit 'signal' or send 'explicit')",
            )
        target = store or _app_store(request.app.state)
        key = getattr(getattr(request.state, "api_key", None), "name", None)
        try:
            feedback_id, replaced = target.add_for_key(body, key, _quota(request, key))
        except UnknownRequestError as err:
            raise HTTPException(status_code=404, detail=str(err)) from None
        except InvalidFeedbackError as err:
            raise HTTPException(status_code=422, detail=str(err)) from None
        except FeedbackLimitError as err:
            headers = {"Retry-After": str(err.retry_after)}
            raise HTTPException(err.status, detail=str(err), headers=headers) from None
        out = {"id": feedback_id, "request_id": body.request_id, "item": body.item}
        return out | {"replaced": replaced} if replaced else out

    return router


def _check_quota(quota: Quota, key_name: str) -> None:
    decision = quota.check()
    if decision.allowed:
        return
    if decision.unavailable:
        raise FeedbackLimitError(
            "feedback quota storage unavailable; retry later", decision.retry_after, 503
        )
    log.warning("feedback cap: key %r reached %d posts in the last hour", key_name, quota.per_hour)
    raise FeedbackLimitError(
        f"feedback limit reached for this key: {quota.per_hour} per hour "
        "(feedback_per_key_per_hour); retry later",
        decision.retry_after,
    )


def _quota(request: Request, key_name: str | None) -> Quota | None:
    """The key's feedback quota from the server (``app.state.feedback_quota(key, per_hour)``);
    None without keys, a cap of 0, or an app that offers none."""
    state = request.app.state
    cap = getattr(getattr(state, "settings", None), "feedback_per_key_per_hour", 0) or 0
    make = getattr(state, "feedback_quota", None)
    if key_name is None or cap <= 0 or make is None:
        return None
    return make(key_name, cap)


def _app_store(state: Any) -> FeedbackStore:
    found = getattr(state, "feedback_store", None)
    if found is None:
        logger = getattr(state, "request_logger", None)
        found = FeedbackStore(
            logger=logger if isinstance(logger, RequestLogger) else None,
            labels=partial(_engine_labels, state),
        )
        state.feedback_store = found
    return found


def _engine_labels(state: Any, model: str | None, digest: str | None) -> list[str] | None:
    """The labels of a loaded classifier ``model`` (of version ``digest`` when given)."""
    for m in getattr(getattr(state, "engine", None), "models", None) or []:
        same = digest is None or getattr(m, "digest", None) == digest
        if m.name == model and getattr(m, "labels", None) and same:
            return list(m.labels)
    return None


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


def training_rows(
    feedback: list[dict[str, Any]],
    labels: Callable[[dict[str, Any]], list[str] | None] | None = None,
    skipped: Counter | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Feedback (from :meth:`FeedbackStore.joined`) -> rows per kind, de-duplicated.

    ``labels``: the allowed labels of the model that answered a feedback row's request (None:
    not known); a classification correction outside them is skipped and counted in
    ``skipped`` (reason -> rows). Without ``labels`` corrections are not checked."""
    rows: dict[str, dict[tuple, dict[str, Any]]] = {k: {} for k in KINDS}
    skipped = Counter() if skipped is None else skipped
    # oldest first: a later row with the same key replaces the earlier
    for fb in progress(feedback, "exporting", unit="row"):
        prompt = fb["req_input"]
        if not prompt or fb.get("signal", "explicit") != "explicit":
            continue  # implicit signals are weak: never training data
        prov = {"request_id": fb["request_id"], "feedback_id": fb["id"], "model": fb["req_model"]}
        better = (fb["preferred"] or fb["correction"] or "").strip()
        request = {"route": fb.get("req_route"), "predicted_label": fb["req_label"]}
        if is_classification(request):  # a classifier's request: the correction is a label
            label = (fb["correction"] or fb["preferred"] or "").strip()
            allowed = labels(fb) if labels is not None and label else None
            if label and allowed is not None and label not in allowed:
                skipped["not a label of the model that answered"] += 1
            elif label:
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
    skipped: Counter | None = None,
    hold_flagged: bool = True,
    report: dict[str, Any] | None = None,
) -> dict[str, tuple[Path, int]]:
    """Write jsonl training data from feedback. One kind: to ``out``. ``auto``: every kind
    that has rows, to ``out`` when only one does, else ``<out stem>.<kind>.jsonl``.
    Returns kind -> (path, rows); ``skipped`` gets the rows left out, by reason: label
    corrections that are not labels of the model that answered (checked again here, for rows
    stored before feedback was checked), feedback whose request is not in the log, and (with
    ``hold_flagged``) feedback of keys whose corrections disagree with the others'.

    Keys are judged on ALL their feedback, not only the rows since ``since``
    (:func:`honed.monitor.disagreement.judge_keys`); ``report`` (when given) receives
    ``keys`` (every judged key's figures), ``flagged_keys`` ({key, rows, held_back}) and
    ``held_back``. The allowed labels of a request: :meth:`FeedbackStore.allowed_labels`."""
    out = Path(out)
    skipped = Counter() if skipped is None else skipped
    feedback = store.joined(since)
    feedback = _hold_flagged(store, feedback, hold_flagged, skipped, report)
    by_kind = training_rows(feedback, _export_labels(store), skipped)
    if orphans := store.orphans():
        skipped["request not in the log"] += orphans
    wanted = [kind] if kind != "auto" else [k for k in KINDS if by_kind[k]]
    if not wanted:
        left_out = "; ".join(f"{n} skipped: {why}" for why, n in sorted(skipped.items()))
        raise HonedError(
            "no feedback with corrections or preferred answers to export"
            + (f" ({left_out})" if left_out else "")
        )
    written = {}
    for k in wanted:
        path = out if len(wanted) == 1 else out.with_name(f"{out.stem}.{k}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            for row in by_kind[k]:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        written[k] = (path, len(by_kind[k]))
    return written


HELD_BACK = "from a key whose corrections disagree with the others' (flagged)"


def _hold_flagged(
    store: FeedbackStore,
    feedback: list[dict[str, Any]],
    hold: bool,
    skipped: Counter,
    report: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """``feedback`` without the rows of flagged keys (when ``hold``); fills ``report``."""
    from honed.monitor.disagreement import judge_keys

    judged = judge_keys(store.joined())
    flagged = {t.key: t for t in judged if t.flagged}
    kept = [fb for fb in feedback if not (hold and fb.get("key_name") in flagged)]
    held = len(feedback) - len(kept)
    if held:
        skipped[HELD_BACK] += held
    for key, trust in flagged.items():
        log.warning(
            "feedback of key %r disagrees with the others (consensus %s, model %s): %s",
            key,
            _rate(trust.consensus),
            _rate(trust.model),
            "held back from training data" if hold else "exported anyway (hold_flagged off)",
        )
    if report is not None:
        new = Counter(fb.get("key_name") for fb in feedback)
        report["keys"] = [t.to_dict() for t in judged]
        report["flagged_keys"] = [
            {"key": k, "rows": t.rows, "held_back": new[k] if hold else 0}
            for k, t in flagged.items()
        ]
        report["held_back"] = held
    return kept


def _rate(comp: Any) -> str:
    if comp.rate is None or comp.baseline is None:
        return "-"
    return f"{comp.disagree}/{comp.n} vs {comp.baseline:.2f} for the others"


def _export_labels(store: FeedbackStore) -> Callable[[dict[str, Any]], list[str] | None]:
    """A feedback row -> the labels allowed for it (cached per model version)."""
    cache: dict[tuple, list[str] | None] = {}

    def allowed(fb: dict[str, Any]) -> list[str] | None:
        key = (fb["req_model"], fb.get("req_digest"))
        if key not in cache:
            cache[key] = store.allowed_labels(*key)
        return cache[key]

    return allowed
