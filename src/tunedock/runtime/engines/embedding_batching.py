"""Dynamic batching of embedding requests.

Concurrent requests wait in the queue; the worker takes up to ``max_batch_size`` of
them (waiting up to ``batch_wait_seconds`` for company once the first arrives), sorts
all their inputs by length, so that a batch wastes little compute on padding, and
encodes them in forward passes of up to ``max(max_batch_size, 64)`` inputs each. Each request's
vectors come back in its own input order. A request whose client went away before its
batch started is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from tunedock.runtime.engines.base import Embeddings
from tunedock.runtime.engines.scheduling import EngineCounters, RequestQueue

logger = logging.getLogger(__name__)

# Encodes token-id lists into one pooled float32 vector each.
EncodeBatch = Callable[[list[list[int]]], np.ndarray]
# Inputs per forward pass at least: max_batch_size counts requests, and one request may
# carry thousands of inputs that would take far longer in passes of a few.
MIN_INPUTS_PER_PASS = 64


@dataclass
class EmbeddingJob:
    token_ids: list[list[int]]
    future: Future[Embeddings] = field(default_factory=Future)


class EmbeddingBatcher:
    """The embedding loop of one engine; ``run`` is the body of its worker thread."""

    def __init__(self, encode: EncodeBatch, queue: RequestQueue[EmbeddingJob], max_batch_size: int,
                 batch_wait_seconds: float, counters: EngineCounters) -> None:
        self._encode = encode
        self._queue = queue
        self._max_batch_size = max_batch_size
        self._batch_wait_seconds = batch_wait_seconds
        self._counters = counters

    def run(self) -> None:
        while (jobs := self._queue.take(self._max_batch_size, wait=True,
                                        gather_seconds=self._batch_wait_seconds)) is not None:
            started = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            self._counters.outcomes["cancelled"] += len(jobs) - len(started)
            if not started:
                continue
            self._counters.running = len(started)
            try:
                results = self._embed_jobs(started)
            except Exception as error:  # A model error fails these requests, not the worker.
                logger.exception("Embedding a batch of %d requests failed", len(started))
                for job in started:
                    job.future.set_exception(error)
                self._counters.outcomes["failed"] += len(started)
            else:
                for job, vectors in zip(started, results, strict=True):
                    job.future.set_result(Embeddings(vectors=vectors,
                                                     prompt_tokens=sum(len(ids) for ids in job.token_ids)))
                self._counters.outcomes["embedded"] += len(started)
            self._counters.running = 0
        for job in self._queue.close():
            job.future.cancel()

    def _embed_jobs(self, jobs: list[EmbeddingJob]) -> list[np.ndarray]:
        inputs = [(job_index, input_index, ids) for job_index, job in enumerate(jobs)
                  for input_index, ids in enumerate(job.token_ids)]
        inputs.sort(key=lambda item: len(item[2]))
        rows: list[list[np.ndarray | None]] = [[None] * len(job.token_ids) for job in jobs]
        per_pass = max(self._max_batch_size, MIN_INPUTS_PER_PASS)
        for start in range(0, len(inputs), per_pass):
            chunk = inputs[start:start + per_pass]
            vectors = self._encode([ids for _, _, ids in chunk])
            self._counters.batches += 1
            self._counters.largest_batch = max(self._counters.largest_batch, len(chunk))
            for (job_index, input_index, _), vector in zip(chunk, vectors, strict=True):
                rows[job_index][input_index] = vector
        return [np.stack(job_rows) for job_rows in rows]  # type: ignore[arg-type]
