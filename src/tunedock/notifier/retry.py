"""When to try a failed notification again: exponential backoff with a cap."""

from __future__ import annotations

from tunedock.notifier.errors import DeliveryError
from tunedock.settings import Settings

# 2**32 times any sensible base is far past every cap, and keeps the float finite.
_MAX_EXPONENT = 32


def retry_delay(attempt: int, base_seconds: float, max_seconds: float = 3600.0) -> float:
    """Return the seconds to wait after failed attempt number ``attempt`` (1 for the first).

    The wait doubles with each attempt: base, 2 x base, 4 x base, ... up to ``max_seconds``.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, got {attempt}")
    exponent = min(attempt - 1, _MAX_EXPONENT)
    return float(min(base_seconds * 2**exponent, max_seconds))


def should_retry(error: DeliveryError, attempt: int, max_attempts: int) -> bool:
    """Return whether a notification whose attempt ``attempt`` raised ``error`` gets another one."""
    return error.transient and attempt < max_attempts


def retry_delay_from_settings(attempt: int, settings: Settings) -> float:
    return retry_delay(attempt, settings.notify_retry_base_seconds, settings.notify_retry_max_seconds)
