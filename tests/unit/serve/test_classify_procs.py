"""Classifier batches in worker processes (``classify_processes``): same answers as in-process,
a dead worker is replaced without losing the request, clear errors at start-up."""

from __future__ import annotations

import os
import signal
import time

import pytest
from tests.unit.serve._serve_support import run_app
from tests.unit.serve.test_classify_engine import TEXTS, _classifier

from honed.errors import ModelError
from honed.serve.engine import loading
from honed.serve.engine.classify_procs import ClassifierProcesses, WorkerSpec
from honed.serve.settings import ServeSettings


def _spec(tiny, device: str = "cpu", **over) -> WorkerSpec:
    ref = loading.parse_entry(f"sent={tiny['clf']}")
    return WorkerSpec(ref, ServeSettings(models=[], **over), device, "float32")


def _wait_dead(pid: int) -> None:
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def test_worker_processes_answer_like_the_in_process_model(tiny):
    want, want_counts = _classifier(tiny).classify(TEXTS)
    procs = ClassifierProcesses(_spec(tiny), 2)
    try:
        assert procs.labels == _classifier(tiny).labels
        got, counts = procs.classify(TEXTS)
    finally:
        procs.close()
    assert counts == want_counts
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want, strict=True):
        assert g["score"] == pytest.approx(w["score"], abs=1e-6)


def test_a_dead_worker_is_replaced(tiny):
    procs = ClassifierProcesses(_spec(tiny), 1)
    try:
        first = procs.pids[0]
        os.kill(first, signal.SIGKILL)
        _wait_dead(first)
        results, counts = procs.classify(["profits fell"])  # runs on the replacement
        assert len(results) == 1 and counts[0] > 0
        assert procs.restarts == 1 and procs.pids[0] != first
    finally:
        procs.close()


def test_api_request_survives_a_worker_crash(tiny):
    """The batch that hit the dead worker runs again on its replacement: the client sees 200."""
    settings = ServeSettings(models=[f"sent={tiny['clf']}"], classify_processes=1)

    async def go(c, app):
        procs = app.state.engine.classifier_for("sent").processes
        pid = procs.pids[0]
        os.kill(pid, signal.SIGKILL)
        _wait_dead(pid)
        r = await c.post("/v1/classify", json={"model": "sent", "input": TEXTS})
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == len(TEXTS)
        assert procs.restarts == 1
        metrics = (await c.get("/metrics")).text
        version = app.state.engine.classifiers["sent"].digest
        assert (
            f'honed_classifier_worker_restarts{{model="sent",version="{version}"}} 1.0' in metrics
        )
        return procs

    procs = run_app(settings, go)
    # Shutdown (lifespan) stopped the workers.
    assert procs is not None
    for pid in procs.pids:
        _wait_dead(pid)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_worker_that_cannot_load_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    ref = loading.ModelRef("broken", str(tmp_path), tmp_path, "classify")
    spec = WorkerSpec(ref, ServeSettings(models=[]), "cpu", "float32")
    with pytest.raises(ModelError, match="'broken' failed to load"):
        ClassifierProcesses(spec, 1)


def test_gpu_devices_are_refused_before_starting_anything(tiny):
    with pytest.raises(ModelError, match="classify_processes"):
        ClassifierProcesses(_spec(tiny, device="cuda"), 1)


def test_close_does_not_wait_forever_for_a_hung_worker(tiny):
    procs = ClassifierProcesses(_spec(tiny), 1)
    busy = procs._idle.get()  # as if a batch thread were stuck in a call
    os.kill(busy.proc.pid, signal.SIGSTOP)
    procs.close(timeout=0.5)  # returns (pytest-timeout would catch a hang) ...
    assert not busy.proc.is_alive()
    assert busy.proc.exitcode == -signal.SIGKILL  # ... by killing the stuck worker
