"""Rules of replica supervision: crash counting, restart backoff and scaling decisions."""

from __future__ import annotations

from tunedock.deployments.parameters import Scaling
from tunedock.deployments.supervision import CrashRecord, LoadTracker, SupervisionPolicy

POLICY = SupervisionPolicy(restart_backoff=1.0, restart_backoff_max=8.0, crash_limit=3, crash_window=60.0)
SCALING = Scaling(max_batch_size=4, min_replicas=1, max_replicas=3, scale_up_delay=10, scale_down_delay=30)


def test_crashes_outside_window_are_forgotten() -> None:
    record = CrashRecord(POLICY)
    record.record(0.0)
    record.record(10.0)
    assert record.record(100.0) == 1


def test_crash_limit_within_window_exhausts() -> None:
    record = CrashRecord(POLICY)
    for moment in (0.0, 1.0, 2.0):
        record.record(moment)
    assert record.exhausted()


def test_backoff_doubles_per_recent_crash() -> None:
    record = CrashRecord(POLICY)
    for moment in (0.0, 1.0, 2.0):
        record.record(moment)
    assert record.backoff() == 4.0


def test_backoff_is_capped() -> None:
    record = CrashRecord(SupervisionPolicy(restart_backoff=1.0, restart_backoff_max=8.0, crash_limit=99))
    for moment in range(10):
        record.record(float(moment))
    assert record.backoff() == 8.0


def test_saturation_scales_up_only_after_delay() -> None:
    tracker = LoadTracker()
    assert tracker.decide(0.0, in_flight=4, replicas=1, scaling=SCALING) == 0


def test_sustained_saturation_scales_up() -> None:
    tracker = LoadTracker()
    tracker.decide(0.0, in_flight=4, replicas=1, scaling=SCALING)
    assert tracker.decide(10.0, in_flight=5, replicas=1, scaling=SCALING) == 1


def test_interrupted_saturation_restarts_the_delay() -> None:
    tracker = LoadTracker()
    tracker.decide(0.0, in_flight=4, replicas=1, scaling=SCALING)
    tracker.decide(5.0, in_flight=0, replicas=1, scaling=SCALING)
    assert tracker.decide(10.0, in_flight=4, replicas=1, scaling=SCALING) == 0


def test_no_scale_up_past_max_replicas() -> None:
    tracker = LoadTracker()
    tracker.decide(0.0, in_flight=50, replicas=3, scaling=SCALING)
    assert tracker.decide(100.0, in_flight=50, replicas=3, scaling=SCALING) == 0


def test_sustained_quiet_scales_down() -> None:
    tracker = LoadTracker()
    tracker.decide(0.0, in_flight=0, replicas=2, scaling=SCALING)
    assert tracker.decide(30.0, in_flight=1, replicas=2, scaling=SCALING) == -1


def test_no_scale_down_below_min_replicas() -> None:
    tracker = LoadTracker()
    tracker.decide(0.0, in_flight=0, replicas=1, scaling=SCALING)
    assert tracker.decide(1000.0, in_flight=0, replicas=1, scaling=SCALING) == 0
