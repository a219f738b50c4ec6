"""Per-key and per-model request rate limits of the inference API, in requests per minute."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from tunedock.errors import RateLimited

WINDOW_SECONDS = 60.0


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per name: ``per_minute`` requests a minute, bursts up to the same number.

    A limit of 0 turns that kind of limit off.
    """

    def __init__(self, per_key: int, per_model: int) -> None:
        self.per_key = per_key
        self.per_model = per_model
        self._buckets: dict[str, _Bucket] = {}

    def check(self, key_prefix: str, model: str) -> None:
        """Take one request from the key's and the model's buckets, or raise RateLimited."""
        now = time.monotonic()
        checks = ((f"key:{key_prefix}", self.per_key, f"API key {key_prefix}..."),
                  (f"model:{model}", self.per_model, f"model {model!r}"))
        for name, limit, what in checks:
            if limit <= 0:
                continue
            bucket = self._refill(name, limit, now)
            if bucket.tokens < 1:
                wait = math.ceil((1 - bucket.tokens) * WINDOW_SECONDS / limit)
                raise RateLimited(f"Rate limit of {limit} requests per minute reached for {what}; retry in {wait} s.",
                                  retry_after=wait)
        for name, limit, _ in checks:
            if limit > 0:
                self._buckets[name].tokens -= 1

    def _refill(self, name: str, limit: int, now: float) -> _Bucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(tokens=float(limit), updated=now)
        bucket.tokens = min(float(limit), bucket.tokens + (now - bucket.updated) * limit / WINDOW_SECONDS)
        bucket.updated = now
        return bucket
