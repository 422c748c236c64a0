"""What verifying a registered version's digests costs at load (issue 13, item 6).

    .venv/bin/python bench/digest_verify.py [--gb 1.0]

Writes a model folder with a config.json and a weights file of ``--gb`` GB (random bytes:
hashing does not parse them) into a temporary folder, then times
``honed.security.supply``: ``model_manifest`` (what registration records), the first
``verify_manifest`` in a fresh process state (every byte hashed again: what a server start or
`honed predict` pays), and a repeated ``verify_manifest`` (files unchanged: served from the
(size, mtime, ctime, inode) cache: what the alias poller pays). The file was just written, so
it is read from the page cache; a cold disk adds its read time (the load reads the file anyway).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from honed.security import supply


def _timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="weights size in GB")
    args = parser.parse_args()
    size = int(args.gb * 1e9)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text("{}")
        with (folder / "model.safetensors").open("wb") as fh:
            for _ in range(size // (64 << 20)):
                fh.write(os.urandom(64 << 20))
            fh.write(os.urandom(size % (64 << 20)))
        record_s, manifest = _timed(supply.model_manifest, folder)
        supply._VERIFIED.clear()  # a new process: nothing verified yet
        first_s, _ = _timed(supply.verify_manifest, folder, manifest, "bench/1")
        again_s, _ = _timed(supply.verify_manifest, folder, manifest, "bench/1")
    print(
        json.dumps(
            {
                "gb": args.gb,
                "record_s": round(record_s, 3),
                "first_verify_s": round(first_s, 3),
                "first_verify_s_per_gb": round(first_s / args.gb, 3),
                "cached_verify_ms": round(again_s * 1000, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
