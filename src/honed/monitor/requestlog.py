"""The request log: every served request and its feedback, stored through SQLAlchemy.

SQLite by default (``<state folder>/requests.db``, embedded, nothing to start); PostgreSQL
(or anything SQLAlchemy speaks) by URL, e.g. ``postgresql+psycopg://user@host/db``.

Writing never blocks request handling: :class:`RequestLogger.submit` puts the record on a
bounded in-memory queue (``put_nowait``; when the queue is full the record is dropped and
counted) and a background thread writes batches, triggered by size (``batch_size``) or time
(``flush_interval_s``).

What a crash loses: records still in the queue plus the batch being written, i.e. at most
``queue_size + batch_size`` records and, under normal load, the last ``flush_interval_s``
seconds of traffic. Measured (SQLite, defaults, process killed with ``os._exit``): 48 of 289
records lost at ~100 req/s and 274 of 2,066 at ~700 req/s, i.e. 0.4-0.5 s of traffic, exactly
the queue at the time of the crash. ``close()`` (called on a clean shutdown) writes everything
first; the test ``test_crash_loses_at_most_the_unflushed_queue`` pins the bound.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    delete,
    event,
    insert,
    select,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

log = logging.getLogger(__name__)

Redactor = Callable[[str], str]


def identity(text: str) -> str:
    """The default redaction hook: store texts as they are."""
    return text


class Base(DeclarativeBase):
    pass


# 64-bit keys on servers; SQLite only auto-increments a column declared INTEGER.
_BigInt = BigInteger().with_variant(Integer, "sqlite")


class RequestRow(Base):
    """One served request and its response."""

    __tablename__ = "honed_requests"

    pk: Mapped[int] = mapped_column(_BigInt, primary_key=True, autoincrement=True)
    # The id the client saw. Not unique: a batch request (several texts) logs one row per
    # item, numbered by ``item``.
    id: Mapped[str] = mapped_column(String(64), index=True)
    item: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    model: Mapped[str | None] = mapped_column(String(200), index=True)
    adapter: Mapped[str | None] = mapped_column(String(200))
    # Which weights answered: the registry version ("NAME/3") when served from the registry,
    # the sha256 of the weights (first 16 hex digits) always, and the traffic arm
    # ("primary", "canary" or "shadow") when a canary or shadow is running.
    version: Mapped[str | None] = mapped_column(String(200), index=True)
    digest: Mapped[str | None] = mapped_column(String(64))
    arm: Mapped[str | None] = mapped_column(String(16))
    # The name (never the secret) of the API key that made the request; None on a server
    # without keys. Feedback on the request is accepted from that key only.
    key_name: Mapped[str | None] = mapped_column(String(200))
    route: Mapped[str | None] = mapped_column(String(200))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    input_text: Mapped[str | None] = mapped_column(Text)
    output_text: Mapped[str | None] = mapped_column(Text)
    predicted_label: Mapped[str | None] = mapped_column(String(200))
    score: Mapped[float | None] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # Sentence embedding of input_text (float16 bytes), filled lazily by the drift check so a
    # text is embedded once however many checks look at it.
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)
    extra: Mapped[dict | None] = mapped_column(JSON)


class FeedbackRow(Base):
    """Explicit (thumbs, correction, preferred answer) or implicit (regenerate, abandoned
    stream) feedback on one request."""

    __tablename__ = "honed_feedback"

    id: Mapped[int] = mapped_column(_BigInt, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    item: Mapped[int] = mapped_column(Integer, default=0)  # which item of a batch request
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    rating: Mapped[int | None] = mapped_column(Integer)  # +1 thumbs up, -1 down, None: none
    signal: Mapped[str] = mapped_column(String(32))  # explicit | regenerate | abandoned
    correction: Mapped[str | None] = mapped_column(Text)
    preferred: Mapped[str | None] = mapped_column(Text)
    comment: Mapped[str | None] = mapped_column(Text)
    # What the server saw with an implicit signal, e.g. {"tokens_sent": 12} for an abandoned
    # stream, {"by_request_id": ...} (the repeat) for a regenerate.
    detail: Mapped[dict | None] = mapped_column(JSON)
    # The name of the API key that posted it (explicit feedback; the same key that made the
    # request). None for the server's implicit signals and on a server without keys.
    key_name: Mapped[str | None] = mapped_column(String(200))


class ModelVersionRow(Base):
    """A model version a server answered with: what the request log's ``model`` / ``digest``
    columns name, and (classifiers) its label set, kept so feedback can be checked against
    the labels of the version that answered even after that version was unloaded."""

    __tablename__ = "honed_model_versions"

    id: Mapped[int] = mapped_column(_BigInt, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    model: Mapped[str] = mapped_column(String(200), index=True)  # the request rows' ``model``
    version: Mapped[str | None] = mapped_column(String(200))
    digest: Mapped[str | None] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # classify | generate | adapter
    labels: Mapped[list | None] = mapped_column(JSON)  # classifiers: labels in id order


class DriftCheckRow(Base):
    """One drift check (its JSON result), kept for the drift-over-time report."""

    __tablename__ = "honed_drift_checks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    status: Mapped[str] = mapped_column(String(32))
    result: Mapped[dict] = mapped_column(JSON)


# Marks a queued implicit-feedback record (RequestLogger.submit_feedback) among requests.
_FEEDBACK = "__honed_feedback__"
# Marks a queued model-version record (RequestLogger.record_model).
_MODEL = "__honed_model__"
MODEL_FIELDS = ("model", "version", "digest", "kind", "labels")
REQUEST_FIELDS = frozenset(c.name for c in RequestRow.__table__.columns) - {"pk"}
# Short names the server's tracker uses (honed.serve.http.tracking) -> columns.
ALIASES = {
    "input": "input_text",
    "output": "output_text",
    "label": "predicted_label",
    "status": "status_code",
    "index": "item",
}


def default_url() -> str:
    from honed.state import state_dir

    return f"sqlite:///{state_dir() / 'requests.db'}"


def make_engine(url: str | None = None) -> Engine:
    """An engine for the request log (tables created if missing)."""
    url = url or default_url()
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except Exception as err:  # bad URL or missing driver: name both
        from honed.errors import HonedError

        raise HonedError(f"request log database {url!r}: {err}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    Base.metadata.create_all(engine)
    _add_missing_columns(engine)
    return engine


def _add_missing_columns(engine: Engine) -> None:
    """Add nullable columns introduced after a database was created (``create_all`` only
    creates missing tables), so an existing request log keeps working after an upgrade."""
    from sqlalchemy import inspect, text

    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in present and c.nullable]
        for column in missing:
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
            except DBAPIError:  # another process added it first: fine if it is there now
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise
            log.info("request log: added column %s.%s", table.name, column.name)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers (drift checks, reports) run while the logger writes; NORMAL sync keeps
    # each batch commit cheap (durable at checkpoints, safe against corruption).
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def as_utc(value: datetime | float | int) -> datetime:
    """A timestamp (epoch seconds or datetime; naive means UTC, as SQLite returns it) in UTC."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def new_request_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def normalise_record(record: dict[str, Any], redact: Redactor = identity) -> dict[str, Any]:
    """A submitted dict as a row: aliases mapped (``input`` -> ``input_text``, ...), unknown
    keys moved into ``extra``, texts passed through the redaction hook, id, item and
    timestamp filled in when missing."""
    # Every column present (None when not given): a batch is one executemany, whose rows
    # must all have the same keys.
    row: dict[str, Any] = dict.fromkeys(REQUEST_FIELDS)
    extra: dict[str, Any] = dict(record.get("extra") or {})
    for key, value in record.items():
        if key == "extra":
            continue
        column = ALIASES.get(key, key)
        if column not in REQUEST_FIELDS:
            extra[key] = value
        elif key == column or record.get(column) is None:  # the column name wins over alias
            row[column] = value
    row["id"] = str(row["id"] or new_request_id())
    row["item"] = int(row["item"] or 0)
    created = row.get("created_at")
    row["created_at"] = utcnow() if created is None else as_utc(created)
    for key in ("input_text", "output_text"):
        row[key] = _as_text(row[key], redact)
    row["extra"] = extra or None
    return row


def _as_text(value: Any, redact: Redactor) -> str | None:
    if value is None:
        return None
    # Chat inputs may arrive as message lists: store them as JSON text.
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return redact(text)


@dataclass
class LoggerStats:
    submitted: int = 0
    written: int = 0
    dropped: int = 0  # queue full at submit time
    failed: int = 0  # database write failed


class RequestLogger:
    """Non-blocking writer of request records (see the module docstring for guarantees)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        engine: Engine | None = None,
        redact: Redactor = identity,
        queue_size: int = 10_000,
        batch_size: int = 256,
        flush_interval_s: float = 0.5,
    ):
        if queue_size < 1 or batch_size < 1 or flush_interval_s <= 0:
            raise ValueError("queue_size and batch_size must be >= 1, flush_interval_s > 0")
        self.engine = engine or make_engine(url)
        self.redact = redact
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.stats = LoggerStats()
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self._count_lock = threading.Lock()
        self._last_id: Any = None
        self._last_item = 0
        self._done = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="honed-request-log", daemon=True)
        self._thread.start()

    def submit(self, record: dict[str, Any]) -> bool:
        """Queue one record; never blocks. False when it was dropped (queue full)."""
        if not isinstance(record, dict):
            raise TypeError(f"request record must be a dict, got {type(record).__name__}")
        # The lock only guards two counters (request threads submit concurrently); it is
        # never held across I/O, so submit cannot wait on the database.
        with self._count_lock:
            return self._put(self._number_item(record))

    def submit_feedback(
        self,
        request_id: str,
        signal: str,
        item: int = 0,
        detail: dict[str, Any] | None = None,
    ) -> bool:
        """Queue an implicit feedback signal the server saw (``regenerate``, ``abandoned``);
        never blocks. It shares the request queue, so it is written after the records
        submitted before it (the request it names, normally). False when dropped."""
        record = {
            _FEEDBACK: True,
            "request_id": request_id,
            "item": item,
            "signal": signal,
            "detail": detail,
            "created_at": utcnow(),
        }
        with self._count_lock:
            return self._put(record)

    def record_model(
        self,
        model: str,
        kind: str,
        version: str | None = None,
        digest: str | None = None,
        labels: list[str] | None = None,
    ) -> bool:
        """Queue a model version the server answers with (see :class:`ModelVersionRow`);
        never blocks. Queued before the first request it answers, so it is written first.
        A version already recorded identically is not written twice."""
        record = {_MODEL: True, "model": model, "kind": kind, "version": version}
        record.update(digest=digest, labels=list(labels) if labels is not None else None)
        with self._count_lock:
            return self._put(record)

    def _put(self, record: dict[str, Any]) -> bool:
        # Called with the count lock held.
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.stats.dropped += 1
            return False
        self.stats.submitted += 1
        return True

    def _number_item(self, record: dict[str, Any]) -> dict[str, Any]:
        # A batch request submits one record per item, back to back, under one id: number
        # them 0, 1, ... unless the caller did ("item" / "index").
        rid = record.get("id")
        if rid is None or "item" in record or "index" in record:
            return record
        if rid == self._last_id:
            self._last_item += 1
            return {**record, "item": self._last_item}
        self._last_id, self._last_item = rid, 0
        return record

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything submitted so far; True when done within ``timeout`` seconds."""
        target = self.stats.submitted
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._done:
            while self.stats.written + self.stats.failed < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._done.wait(min(left, 0.05))
                self._wake.set()
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, stop the writer thread, release the engine."""
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._take_batch()
            if batch:
                self._write(batch)

    def _take_batch(self) -> list[dict[str, Any]]:
        # Wait until a full batch is queued, the interval passes, or flush()/close() asks.
        if self._queue.qsize() < self.batch_size:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
        batch: list[dict[str, Any]] = []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[dict[str, Any]]) -> None:
        rows, feedback, models = [], [], []
        for record in batch:
            if record.get(_FEEDBACK):
                feedback.append({k: v for k, v in record.items() if k != _FEEDBACK})
                continue
            if record.get(_MODEL):
                models.append({k: record[k] for k in MODEL_FIELDS})
                continue
            try:
                rows.append(normalise_record(record, self.redact))
            except Exception:  # e.g. a redaction hook raising: drop that record only
                log.exception("request log: bad record dropped")
        written = self._insert_models(models) + self._insert(rows) + self._insert_feedback(feedback)
        with self._done:
            self.stats.written += written
            self.stats.failed += len(batch) - written
            self._done.notify_all()

    def _insert(self, rows: list[dict[str, Any]]) -> int:
        """Insert rows in one statement; if that fails, one by one (so one bad row costs
        only itself). Returns the rows written."""
        if not rows:
            return 0
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(RequestRow), rows)
            return len(rows)
        except Exception:
            if len(rows) == 1:
                log.exception("request log: writing a record failed")
                return 0
        return sum(self._insert([row]) for row in rows)

    def _insert_models(self, rows: list[dict[str, Any]]) -> int:
        written = 0
        for row in rows:  # a handful per server start: one by one is fine
            try:
                written += save_model_version(self.engine, row)
            except Exception:  # best effort, like implicit signals: never stop the writer
                log.exception("request log: recording model version %s failed", row["model"])
        return written

    def _insert_feedback(self, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(FeedbackRow), rows)
        except Exception:  # implicit signals are best effort: log, never stop the writer
            log.exception("request log: writing %d implicit feedback rows failed", len(rows))
            return 0
        return len(rows)


def save_model_version(engine: Engine, row: dict[str, Any]) -> int:
    """Record a model version (``MODEL_FIELDS``) unless the same is the latest one recorded
    for its model and digest; 1 (counted as written) either way."""
    found = latest_model_version(engine, row["model"], row.get("digest"))
    if found is not None and all(found[k] == row.get(k) for k in MODEL_FIELDS):
        return 1
    with engine.begin() as conn:
        conn.execute(insert(ModelVersionRow), [{**row, "created_at": utcnow()}])
    return 1


def latest_model_version(
    engine: Engine, model: str | None, digest: str | None
) -> dict[str, Any] | None:
    """The latest recorded version of ``model`` with ``digest`` (when ``digest`` is None:
    the latest version of ``model`` at all, for rows logged before digests were)."""
    query = select(*ModelVersionRow.__table__.columns).where(ModelVersionRow.model == model)
    if digest is not None:
        query = query.where(ModelVersionRow.digest == digest)
    with engine.connect() as conn:
        row = conn.execute(query.order_by(ModelVersionRow.id.desc()).limit(1)).first()
    return dict(row._mapping) if row else None


class RequestStore:
    """Reads of the request log (drift checks, reports, feedback)."""

    def __init__(self, url: str | None = None, *, engine: Engine | None = None):
        self.engine = engine or make_engine(url)

    def exists(self, request_id: str) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(select(RequestRow.id).where(RequestRow.id == request_id))
            return found.first() is not None

    def get(self, request_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            query = select(*RequestRow.__table__.columns).where(RequestRow.id == request_id)
            row = conn.execute(query.order_by(RequestRow.item)).first()
        return dict(row._mapping) if row else None

    def fetch(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        model: str | None = None,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Requests in ``[since, until)`` (oldest first), optionally of one model. Default
        columns: all but the cached embedding."""
        default = ["pk", *sorted(REQUEST_FIELDS - {"embedding"})]
        cols = [getattr(RequestRow, c) for c in (columns or default)]
        query = select(*cols).order_by(RequestRow.created_at, RequestRow.pk)
        if since is not None:
            query = query.where(RequestRow.created_at >= as_utc(since))
        if until is not None:
            query = query.where(RequestRow.created_at < as_utc(until))
        if model is not None:
            query = query.where(RequestRow.model == model)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def store_embeddings(self, items: Iterable[tuple[int, bytes]]) -> None:
        """Cache embeddings (row ``pk``, float16 bytes) computed by a drift check."""
        from sqlalchemy import bindparam, update

        params = [{"rpk": pk, "emb": emb} for pk, emb in items]
        if not params:
            return
        stmt = (
            update(RequestRow)
            .where(RequestRow.pk == bindparam("rpk"))
            .values(embedding=bindparam("emb"))
        )
        with self.engine.begin() as conn:
            conn.execute(stmt, params)

    def save_drift_check(self, result: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(DriftCheckRow),
                [{"created_at": utcnow(), "status": result.get("status", "?"), "result": result}],
            )

    def drift_history(self, since: datetime | None = None) -> list[dict[str, Any]]:
        query = select(DriftCheckRow).order_by(DriftCheckRow.created_at)
        if since is not None:
            query = query.where(DriftCheckRow.created_at >= since)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]


# --- retention -------------------------------------------------------------------------------

#: Rows deleted per transaction: each batch holds its locks briefly, so the logger's inserts
#: (and readers) interleave with a long prune instead of waiting for it.
PRUNE_BATCH = 1000
#: How often the server prunes (request_log_retention_days).
PRUNE_INTERVAL_S = 3600.0


@dataclass
class PruneResult:
    requests: int = 0
    feedback: int = 0


def prune(
    engine: Engine,
    older_than_days: float,
    batch_size: int = PRUNE_BATCH,
    now: datetime | None = None,
) -> PruneResult:
    """Delete request rows created more than ``older_than_days`` ago, the feedback on them
    (cascade: a feedback row is exported only with its request's text, and retention is a
    promise about user texts, which feedback holds too) and feedback rows as old (orphans
    included), in batches of ``batch_size`` rows, one short transaction each.

    Model versions and drift-check results are kept: they hold no user text and the
    drift-over-time report reads them."""
    if older_than_days <= 0:
        raise ValueError("older_than_days must be > 0")
    cutoff = (now or utcnow()) - timedelta(days=older_than_days)
    result = PruneResult()
    while batch := _prune_requests(engine, cutoff, batch_size, result):
        log.debug("request log: pruned %d requests", batch)
    old_feedback = select(FeedbackRow.id).where(FeedbackRow.created_at < cutoff)
    while batch := _delete_ids(engine, FeedbackRow, old_feedback.limit(batch_size)):
        result.feedback += batch
    return result


def _prune_requests(engine: Engine, cutoff: datetime, batch_size: int, result) -> int:
    query = (
        select(RequestRow.pk, RequestRow.id)
        .where(RequestRow.created_at < cutoff)
        .order_by(RequestRow.pk)
        .limit(batch_size)
    )
    with engine.begin() as conn:
        rows = conn.execute(query).all()
        if not rows:
            return 0
        ids = sorted({r.id for r in rows})
        gone = conn.execute(delete(FeedbackRow).where(FeedbackRow.request_id.in_(ids)))
        done = conn.execute(delete(RequestRow).where(RequestRow.pk.in_([r.pk for r in rows])))
    # Counted as deleted, not as selected: replicas sharing one database may prune together.
    result.requests += done.rowcount or 0
    result.feedback += gone.rowcount or 0
    return len(rows)


def _delete_ids(engine: Engine, table: type[FeedbackRow], ids_query) -> int:
    with engine.begin() as conn:
        ids = [r[0] for r in conn.execute(ids_query)]
        if not ids:
            return 0
        return conn.execute(delete(table).where(table.id.in_(ids))).rowcount or 0


async def retention_loop(
    engine: Engine, older_than_days: float, interval_s: float = PRUNE_INTERVAL_S
) -> None:
    """The server's background retention task: prune now, then every ``interval_s``, on a
    worker thread (the event loop never waits on the deletes). Errors are logged and the
    next round tries again."""
    import asyncio

    while True:
        try:
            done = await asyncio.to_thread(prune, engine, older_than_days)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("request log: pruning rows older than %s days failed", older_than_days)
        else:
            if done.requests or done.feedback:
                log.info(
                    "request log: pruned %d requests and %d feedback rows older than %s days",
                    done.requests,
                    done.feedback,
                    older_than_days,
                )
        await asyncio.sleep(interval_s)
