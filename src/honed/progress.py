"""Progress bars for honed's own long loops (embedding, evaluation, export).

Bars go to stderr, so piped stdout stays clean. They show on a terminal and stay off when
stderr is not one (logs, CI); ``HONED_PROGRESS=1`` forces them on, ``HONED_PROGRESS=0`` off.
Loops that finish within ``DELAY_S`` never draw a bar at all.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")

#: Seconds a loop runs before its bar appears: quick loops print nothing.
DELAY_S = 1.0


def enabled() -> bool:
    """HONED_PROGRESS=0/1 when set, else whether stderr is a terminal."""
    forced = os.environ.get("HONED_PROGRESS", "").strip().lower()
    if forced in {"0", "false", "no", "off"}:
        return False
    if forced in {"1", "true", "yes", "on"}:
        return True
    return sys.stderr.isatty()


def progress(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "it"
) -> Iterable[T]:
    """``items``, wrapped in a tqdm bar on stderr when progress is enabled."""
    if not enabled():
        return items
    from tqdm.auto import tqdm

    return tqdm(
        items, desc=desc, total=total, unit=unit, file=sys.stderr, leave=False, delay=DELAY_S
    )
