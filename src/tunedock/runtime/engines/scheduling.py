"""Admission of requests into an engine: the bounded queue and the engine's counters.

Requests wait in a ``RequestQueue`` until the engine's worker thread takes them into a
batch. The queue is bounded, so a replica that cannot keep up sheds load with 429 and
``Retry-After`` instead of letting waiting times grow without limit.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Generic, TypeVar

from tunedock.runtime.engines.base import EngineOverloaded

ItemT = TypeVar("ItemT")

# The gathering of a batch ends after gather_seconds / _QUIET_FRACTION without a new request.
_QUIET_FRACTION = 5
# Retry-After value, in seconds, of the 429 response to a request that finds the queue full.
RETRY_AFTER_SECONDS = 1


class RequestQueue(Generic[ItemT]):
    """A thread-safe FIFO queue of at most ``capacity`` requests."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[ItemT] = deque()
        self._condition = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: ItemT) -> None:
        """Append ``item``, or raise EngineOverloaded when the queue is full."""
        with self._condition:
            if self._closed:
                raise EngineOverloaded("The model server is shutting down; retry the request.",
                                       retry_after=RETRY_AFTER_SECONDS)
            if len(self._items) >= self.capacity:
                raise EngineOverloaded(
                    f"The model server has {len(self._items)} requests waiting, its limit; "
                    f"retry after {RETRY_AFTER_SECONDS} s or add replicas.", retry_after=RETRY_AFTER_SECONDS)
            self._items.append(item)
            self._condition.notify()

    def take(self, limit: int, wait: bool, gather_seconds: float = 0.0) -> list[ItemT] | None:
        """Remove and return up to ``limit`` requests, oldest first; None once the queue is closed.

        With ``wait`` the call blocks until a request arrives. Once it has one, it waits up
        to ``gather_seconds`` more for others to batch with. It stops waiting early when
        ``limit`` is reached, or when no request arrived for a fifth of ``gather_seconds``.
        Clients that receive the responses of the previous batch send their next requests
        in one burst, and waiting past the burst only delays them.
        """
        with self._condition:
            if wait:
                while not self._items and not self._closed:
                    self._condition.wait()
            if self._closed:
                return None
            if self._items and gather_seconds > 0:
                deadline = time.monotonic() + gather_seconds
                quiet_seconds = gather_seconds / _QUIET_FRACTION
                while len(self._items) < limit and not self._closed:
                    remaining = min(deadline - time.monotonic(), quiet_seconds)
                    if remaining <= 0:
                        break
                    waiting = len(self._items)
                    self._condition.wait(remaining)
                    if len(self._items) == waiting:
                        break
            count = min(limit, len(self._items))
            return [self._items.popleft() for _ in range(count)]

    def close(self) -> list[ItemT]:
        """Close the queue, wake the worker and return the requests that were still waiting."""
        with self._condition:
            self._closed = True
            left = list(self._items)
            self._items.clear()
            self._condition.notify_all()
        return left


class EngineCounters:
    """Counters of an engine's work since it started, written by its worker thread.

    ``outcomes`` counts finished requests by how they ended: ``stop``, ``length``,
    ``cancelled`` (the client went away), ``failed`` or, for embeddings, ``embedded``.
    """

    def __init__(self) -> None:
        self.running = 0
        self.decoding_steps = 0
        self.generated_tokens = 0
        self.batches = 0
        self.largest_batch = 0
        self.outcomes: Counter[str] = Counter()

    def snapshot(self, queued: int) -> dict[str, object]:
        return {
            "queued": queued,
            "running": self.running,
            "decoding_steps": self.decoding_steps,
            "generated_tokens": self.generated_tokens,
            "batches": self.batches,
            "largest_batch": self.largest_batch,
            "outcomes": dict(self.outcomes),
        }


def start_worker(name: str, target: object) -> threading.Thread:
    """Start ``target`` on a daemon thread, so that a stuck model call cannot keep the process alive."""
    thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread
