from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from honed.monitor.drift import ComponentResult, DriftReport
from honed.monitor.feedback import FeedbackStore
from honed.monitor.report import ReportData, collect, write_report
from honed.monitor.requestlog import RequestLogger, RequestStore, make_engine

CHROMIUM = Path("/usr/bin/chromium")


def _check(psi: float, auc: float) -> dict:
    comps = {
        "embedding_cells": ComponentResult("embedding_cells", "psi", psi, "ok", 0.1, 0.2),
        "embedding_pca": ComponentResult(
            "embedding_pca",
            "psi",
            psi / 2,
            "ok",
            0.1,
            0.2,
            {"per_component_psi": [psi, psi / 3, 0.01]},
        ),
        "domain_classifier": ComponentResult("domain_classifier", "roc_auc", auc, "ok", 0.55, 0.6),
    }
    return DriftReport("alert" if psi > 0.2 else "ok", 300, comps).to_dict()


@pytest.fixture
def report_data(sqlite_url):
    engine = make_engine(sqlite_url)
    logger = RequestLogger(engine=engine)
    t0 = datetime.now(UTC) - timedelta(hours=10)
    rng = np.random.default_rng(0)
    for i in range(300):
        logger.submit(
            {
                "id": f"r{i}",
                "created_at": t0 + timedelta(minutes=2 * i),
                "latency_ms": float(rng.gamma(2, 20)),
                "status_code": 500 if i % 50 == 0 else 200,
                "predicted_label": ["positive", "neutral", "negative"][i % 3],
                "input_text": "x",
            }
        )
    logger.close()
    store = RequestStore(engine=engine)
    for psi, auc in [(0.03, 0.5), (0.05, 0.52), (0.31, 0.68)]:
        store.save_drift_check(_check(psi, auc))
    fb = FeedbackStore(engine=engine)
    fb.add({"request_id": "r1", "rating": "up"})
    fb.add({"request_id": "r2", "rating": "down", "correction": "negative"})
    data = collect(store, fb, reference_labels={"positive": 0.3, "neutral": 0.6, "negative": 0.1})
    yield data
    engine.dispose()


def _images(text: str) -> list[np.ndarray]:
    import matplotlib.image as mpimg

    found = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    return [mpimg.imread(io.BytesIO(base64.b64decode(b)), format="png") for b in found]


def test_report_is_self_contained_with_decodable_plots(report_data, tmp_path):
    out = write_report(report_data, tmp_path / "r.html")
    text = out.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    images = _images(text)
    assert len(images) == 5
    for img in images:
        assert img.shape[0] > 100 and img[..., :3].std() > 0.01  # not a blank canvas
    assert "requests</th><td>300" in text and "alert" in text


def test_report_shows_implicit_feedback_apart(sqlite_url, tmp_path):
    engine = make_engine(sqlite_url)
    logger = RequestLogger(engine=engine)
    for i in range(4):
        logger.submit({"id": f"q{i}", "input_text": "hi", "output_text": "hello", "latency_ms": 5})
    logger.submit_feedback("q0", "regenerate", detail={"by_request_id": "q1"})
    logger.submit_feedback("q2", "abandoned", detail={"tokens_sent": 3})
    logger.close()
    fb = FeedbackStore(engine=engine)
    fb.add({"request_id": "q1", "rating": "up"})
    text = write_report(collect(RequestStore(engine=engine), fb), tmp_path / "r.html").read_text()
    assert "<th>feedback (explicit)</th><td>1 (up 1, down 0, corrections 0)</td>" in text
    assert "<th>regenerate (implicit)</th><td>1 (25.00% of requests)</td>" in text
    assert "<th>abandoned (implicit)</th><td>1 (25.00% of requests)</td>" in text
    engine.dispose()


def test_report_with_no_data_still_renders(tmp_path):
    text = write_report(ReportData(), tmp_path / "empty.html").read_text()
    assert len(_images(text)) == 5 and "No drift check stored yet" in text


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium")
def test_report_renders_in_headless_chromium(report_data, tmp_path):
    out = write_report(report_data, tmp_path / "r.html")
    shot = tmp_path / "shot.png"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1000,2400",
        out.as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    if os.environ.get("HONED_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["HONED_KEEP_SCREENSHOT"])
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]  # (h, w, 3) in [0, 1]
    assert img.std() > 0.05  # not blank
    # Plot lines/bars are coloured: a rendered page with decoded PNGs has saturated pixels;
    # broken images (alt text only) leave the page grey-on-white.
    saturation = img.max(-1) - img.min(-1)
    assert (saturation > 0.3).mean() > 0.002


def test_report_quality_section_flags_generated_outputs(tmp_path):
    now = datetime.now(UTC)
    requests = [
        {
            "created_at": now,
            "latency_ms": 10.0,
            "status_code": 200,
            "error": None,
            "predicted_label": None,
            "output_text": text,
        }
        for text in ["fine", "", "mail me at a@b.co", "I'm sorry, but I can't help with that"]
    ]
    text = write_report(ReportData(requests=requests), tmp_path / "q.html").read_text()
    assert "Quality and objectives" in text and "generated outputs</th><td>4" in text
    assert "empty 25.0%" in text and "pii:email 25.0%" in text and "refusal 25.0%" in text


def test_report_escapes_every_value(tmp_path):
    """The page comes from templates/report.html.j2 with autoescape on."""
    now = datetime.now(UTC)
    row = {"created_at": now, "latency_ms": 1.0, "status_code": 200, "error": None}
    requests = [{**row, "predicted_label": None, "output_text": "<script>alert(1)</script>"}]
    data = ReportData(requests=requests, title="<b>R&D</b> report")
    text = write_report(data, tmp_path / "e.html").read_text()
    assert "<script" not in text and "<b>" not in text
    assert "<title>&lt;b&gt;R&amp;D&lt;/b&gt; report</title>" in text
