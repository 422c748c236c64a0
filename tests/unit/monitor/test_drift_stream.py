"""The streamed drift check equals the in-memory one, whatever the chunk size, holding at
most one chunk of rows and the embedding sample at a time."""

from __future__ import annotations

import argparse
import hashlib
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import insert

from honed.errors import HonedError
from honed.evals.profile import ProfileConfig, build_reference_profile
from honed.monitor import drift_stream
from honed.monitor.commands import register
from honed.monitor.config import DriftConfig
from honed.monitor.drift_stream import Reservoir, stream_drift
from honed.monitor.requestlog import RequestRow, RequestStore, normalise_record
from honed.monitor.window import drift_for_window, load_window

FIN = [
    "Operating profit rose to EUR {} mn from EUR {} mn in the third quarter .",
    "The company said net sales for the period increased by {} % to EUR {} mn .",
    "Shares in the bank fell {} % after the results , the lowest level since {} .",
]
OFF = ["Write a short poem about the ocean and the {} moons of {} .", "Der Hund ist {} und {} ."]
LABELS = ["positive", "negative", "neutral"]


class HashEmbedder:
    """Bag of hashed words (n, 32), unit rows; each text's vector depends on that text only
    (so embedding a sample or the whole window gives the same rows)."""

    def encode(self, texts):
        out = np.zeros((len(texts), 32), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 32] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


def _texts(templates, n, rng):
    return [templates[i % len(templates)].format(*rng.integers(100, size=2)) for i in range(n)]


@pytest.fixture(scope="module")
def profile():
    rng = np.random.default_rng(0)
    texts = _texts(FIN, 600, rng)
    labels = LABELS * 200
    return build_reference_profile(
        texts,
        labels=labels,
        predictions=labels,
        confidences=rng.uniform(0.8, 1.0, 600),
        embedder=HashEmbedder(),
        config=ProfileConfig(n_clusters=4, n_components=4, sample_size=300, calibration_size=100),
    )


def _log(url: str, n: int = 150) -> RequestStore:
    """``n`` requests over the last two hours (a third of them off-domain; some without a
    label, score, text or cached embedding) and a few older ones outside the window."""
    rng = np.random.default_rng(1)
    store = RequestStore(url)
    now = datetime.now(UTC)
    texts = _texts(FIN, n, rng)
    texts[::3] = _texts(OFF, len(texts[::3]), rng)
    emb = HashEmbedder().encode(texts).astype(np.float16)
    rows = [_row("old", i, texts[i], now - timedelta(days=3), None) for i in range(5)]
    for i, text in enumerate(texts):
        cached = emb[i].tobytes() if i % 4 else None  # a quarter to embed
        row = _row("req", i, "" if i % 37 == 5 else text, now - timedelta(hours=2), cached)
        row["created_at"] += timedelta(seconds=i)
        row["predicted_label"] = None if i % 11 == 0 else LABELS[(i * 7) % 4 % 3]
        row["score"] = None if i % 13 == 0 else float(rng.uniform(0.3, 1.0))
        rows.append(row)
    with store.engine.begin() as conn:
        conn.execute(insert(RequestRow), rows)
    return store


def _row(prefix, i, text, when, emb):
    record = {"id": f"{prefix}{i}", "created_at": when, "input_text": text, "embedding": emb}
    return normalise_record(record)


def _since():
    return datetime.now(UTC) - timedelta(hours=3)


def _values(report):
    out = {}
    for name, comp in report.components.items():
        out[name] = comp.value
        for key, value in comp.details.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{name}.{key}"] = value
            elif isinstance(value, list) and all(isinstance(v, float) for v in value):
                out.update({f"{name}.{key}.{j}": v for j, v in enumerate(value)})
            elif isinstance(value, dict) and all(isinstance(v, float) for v in value.values()):
                out.update({f"{name}.{key}.{k}": v for k, v in value.items()})
    return out


def _assert_same(a, b):
    va, vb = _values(a), _values(b)
    assert va.keys() == vb.keys()
    for key in va:
        assert va[key] == pytest.approx(vb[key], rel=1e-9, abs=1e-12), key
    assert a.status == b.status and a.window_size == b.window_size
    assert {k: c.status for k, c in a.components.items()} == {
        k: c.status for k, c in b.components.items()
    }


@pytest.mark.parametrize("calibrate", [False, True])
def test_streamed_statistics_equal_the_in_memory_check(profile, db_url, calibrate):
    store = _log(db_url)
    cfg = DriftConfig(calibrate=calibrate, calibration_draws=20, classifier_draws=20)
    window = load_window(store, _since(), embedder=HashEmbedder(), dim=profile.dim)
    expected = drift_for_window(profile, window, cfg)
    # (the in-memory check cached the embeddings it computed, as float16 like the cached
    # ones: the streamed check reads them back equal)
    streamed = stream_drift(
        profile, store, _since(), embedder=HashEmbedder(), config=cfg, chunk_size=17
    )
    assert len(expected.components) == 9  # every component: embedding, text, labels, conf
    _assert_same(streamed, expected)
    assert streamed.stream["rows"] == len(window.texts) == 150 - 4  # 4 empty texts
    assert streamed.stream["embedding_sample"] == len(window.texts)


def test_chunk_size_does_not_change_the_answer(profile, sqlite_url):
    store = _log(sqlite_url, 200)
    cfg = DriftConfig(calibrate=False)
    reports = [
        stream_drift(
            profile,
            store,
            _since(),
            embedder=HashEmbedder(),
            config=cfg,
            chunk_size=size,
            embed_sample=60,
        )
        for size in (1, 7, 64, 100_000)
    ]
    for report in reports[1:]:
        _assert_same(report, reports[0])
    assert {r.stream["embedding_sample"] for r in reports} == {60}
    assert [r.stream["chunks"] for r in reports] == [194, 28, 4, 1]


def test_memory_is_one_chunk_plus_the_sample(profile, sqlite_url, monkeypatch):
    store = _log(sqlite_url, 200)
    held = []
    chunks = drift_stream.iter_chunks

    def counting(*args, **kwargs):
        for rows in chunks(*args, **kwargs):
            held.append(len(rows))
            yield rows

    sizes, seen = [], []
    extend = Reservoir.extend

    def watched(self, items):
        extend(self, items)
        sizes.append(len(self.items))

    monkeypatch.setattr(drift_stream, "iter_chunks", counting)
    monkeypatch.setattr(Reservoir, "extend", watched)
    report = stream_drift(
        profile,
        store,
        _since(),
        embedder=HashEmbedder(),
        config=DriftConfig(calibrate=False),
        chunk_size=25,
        embed_sample=30,
        progress=seen.append,
    )
    assert max(held) <= 25 and sum(held) == report.window_size == 194
    assert seen == [min(25 * (i + 1), 194) for i in range(8)]
    assert max(sizes) == 30 and report.stream["max_rows_held"] <= 25


def test_reservoir_is_a_uniform_sample():
    hits = np.zeros(100)
    for seed in range(400):
        res = Reservoir(10, seed)
        for start in range(0, 100, 9):
            res.extend(list(range(start, min(start + 9, 100))))
        assert len(set(res.items)) == 10 and res.seen == 100
        hits[res.items] += 1
    # each item kept with probability 0.1: 40 of 400 expected, binomial sd 6
    assert hits.min() > 15 and hits.max() < 70
    with pytest.raises(HonedError, match="sample size"):
        Reservoir(0)


def test_small_and_empty_windows(profile, sqlite_url):
    store = RequestStore(sqlite_url)
    report = stream_drift(profile, store, _since(), config=DriftConfig(expect_traffic=True))
    assert report.status == "alert" and "traffic" in report.components
    assert stream_drift(profile, store, _since()).status == "insufficient_data"
    with pytest.raises(HonedError, match="chunk size"):
        stream_drift(profile, store, _since(), chunk_size=0)


def test_monitor_drift_stream_cli(profile, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    _log(url)
    RequestStore(url).store_embeddings([])  # nothing: the missing ones need the embedder
    profile.save(tmp_path / "profile")
    (tmp_path / "thr.yaml").write_text("calibrate: false\n")
    parser = argparse.ArgumentParser(prog="honed")
    register(parser.add_subparsers(dest="command"))
    argv = ["monitor", "drift", "--stream", "--chunk-size", "40", "--embed-sample", "50"]
    argv += ["--profile", str(tmp_path / "profile"), "--db", url, "--since", "3h"]
    argv += ["--thresholds", str(tmp_path / "thr.yaml"), "--json", "--no-save"]
    monkey = pytest.MonkeyPatch()
    monkey.setattr("honed.models.embed.Embedder.packaged", lambda: HashEmbedder())
    try:
        args = parser.parse_args(argv)
        args.func(args)
    finally:
        monkey.undo()
    doc = json.loads(capsys.readouterr().out)
    assert doc["window_size"] == 146 and doc["stream"]["chunks"] == 4
    assert doc["stream"]["embedding_sample"] == 50 and doc["objectives"] is None
