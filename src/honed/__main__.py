"""``python -m honed``: the CLI, so launchers that start modules run honed
(``torchrun --nproc-per-node 2 -m honed run SPEC``, ``accelerate launch -m honed run SPEC``)."""

from __future__ import annotations

import os
import sys

from honed.cli import main

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
