"""Drift demo (``make demo-drift``): in-domain financial headlines, then shifted traffic.

    .venv/bin/python examples/drift_demo.py [--out runs/drift-demo] [--window 250]

1. A reference profile from 1,200 Financial PhraseBank sentences (all-MiniLM-L6-v2).
2. Hourly windows of requests go through the RequestLogger into a SQLite request log:
   six in-domain hours, then three hours with 30% Alpaca instructions (another task) and two
   with 30% German text (another language).
3. After each hour the drift check reads that hour from the log, prints its components and
   raises alerts (log lines + Prometheus gauges); an HTML report is written at the end.

Drift should fire on the shifted hours only. Embeddings are computed once and cached in the
state folder (first run: a minute or two on 2 cores).
"""

from __future__ import annotations

import argparse
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

#: Where the data sets are by default: this repository's data/ and the shared checkout's.
REPO = Path(__file__).resolve().parents[1]
SCHEDULE = (
    [("in-domain", None)] * 6 + [("30% alpaca", "alpaca")] * 3 + [("30% german", "german")] * 2
)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from honed.monitor import replay

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/drift-demo", help="Folder for the log + report.")
    parser.add_argument("--window", type=int, default=300, help="Requests per hour.")
    parser.add_argument("--seed", type=int, default=0)
    replay.add_data_dir_option(parser, REPO)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(message)s")
    import torch

    torch.set_num_threads(2)
    run(Path(args.out), args.window, args.seed, replay.data_dirs_of(args))


def corpora(data_dirs):
    from honed.models.embed import Embedder
    from honed.monitor import replay

    texts, labels = replay.load_phrasebank(data_dirs=data_dirs)
    holder: dict = {}

    def encode(batch):
        holder.setdefault("e", Embedder.packaged())
        return holder["e"].encode(batch)

    def corpus(items):
        return replay.Corpus(items, replay.cached_embeddings(items, encode))

    return (
        corpus(texts),
        labels,
        {
            "alpaca": corpus(replay.load_alpaca(limit=1000, data_dirs=data_dirs)),
            "german": corpus(replay.load_german(data_dirs=data_dirs)),
        },
    )


def run(out: Path, window: int, seed: int, data_dirs) -> None:
    from honed.evals.profile import build_reference_profile
    from honed.monitor.alerts import LogSink, PrometheusSink, alerts_from_drift, dispatch
    from honed.monitor.report import collect, write_report
    from honed.monitor.requestlog import RequestLogger, RequestStore
    from honed.monitor.window import drift_for_window, load_window

    domain, labels, shifted = corpora(data_dirs)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(domain.texts))
    ref_idx, pool = order[:1200], order[1200:]
    profile = build_reference_profile(
        [domain.texts[i] for i in ref_idx],
        labels=[labels[i] for i in ref_idx],
        embeddings=domain.emb[ref_idx],
    )
    out.mkdir(parents=True, exist_ok=True)
    profile.save(out / "reference_profile")
    db = out / "requests.db"
    db.unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    logger = RequestLogger(url)
    store = RequestStore(engine=logger.engine)
    gauges = PrometheusSink(model="financial-sentiment")
    start = datetime.now(UTC) - timedelta(hours=len(SCHEDULE))
    print(
        f"{'hour':>4}  {'traffic':<11} {'status':<6} {'cells PSI':>9} {'PCA PSI':>8} "
        f"{'AUC':>6} {'OOV+':>6} {'lang TVD':>8}"
    )
    for hour, (name, source) in enumerate(SCHEDULE):
        texts, emb = hour_traffic(domain, pool, shifted.get(source), window, rng)
        t0 = start + timedelta(hours=hour)
        for i, text in enumerate(texts):
            # The embedding rides along only to skip re-encoding in the demo; without it
            # `honed monitor drift` encodes the texts once and caches them the same way.
            logger.submit(
                {
                    "input_text": text,
                    "created_at": t0 + timedelta(seconds=i),
                    "model": "financial-sentiment",
                    "latency_ms": float(rng.gamma(2, 8)),
                    "status_code": 200,
                    "embedding": emb[i].astype(np.float16).tobytes(),
                }
            )
        logger.flush()
        win = load_window(store, t0, t0 + timedelta(hours=1), dim=profile.dim)
        report = drift_for_window(profile, win)
        store.save_drift_check(report.to_dict())
        print_row(hour, name, report)
        dispatch(alerts_from_drift(report, "financial-sentiment"), [LogSink(), gauges], report)
    logger.close()
    data = collect(
        store,
        since=start,
        reference_labels=profile.labels,
        title="honed drift demo: financial headlines",
    )
    print(f"report: {write_report(data, out / 'report.html')}")


def hour_traffic(domain, pool, off, window: int, rng):
    """``window`` texts and embeddings (window, d): in-domain, or 30% from ``off``."""
    n_off = 0 if off is None else round(0.3 * window)
    idx = rng.choice(pool, window - n_off, replace=False)
    texts = [domain.texts[i] for i in idx]
    emb = domain.emb[idx]
    if n_off:
        j = rng.choice(len(off.texts), n_off, replace=False)
        texts += [off.texts[i] for i in j]
        emb = np.concatenate([emb, off.emb[j]])
    mix = rng.permutation(len(texts))
    return [texts[i] for i in mix], emb[mix]


def print_row(hour: int, name: str, report) -> None:
    c = report.components

    def v(key: str) -> str:
        return f"{c[key].value:.3f}" if key in c else "-"

    print(
        f"{hour:>4}  {name:<11} {report.status:<6} {v('embedding_cells'):>9} "
        f"{v('embedding_pca'):>8} {v('domain_classifier'):>6} {v('oov_rate'):>6} "
        f"{v('language'):>8}"
    )


if __name__ == "__main__":
    main()
