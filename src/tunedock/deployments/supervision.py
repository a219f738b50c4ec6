"""Decisions of replica supervision: when a crash is one too many, and when to scale.

The manager's supervision loop feeds these with observations and acts on the answers;
they hold no processes and touch no store, so each rule reads in one place.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tunedock.deployments.parameters import Scaling


@dataclass(frozen=True)
class SupervisionPolicy:
    interval: float = 2.0  # seconds between two rounds of health checks
    health_failures: int = 3  # consecutive failed checks before a live process counts as dead
    restart_backoff: float = 1.0  # seconds before the first restart; doubles with each crash
    restart_backoff_max: float = 60.0
    crash_limit: int = 3  # crashes within crash_window that take a deployment down
    crash_window: float = 600.0
    drain_timeout: float = 60.0  # seconds that in-flight requests get before replicas stop
    idle_warning_lead: float = 600.0  # seconds before an idle un-deploy that its warning is sent
    min_idle_undeploy_after: float = 60.0  # the shortest idle_undeploy_after a deploy may ask for


@dataclass
class CrashRecord:
    """The recent crashes of one deployment's replicas."""

    policy: SupervisionPolicy
    times: deque[float] = field(default_factory=deque)

    def record(self, now: float) -> int:
        """Note a crash and return how many fall within the window."""
        self.times.append(now)
        while self.times and now - self.times[0] > self.policy.crash_window:
            self.times.popleft()
        return len(self.times)

    def exhausted(self) -> bool:
        return len(self.times) >= self.policy.crash_limit

    def backoff(self) -> float:
        """Seconds to wait before the next restart: doubling with each recent crash."""
        exponent = max(len(self.times) - 1, 0)
        return float(min(self.policy.restart_backoff * 2**exponent, self.policy.restart_backoff_max))


@dataclass
class LoadTracker:
    """Scales between min_replicas and max_replicas once a load level has lasted its delay."""

    high_since: float | None = None
    low_since: float | None = None

    def decide(self, now: float, in_flight: int, replicas: int, scaling: Scaling) -> int:
        """Return +1 to add a replica, -1 to remove one, 0 to keep the count."""
        capacity = scaling.max_batch_size
        saturated = in_flight >= replicas * capacity and replicas < scaling.max_replicas
        # Remove a replica only when the rest would still be at most half full.
        quiet = replicas > scaling.min_replicas and in_flight <= (replicas - 1) * capacity / 2
        self.high_since = _since(self.high_since, now) if saturated else None
        self.low_since = _since(self.low_since, now) if quiet else None
        if self.high_since is not None and now - self.high_since >= scaling.scale_up_delay:
            self.high_since = None
            return 1
        if self.low_since is not None and now - self.low_since >= scaling.scale_down_delay:
            self.low_since = None
            return -1
        return 0


def _since(start: float | None, now: float) -> float:
    return now if start is None else start
