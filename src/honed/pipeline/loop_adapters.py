"""The loop's calls into the other parts of the closed loop, one small function each.

The loop reaches the data, gate, canary-analysis, registry and server parts only through
these functions, so tests can replace any of them and each part can change behind its own.
"""

from __future__ import annotations

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
    data = spec.data.model_dump()
    original = data.get("sources") or [_source_entry(spec, data)]
    extra = [
        {"path": f["path"], "format": Path(f["path"]).suffix.lstrip("."), "kind": f["kind"]}
        for f in files
    ]
    data["sources"] = [*original, *extra]
    data.pop("source", None)
    return data


def _source_entry(spec: Any, data: dict[str, Any]) -> dict[str, Any]:
    entry = {"path": spec.data_source(), "kind": "data"}
    if data.get("format") not in (None, "auto"):
        entry["format"] = data["format"]
    return entry


# --- gate: honed.pipeline.gate.gate_challenger ----------------------------------------------


def gate(spec: Any, challenger: str, champion: str | None = None) -> dict[str, Any]:
    """``{passed, checks, evidence}`` of the challenger against the champion [gate helper]."""
    from honed.pipeline.gate import gate_challenger

    decision = gate_challenger(
        spec.registered_name(),
        challenger,
        champion,
        spec.eval.gate,
        spec.registry,
        floors=spec.eval.min_metrics,
    )
    return {
        "passed": bool(decision.passed),
        "checks": decision.checks,
        "evidence": decision.evidence,
    }


# --- canary analysis: honed.monitor.canary.analyse_canary -----------------------------------


def analyse_canary(spec: Any, model: str, since: datetime) -> dict[str, Any]:
    """``{decision, reasons, evidence}``; decision in promote / rollback / wait [drift helper]."""
    from honed.monitor.canary import analyse_canary as analyse
    from honed.monitor.requestlog import RequestStore

    verdict = analyse(RequestStore(spec.loop.request_log_url), model, since, spec.canary)
    return {"decision": verdict.decision, "reasons": verdict.reasons, "evidence": verdict.evidence}


# --- registry: Registry.promote with history ------------------------------------------------


def promote(spec: Any, version: str, reason: str, evidence: dict[str, Any]) -> dict[str, Any]:
    """Move ``champion`` to ``version`` with the reason and evidence in the history [gate]."""
    from honed.registry.store import Registry

    new, previous = Registry(spec.registry).promote(
        spec.registered_name(), version, "champion", reason=reason, actor="loop", evidence=evidence
    )
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
        self.key_env = key_env
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
        return self._body(
            self._call("POST", f"/admin/canary/{model}/promote", json={}), ok=(200, 404)
        )

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
            hint = {
                404: " (no canary admin API on this server?)",
                401: f" (set {self.key_env} to a key with the 'admin' scope)",
                403: f" (set {self.key_env} to a key with the 'admin' scope)",
            }.get(response.status_code, "")
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
