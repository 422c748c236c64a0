"""Registry versions of served models, and following an alias (`NAME@champion`).

A model served from an alias re-resolves it every ``alias_poll_seconds``; when the alias moved
(a promotion or a rollback in the registry), the new version is loaded beside the old one and
swapped in without a restart (honed.serve.engine.rollout.replace_primary: no request fails,
in-flight requests finish on the old weights).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("honed.serve")

# (engine, model id, folder, version) -> whether the primary was replaced
Swap = Callable[[Any, str, str, str | None], Awaitable[bool]]

_ALIAS = re.compile(r"^(?:models:/)?[A-Za-z0-9][A-Za-z0-9._-]*@[A-Za-z0-9._-]+$")


def is_alias(ref: str) -> bool:
    return bool(_ALIAS.match(ref)) and not Path(ref).expanduser().is_dir()


def lookup_alias(ref: str) -> tuple[str, Path]:
    """("NAME/VERSION", its local folder) the alias points at now."""
    from honed.serve.engine.loading import resolve

    folder, version = resolve(ref)
    return version or ref, folder


class AliasFollower:
    """Polls the aliases an engine serves from and swaps in the versions they move to."""

    def __init__(self, engine: Any, interval_s: float, swap: Swap) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self.swap = swap  # honed.serve.engine.rollout.replace_primary
        self.swaps = 0
        self.failures = 0
        self.seen: dict[str, str] = {}  # model id -> the alias's version at the last poll

    def aliases(self) -> dict[str, str]:
        return {mid: ref for mid, ref in self.engine.refs.items() if is_alias(ref)}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.poll()

    async def poll(self) -> list[str]:
        """One round: the model ids swapped to a new version."""
        swapped = []
        for model_id, ref in self.aliases().items():
            try:
                if await self._follow(model_id, ref):
                    swapped.append(model_id)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # keep serving the current version (logged, counted)
                self.failures += 1
                log.error("following %s for %s failed: %s", ref, model_id, err)
        self.swaps += len(swapped)
        return swapped

    async def _follow(self, model_id: str, ref: str) -> bool:
        version, folder = await asyncio.to_thread(lookup_alias, ref)
        if self.seen.get(model_id) == version:
            return False
        # Marked before the swap: a version that fails to load is not retried every poll
        # (a registry that failed to answer, above, is).
        self.seen[model_id] = version
        if not await self.swap(self.engine, model_id, str(folder), version):
            return False
        log.info("%s: %s moved to %s; now serving it", model_id, ref, version)
        return True
