"""What accelerators this machine has, read without importing a deep-learning framework."""

from __future__ import annotations

from pathlib import Path

NVIDIA_GPUS_DIR = Path("/proc/driver/nvidia/gpus")


def cuda_device_count() -> int:
    """Return the number of NVIDIA GPUs that the kernel driver reports (0 without a driver)."""
    try:
        return sum(1 for _ in NVIDIA_GPUS_DIR.iterdir())
    except OSError:
        return 0
