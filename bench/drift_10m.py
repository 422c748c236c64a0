"""Drift over 10 million logged requests with bounded memory (issue 15's drift target).

    PYTHONPATH=src python bench/drift_10m.py [--rows 10000000] [--baseline-rows 1000000]
        [--db /tmp/honed-drift-10m/requests.db] [--chunk-size 50000] [--embed-sample 10000]

1. Generates a SQLite request log of ``--rows`` rows shaped like the server's (uuid ids,
   model / version / digest / arm / key / route, latency, tokens, a PhraseBank sentence as the
   input, a predicted label and score, status 200, no cached embedding), through the sqlite3
   module in batches of plain tuples into the table ``make_engine`` created, secondary
   indexes rebuilt after the load. Skipped when the file already holds that many rows.
2. Runs ``honed.monitor.drift_stream.stream_drift`` over the whole log in a fresh process:
   rows/s and peak RSS (``ru_maxrss``) of that process.
3. Baseline in fresh processes on the first ``--baseline-rows`` rows: the read the in-memory
   check does today (``RequestStore.fetch`` of load_window's columns, list of dicts) and a
   pandas ``read_sql`` of the same columns; peak RSS, extrapolated linearly to ``--rows``.

The reference profile and the embedding sample use a 64-d hashed bag-of-words embedder (the
cost of MiniLM on the sample is ``--embed-sample`` encoder passes, the same whatever the
window; measured on its own in docs/benchmarks.md), so the figures are those of the read and
the statistics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHRASEBANK = ROOT.parent / "shared" / "data" / "financial_phrasebank" / "Sentences_AllAgree.txt"
LABELS = ("negative", "neutral", "positive")
_COLUMNS = [
    "id", "item", "created_at", "model", "version", "digest", "arm", "key_name", "route",
    "latency_ms", "prompt_tokens", "input_text", "output_text", "predicted_label", "score",
    "status_code",
]  # fmt: skip


class HashEmbedder:
    """64-d hashed bag of words, unit rows (a stand-in for MiniLM: see the docstring)."""

    def encode(self, texts):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, int(hashlib.md5(word.encode()).hexdigest()[:8], 16) % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


def sentences() -> tuple[list[str], list[str]]:
    lines = PHRASEBANK.read_text(encoding="latin-1").splitlines()
    pairs = [line.rsplit("@", 1) for line in lines if "@" in line]
    return [t.strip() for t, _ in pairs], [label.strip() for _, label in pairs]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_s() -> float:
    """CPU seconds of this process: on a shared machine, the load-independent cost."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def generate(db: Path, rows: int, batch: int = 100_000) -> dict:
    from honed.monitor.requestlog import make_engine

    if db.exists() and _count(db) >= rows:
        return {"generated": False, "rows": _count(db)}
    db.parent.mkdir(parents=True, exist_ok=True)
    db.unlink(missing_ok=True)
    make_engine(f"sqlite:///{db}").dispose()  # the server's schema, indexes included
    texts, _ = sentences()
    start = time.perf_counter()
    conn = sqlite3.connect(db)
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='honed_requests' "
        "AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:  # bulk load, then build each index once (sorted, not b-tree churn)
        conn.execute(f"DROP INDEX {name}")
    conn.execute("PRAGMA synchronous=OFF")
    sql = f"INSERT INTO honed_requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * 16)})"
    rng = np.random.default_rng(0)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    for lo in range(0, rows, batch):
        conn.executemany(sql, _batch(rng, texts, t0, lo, min(batch, rows - lo), rows))
        conn.commit()
    for _, ddl in indexes:
        conn.execute(ddl)
    conn.commit()
    conn.close()
    took = time.perf_counter() - start
    return {"generated": True, "rows": rows, "seconds": round(took, 1), "rows_per_s": rows / took}


def _batch(rng, texts, t0, lo, n, total):
    """``n`` rows as plain tuples, built column-wise (numpy / one urandom call per batch:
    per-row uuid4() and strftime() cost more than the insert)."""
    pick = rng.integers(0, len(texts), n)
    labels = np.array(LABELS)[rng.integers(0, 3, n)].tolist()
    scores = rng.uniform(0.4, 1.0, n).tolist()
    latency = rng.gamma(4.0, 5.0, n).tolist()
    ids = os.urandom(16 * n).hex()
    # 30 days of traffic in order, as the server writes it (SQLAlchemy's SQLite format)
    offsets = ((lo + np.arange(n)) * (30 * 86400 * 10**6 // total)).astype("timedelta64[us]")
    stamps = np.datetime_as_string(np.datetime64(t0.replace(tzinfo=None), "us") + offsets)
    chosen = [texts[i] for i in pick]
    return zip(
        [ids[32 * i : 32 * i + 32] for i in range(n)],
        [0] * n,
        [s.replace("T", " ") for s in stamps],
        ["fin-sentiment"] * n,
        ["fin-sentiment/3"] * n,
        ["9f2c1e0a7b3d4e5f"] * n,
        ["primary"] * n,
        ["team-a"] * n,
        ["/v1/classify"] * n,
        latency,
        [len(t) // 4 for t in chosen],
        chosen,
        labels,
        labels,
        scores,
        [200] * n,
        strict=True,
    )


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT max(pk) FROM honed_requests").fetchone()[0] or 0
    except sqlite3.Error:
        return 0


def build_profile(folder: Path) -> Path:
    from honed.evals.profile import ProfileConfig, build_reference_profile

    texts, labels = sentences()
    rng = np.random.default_rng(1)
    idx = rng.permutation(len(texts))[:2000]
    profile = build_reference_profile(
        [texts[i] for i in idx],
        labels=[labels[i] for i in idx],
        predictions=[labels[i] for i in idx],
        confidences=rng.uniform(0.4, 1.0, len(idx)),
        embedder=HashEmbedder(),
        config=ProfileConfig(n_clusters=8, n_components=8, sample_size=500),
    )
    return profile.save(folder)


def stream(db: Path, profile_dir: Path, chunk: int, sample: int) -> dict:
    from honed.evals.profile import ReferenceProfile
    from honed.monitor.drift_stream import stream_drift
    from honed.monitor.requestlog import RequestStore

    profile = ReferenceProfile.load(profile_dir)
    store = RequestStore(f"sqlite:///{db}")
    start, cpu0 = time.perf_counter(), cpu_s()
    step = max(1_000_000 // chunk, 1)

    def progress(rows: int) -> None:  # a line per ~1M rows, to stderr (a cut run still tells)
        nonlocal step
        step -= 1
        if step == 0:
            step = max(1_000_000 // chunk, 1)
            took = time.perf_counter() - start
            line = {"rows": rows, "seconds": round(took), "cpu_s": round(cpu_s() - cpu0)}
            line["peak_rss_mb"] = round(rss_mb())
            print(json.dumps(line), file=sys.stderr, flush=True)

    report = stream_drift(
        profile,
        store,
        embedder=HashEmbedder(),
        chunk_size=chunk,
        embed_sample=sample,
        progress=progress,
    )
    took = time.perf_counter() - start
    n = report.window_size
    return {
        "rows": n,
        "seconds": round(took, 1),
        "rows_per_s": round(n / took),
        "cpu_s": round(cpu_s() - cpu0, 1),
        "cpu_us_per_row": round((cpu_s() - cpu0) / max(n, 1) * 1e6, 1),
        "peak_rss_mb": round(rss_mb()),
        "status": report.status,
        "stream": report.stream,
        "components": {k: round(c.value, 5) for k, c in report.components.items()},
    }


def baseline(db: Path, rows: int, how: str) -> dict:
    from sqlalchemy import create_engine

    columns = ["pk", "id", "created_at", "input_text", "predicted_label", "score", "embedding"]
    before = rss_mb()
    start = time.perf_counter()
    if how == "pandas":
        import pandas as pd

        engine = create_engine(f"sqlite:///{db}")
        query = f"SELECT {', '.join(columns)} FROM honed_requests WHERE pk <= {rows}"
        held = len(pd.read_sql(query, engine))
    else:  # the in-memory check's read: RequestStore.fetch (as load_window calls it)
        from honed.monitor.requestlog import RequestStore

        store = RequestStore(f"sqlite:///{db}")
        held = len(store.fetch(columns=columns, limit=rows))
    return {
        "how": how,
        "rows": held,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(rss_mb()),
        "rss_before_mb": round(before),
    }


def _child(*argv: str) -> dict:
    """Run one phase in a fresh interpreter so its peak RSS is its own."""
    cmd = [sys.executable, __file__, *argv]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--baseline-rows", type=int, default=1_000_000)
    parser.add_argument("--db", default="/tmp/honed-drift-10m/requests.db")
    parser.add_argument("--chunk-size", type=int, default=50_000)
    parser.add_argument("--embed-sample", type=int, default=10_000)
    parser.add_argument("--phase", choices=["all", "generate", "stream", "baseline"], default="all")
    parser.add_argument("--how", default="fetch")
    parser.add_argument("--skip-baseline", action="store_true", help="Only generate + stream.")
    args = parser.parse_args()
    db = Path(args.db)
    profile_dir = db.parent / "profile"
    if args.phase == "generate":
        print(json.dumps(generate(db, args.rows)))
        return
    if args.phase == "stream":
        print(json.dumps(stream(db, profile_dir, args.chunk_size, args.embed_sample)))
        return
    if args.phase == "baseline":
        print(json.dumps(baseline(db, args.baseline_rows, args.how)))
        return
    print("generate:", json.dumps(generate(db, args.rows)), flush=True)
    print(f"log file: {db.stat().st_size / 2**30:.2f} GiB", flush=True)
    build_profile(profile_dir)
    common = ["--db", str(db), "--chunk-size", str(args.chunk_size)]
    common += ["--embed-sample", str(args.embed_sample), "--baseline-rows", str(args.baseline_rows)]
    result = _child("--phase", "stream", *common)
    print("stream:", json.dumps(result), flush=True)
    for how in () if args.skip_baseline else ("fetch", "pandas"):
        base = _child("--phase", "baseline", "--how", how, *common)
        scale = args.rows / max(base["rows"], 1)
        grown = base["rss_before_mb"] + (base["peak_rss_mb"] - base["rss_before_mb"]) * scale
        base["extrapolated_peak_rss_mb_at_rows"] = round(grown)
        print(f"baseline {how}:", json.dumps(base), flush=True)


if __name__ == "__main__":
    main()
