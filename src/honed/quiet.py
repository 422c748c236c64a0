"""Keep third-party noise the user did not cause out of honed's output.

bitsandbytes is only needed by QLoRA, yet peft imports it whenever it is installed, and on CPUs
with AVX512-bf16 that import logs "Failed to load CPU gemm_4bit_forward ... No module named
'kernels'" (and costs seconds). The CLI hides the package until QLoRA asks for it
(``defer_bitsandbytes`` / ``allow_bitsandbytes``). Warnings honed cannot avoid by passing
settings explicitly are filtered here by their exact message, nothing broader.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import warnings

# peft reads transformers' deprecated ``is_gradient_checkpointing`` property on every model it
# wraps or loads an adapter into; no argument avoids it (peft 0.18, transformers 5).
_UNAVOIDABLE_WARNINGS = ((FutureWarning, r"`is_gradient_checkpointing` is deprecated"),)


def filter_unavoidable_warnings() -> None:
    for category, message in _UNAVOIDABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def defer_bitsandbytes() -> None:
    """Make ``import bitsandbytes`` fail (peft and transformers then treat it as absent) until
    ``allow_bitsandbytes``; a no-op once it was imported."""
    if "bitsandbytes" not in sys.modules and importlib.util.find_spec("bitsandbytes"):
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # the import system's "absent"


def allow_bitsandbytes() -> None:
    """Undo ``defer_bitsandbytes`` before QLoRA imports bitsandbytes."""
    if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
        del sys.modules["bitsandbytes"]
        # peft and transformers cache "not installed" once asked: ask again.
        for module, name in _AVAILABILITY_CHECKS:
            check = getattr(sys.modules.get(module), name, None)
            if hasattr(check, "cache_clear"):
                check.cache_clear()
    # honed turns bitsandbytes' AVX512-bf16 CPU fast path off (qlora.disable_cpu_repack), so
    # the optional 'kernels' package that path would use is never needed.
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_KernelsNotice())


_AVAILABILITY_CHECKS = (
    ("peft.import_utils", "is_bnb_available"),
    ("peft.import_utils", "is_bnb_4bit_available"),
    ("transformers.utils.import_utils", "is_bitsandbytes_available"),
)


class _KernelsNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward")
