"""The accelerators of this machine, read without importing a deep-learning framework."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

NVIDIA_GPUS_DIR = Path("/proc/driver/nvidia/gpus")


def cuda_device_count() -> int:
    """Return the number of NVIDIA GPUs that the kernel driver reports (0 without a driver)."""
    try:
        return sum(1 for _ in NVIDIA_GPUS_DIR.iterdir())
    except OSError:
        return 0


@functools.cache
def machine_quantizations() -> dict[tuple[str, str], tuple[str, ...]]:
    """Return the CTranslate2 compute types this machine's CPU (and GPUs, if any) support."""
    try:
        import ctranslate2
    except ImportError:
        return {}
    found = {("ctranslate2", "cpu"): tuple(sorted(ctranslate2.get_supported_compute_types("cpu")))}
    if cuda_device_count():
        try:
            found[("ctranslate2", "cuda")] = tuple(sorted(ctranslate2.get_supported_compute_types("cuda")))
        except (RuntimeError, ValueError) as exc:
            logger.warning("could not read CTranslate2's CUDA compute types: %s", exc)
    return found
