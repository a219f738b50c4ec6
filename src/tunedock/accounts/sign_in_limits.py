"""Sign-in rate limits, per username and per client address, over a sliding window."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

from tunedock.errors import RateLimited


# Many people may share one address (an office, a proxy), so an address gets more failures
# than one username before it is held back.
ADDRESS_FACTOR = 4


class SignInLimiter:
    """Allows ``attempts`` failed sign-ins per username, and four times as many per address,
    within ``window`` seconds.

    Only failures count, so a user who signs in correctly is never slowed down, while
    guessing a password from one address or against one account is.
    """

    def __init__(self, attempts: int, window: float) -> None:
        self.attempts = attempts
        self.window = window
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, username: str, address: str | None) -> None:
        """Raise RateLimited if the username or the address has used up its attempts."""
        now = time.monotonic()
        with self._lock:
            for key, what, limit in ((f"user:{username.lower()}", f"username {username!r}", self.attempts),
                                     (f"address:{address}", f"address {address}", self.attempts * ADDRESS_FACTOR)):
                if address is None and key.startswith("address:"):
                    continue
                failures = self._recent(key, now)
                if len(failures) >= limit:
                    retry_after = max(1, int(failures[0] + self.window - now) + 1)
                    raise RateLimited(f"Too many failed sign-ins for {what}; try again in {retry_after} s.",
                                      retry_after=retry_after, code="sign_in_rate_limited")

    def failed(self, username: str, address: str | None) -> None:
        now = time.monotonic()
        with self._lock:
            self._failures[f"user:{username.lower()}"].append(now)
            if address is not None:
                self._failures[f"address:{address}"].append(now)

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures[key]
        while failures and now - failures[0] > self.window:
            failures.popleft()
        return failures
