"""Operate stage: keep a served specialist healthy.

Modules (import what you need; nothing heavy is imported here):

- ``requestlog``: request/feedback tables (SQLAlchemy; SQLite default, PostgreSQL by URL) and
  :class:`~honed.monitor.requestlog.RequestLogger`, the non-blocking batch writer.
- The reference profile drift checks compare with is built when a model is trained:
  :func:`~honed.evals.profile.build_reference_profile` (evaluation stage, with
  ``honed.evals.textstats``), saved as ``<model folder>/reference_profile/`` (json + npz).
- ``drift``: :func:`~honed.monitor.drift.check_drift` (PSI/KL over k-means cells and PCA
  components, domain-classifier ROC AUC, novelty, text statistics, predictions, confidence)
  with :class:`~honed.monitor.drift.DriftConfig` thresholds, calibrated for the window's size
  by ``calibration`` (null windows drawn from the profile's held-out texts).
- ``canary``: :func:`~honed.monitor.canary.analyse_canary`, the challenger's arm (canary or
  shadow) against the primary over a window: promote, rollback or wait.
- ``window``: reads a window of logged traffic (embeddings cached in the log) and checks it.
- ``quality``: confidence/feedback agreement, generator output checks (empty, refusal,
  length, format, PII), latency and error-rate objectives.
- ``feedback``: ``POST /v1/feedback`` router, feedback store (explicit thumbs/corrections and
  the server's implicit ``regenerate`` / ``abandoned`` signals), export of explicit feedback to
  classification / SFT / DPO jsonl.
- ``alerts``: log line, webhook, Prometheus gauges.
- ``report``: one self-contained HTML report.
- ``commands``: ``honed monitor drift|canary|report`` (drift alerts and latency / error-rate
  objective alerts), ``honed feedback export``.
"""
