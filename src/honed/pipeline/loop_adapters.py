"""The loop's calls into the other parts of the closed loop, one small function each.

Each adapter imports the real function (the interfaces of issue 12) and, where that function
is absent on this branch (ImportError / a missing field), falls back to a clearly marked STUB so
the loop runs end to end before the merge. After the merge the STUB branches are dead code:
delete every block marked ``# STUB(issue-12)``.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from honed.errors import HonedError

logger = logging.getLogger(__name__)


# --- data: data.sources ----------------------------------------------------------------------


def data_with_sources(spec: Any, files: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    """The ``data:`` section of a round: the spec's own data plus ``files`` (``{path, kind}``,
    kind ``data`` or ``feedback``), as ``data.sources`` [data helper]."""
    from honed.data.config import DataConfig

    data = spec.data.model_dump()
    if "sources" in DataConfig.model_fields:
        original = data.get("sources") or [_source_entry(spec, data)]
        extra = [
            {"path": f["path"], "format": Path(f["path"]).suffix.lstrip("."), "kind": f["kind"]}
            for f in files
        ]
        data["sources"] = [*original, *extra]
        data.pop("source", None)
        return data
    return _stub_merged_data(spec, data, files, folder)  # STUB(issue-12)


def _source_entry(spec: Any, data: dict[str, Any]) -> dict[str, Any]:
    entry = {"path": spec.data_source(), "kind": "data"}
    if data.get("format") not in (None, "auto"):
        entry["format"] = data["format"]
    return entry


def _stub_merged_data(  # STUB(issue-12): until data.sources lands
    spec: Any, data: dict[str, Any], files: list[dict[str, Any]], folder: Path
) -> dict[str, Any]:
    """One jsonl with the original rows, then each file's rows; a later row of the same text
    replaces the earlier label (feedback corrections override)."""
    from honed.data.dataset import classification_rows, normalise
    from honed.data.loaders import load_raw

    rows, _bad = classification_rows(load_raw(spec.data_source(), spec.data), spec.data)
    merged = {normalise(r["text"]): {"text": r["text"], "label": r["label"]} for r in rows}
    for entry in files:
        for line in Path(entry["path"]).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                merged[normalise(row["text"])] = {"text": row["text"], "label": row["label"]}
    out = folder / "data" / "merged.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in merged.values()), encoding="utf-8")
    data.update(source=str(out), format="jsonl", encoding="utf-8")
    data.update(text_field="text", label_field="label", on_bad_rows="skip")
    return data


# --- gate: honed.pipeline.gate.gate_challenger ----------------------------------------------


def gate(spec: Any, challenger: str, champion: str | None = None) -> dict[str, Any]:
    """``{passed, checks, evidence}`` of the challenger against the champion [gate helper]."""
    try:
        from honed.pipeline.gate import gate_challenger
    except ImportError:
        return _stub_gate(spec, challenger, champion)  # STUB(issue-12)
    cfg = getattr(spec.eval, "gate", None)
    decision = gate_challenger(spec.registered_name(), challenger, champion, cfg, spec.registry)
    return {
        "passed": bool(decision.passed),
        "checks": decision.checks,
        "evidence": decision.evidence,
    }


def _stub_gate(spec: Any, challenger: str, champion: str | None) -> dict[str, Any]:  # STUB
    """STUB(issue-12): accuracy of both models on the champion's frozen set when it exists,
    else their recorded test accuracy; the challenger may lose at most 2 points."""
    from honed.registry.store import resolve_ref

    champ_ref = champion or f"{spec.registered_name()}@champion"
    try:
        champ_dir = resolve_ref(champ_ref, spec.registry)
    except HonedError:
        check = {"name": "first model", "passed": True, "value": None, "threshold": None}
        return {"passed": True, "checks": [check], "evidence": {"stub": True}}
    chall_dir = resolve_ref(challenger, spec.registry)
    frozen = champ_dir / "eval" / "frozen_test.jsonl"
    values = (
        _accuracy_on(frozen, champ_dir, chall_dir)
        if frozen.is_file()
        else [_recorded_accuracy(d) for d in (champ_dir, chall_dir)]
    )
    diff = values[1] - values[0]
    check = {
        "name": "accuracy",
        "passed": diff >= -0.02,
        "value": round(diff, 4),
        "threshold": -0.02,
        "detail": f"challenger {values[1]:.4f} vs champion {values[0]:.4f}",
    }
    evidence = {"stub": True, "champion": values[0], "challenger": values[1]}
    return {"passed": check["passed"], "checks": [check], "evidence": evidence}


def _recorded_accuracy(folder: Path) -> float:
    from honed.paths import read_lineage

    return float((read_lineage(folder).get("metrics") or {}).get("test_accuracy", 0.0))


def _accuracy_on(frozen: Path, *folders: Path) -> list[float]:
    from honed.models.predict import Predictor

    rows = [json.loads(x) for x in frozen.read_text(encoding="utf-8").splitlines() if x.strip()]
    out = []
    for folder in folders:
        preds = Predictor.from_folder(folder).predict([r["text"] for r in rows])
        out.append(sum(p["label"] == r["label"] for p, r in zip(preds, rows, strict=True)))
    return [n / max(len(rows), 1) for n in out]


# --- canary analysis: honed.monitor.canary.analyse_canary -----------------------------------


def analyse_canary(spec: Any, model: str, since: datetime) -> dict[str, Any]:
    """``{decision, reasons, evidence}``; decision in promote / rollback / wait [drift helper]."""
    from honed.monitor.requestlog import RequestStore

    store = RequestStore(spec.loop.request_log_url)
    try:
        from honed.monitor.canary import analyse_canary as real
    except ImportError:
        return _stub_canary(store, model, since)  # STUB(issue-12)
    cfg = getattr(spec, "canary", None)
    if cfg is None:
        from honed.monitor.config import CanaryConfig

        cfg = CanaryConfig()
    verdict = real(store, model, since, cfg)
    return {"decision": verdict.decision, "reasons": verdict.reasons, "evidence": verdict.evidence}


def _stub_canary(store: Any, model: str, since: datetime) -> dict[str, Any]:
    """STUB(issue-12): error rates per arm from the request log; >= 20 requests per arm."""
    rows = store.fetch(since, model=model, columns=["arm", "status_code", "error"])
    arms: dict[str, list[int]] = {}
    for r in rows:
        failed = int((r["status_code"] or 200) >= 500 or bool(r["error"]))
        arms.setdefault(r["arm"] or "primary", []).append(failed)
    rates = {arm: sum(v) / len(v) for arm, v in arms.items()}
    evidence = {"stub": True, "requests": {a: len(v) for a, v in arms.items()}, "errors": rates}
    if min((len(arms.get(a, [])) for a in ("primary", "canary")), default=0) < 20:
        return {
            "decision": "wait",
            "reasons": ["fewer than 20 requests per arm"],
            "evidence": evidence,
        }
    worse = rates["canary"] > rates["primary"] + 0.05
    reason = f"error rate canary {rates['canary']:.3f} vs primary {rates['primary']:.3f}"
    return {
        "decision": "rollback" if worse else "promote",
        "reasons": [reason],
        "evidence": evidence,
    }


# --- registry: Registry.promote with history ------------------------------------------------


def promote(spec: Any, version: str, reason: str, evidence: dict[str, Any]) -> dict[str, Any]:
    """Move ``champion`` to ``version`` with the reason and evidence in the history [gate]."""
    import inspect

    from honed.registry.store import Registry

    registry = Registry(spec.registry)
    name = spec.registered_name()
    if "actor" in inspect.signature(registry.promote).parameters:
        new, previous = registry.promote(
            name, version, "champion", reason=reason, actor="loop", evidence=evidence
        )
    else:  # STUB(issue-12): no history yet
        new, previous = registry.promote(name, version, "champion")
    return {"champion": new, "previous": previous}


def tag(spec: Any, version: str, tags: dict[str, str]) -> None:
    from honed.registry.store import Registry

    registry = Registry(spec.registry)
    registry.tag_version(registry.get_version(f"{spec.registered_name()}/{version}"), tags)


def registered_run(spec: Any, run_dir: Path) -> str | None:
    """The version already registered from the finished run in ``run_dir`` (same spec hash,
    a tag every version carries), or None: makes the training step idempotent."""
    from honed.paths import read_lineage
    from honed.registry.store import Registry

    lineage = read_lineage(run_dir)
    if not (run_dir / "metrics.json").is_file() or not lineage.get("spec_sha256"):
        return None
    try:
        versions = Registry(spec.registry).versions(spec.registered_name())
    except HonedError:
        return None
    for v in versions:
        if (v.tags or {}).get("spec_sha256") == lineage["spec_sha256"]:
            return str(v.version)
    return None


def champion_version(spec: Any) -> str | None:
    """The version ``champion`` points at now (None: no champion yet)."""
    from honed.registry.store import Registry

    try:
        return str(
            Registry(spec.registry).get_version(f"{spec.registered_name()}@champion").version
        )
    except HonedError:
        return None


# --- the server's admin canary API -----------------------------------------------------------


class AdminClient:
    """The server's admin canary routes [canary helper]: start, promote, roll back."""

    def __init__(self, server: str, key_env: str = "HONED_ADMIN_KEY", timeout: float = 120.0):
        import httpx

        key = os.environ.get(key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.server = server.rstrip("/")
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def start(self, model: str, challenger: str, weight: float, mode: str, sticky: str | None):
        body = {"model": model, "challenger": challenger, "weight": weight, "mode": mode}
        body["sticky"] = sticky
        response = self._call("POST", "/admin/canary", json=body)
        # 409: a canary is already running, e.g. started before a crash of this loop.
        return self._body(response, ok=(200, 201, 202, 409))

    def state(self) -> dict[str, Any]:
        return self._body(self._call("GET", "/admin/canary"), ok=(200,))

    def promote(self, model: str) -> dict[str, Any]:
        # 404: no canary any more (already promoted before a crash of this loop).
        return self._body(self._call("POST", f"/admin/canary/{model}/promote"), ok=(200, 404))

    def rollback(self, model: str) -> dict[str, Any]:
        return self._body(self._call("DELETE", f"/admin/canary/{model}"), ok=(200, 204, 404))

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            return self._http.request(method, path, **kw)
        except httpx.HTTPError as err:
            raise HonedError(f"server {self.server}: {method} {path} failed: {err}") from None

    def _body(self, response: Any, ok: tuple[int, ...]) -> dict[str, Any]:
        if response.status_code not in ok:
            hint = " (no canary admin API on this server?)" if response.status_code == 404 else ""
            raise HonedError(
                f"server {self.server}: {response.request.method} {response.request.url.path} "
                f"-> {response.status_code}{hint}: {response.text[:300]}"
            )
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {"text": response.text[:300]}
        return {
            "status": response.status_code,
            **(body if isinstance(body, dict) else {"body": body}),
        }
