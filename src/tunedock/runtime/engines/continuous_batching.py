"""Continuous batching: one decoding loop that runs many generations in one batch.

The worker thread keeps a batch of running sequences. Before each decoding step it
takes waiting requests from the queue, up to the maximum batch size, runs their
prompts through the model (the prefill) and merges them into the batch. Each step then
computes one token for every running sequence. A sequence leaves the batch as soon as
it is finished or its client went away, so no request waits for the longest one in its
batch, and a cancelled request costs at most the step that was already running.

When nothing runs, the worker blocks on the queue, and after the first request arrives
it waits up to ``batch_wait_seconds`` for others to start with.

The model side is a ``StepModel``; this module does not import torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from tunedock.runtime.engines.scheduling import EngineCounters, RequestQueue
from tunedock.runtime.engines.sequences import SequenceOutput

logger = logging.getLogger(__name__)

BatchT = TypeVar("BatchT")


class StepModel(Protocol[BatchT]):
    """A model that decodes a batch step by step; rows of a batch follow the order of its sequences."""

    def prefill(self, sequences: Sequence[SequenceOutput]) -> tuple[BatchT, list[int]]:
        """Run the prompts of ``sequences``; return their batch and the first token of each."""

    def step(self, batch: BatchT, sequences: Sequence[SequenceOutput]) -> list[int]:
        """Feed each sequence's last token; return the next token of each."""

    def select(self, batch: BatchT, rows: Sequence[int]) -> BatchT:
        """Keep only ``rows`` of ``batch``, in that order."""

    def merge(self, first: BatchT, second: BatchT) -> BatchT:
        """Return one batch with the rows of ``first``, then those of ``second``."""


class ContinuousBatcher(Generic[BatchT]):
    """The decoding loop of one engine; ``run`` is the body of its worker thread."""

    def __init__(self, model: StepModel[BatchT], queue: RequestQueue[SequenceOutput], max_batch_size: int,
                 batch_wait_seconds: float, counters: EngineCounters) -> None:
        self._model = model
        self._queue = queue
        self._max_batch_size = max_batch_size
        self._batch_wait_seconds = batch_wait_seconds
        self._counters = counters
        self._batch: BatchT | None = None
        self._running: list[SequenceOutput] = []

    def run(self) -> None:
        while True:
            admitted = self._admit()
            if admitted is None:
                break
            if admitted:
                self._prefill(admitted)
            self._drop_done()
            if self._running:
                self._step()
        for sequence in self._running:
            sequence.abandon()
        self._running = []
        self._counters.running = 0

    def _admit(self) -> list[SequenceOutput] | None:
        room = self._max_batch_size - len(self._running)
        if room <= 0:
            return []
        idle = not self._running
        taken = self._queue.take(room, wait=idle, gather_seconds=self._batch_wait_seconds if idle else 0.0)
        if taken is None:
            return None
        admitted = []
        for sequence in taken:
            if sequence.cancelled:
                sequence.abandon()
                self._counters.outcomes["cancelled"] += 1
            else:
                admitted.append(sequence)
        return admitted

    def _prefill(self, admitted: list[SequenceOutput]) -> None:
        try:
            batch, first_tokens = self._model.prefill(admitted)
        except Exception as error:  # A model error fails these requests, not the worker.
            logger.exception("Prefill of %d requests failed", len(admitted))
            self._fail(admitted, error)
            return
        self._batch = batch if self._batch is None else self._model.merge(self._batch, batch)
        self._running.extend(admitted)
        self._counters.batches += 1
        self._record_tokens(admitted, first_tokens)

    def _step(self) -> None:
        assert self._batch is not None
        try:
            tokens = self._model.step(self._batch, self._running)
        except Exception as error:
            logger.exception("Decoding step of a batch of %d failed", len(self._running))
            self._fail(self._running, error)
            self._running, self._batch = [], None
            self._counters.running = 0
            return
        self._counters.decoding_steps += 1
        self._record_tokens(self._running, tokens)

    def _record_tokens(self, sequences: Sequence[SequenceOutput], tokens: Sequence[int]) -> None:
        for sequence, token in zip(sequences, tokens, strict=True):
            if sequence.done:
                continue
            self._counters.generated_tokens += 1
            if sequence.add(token):
                self._counters.outcomes[sequence.finish_reason or "stop"] += 1
        self._counters.running = len(self._running)
        self._counters.largest_batch = max(self._counters.largest_batch, len(self._running))

    def _drop_done(self) -> None:
        keep = []
        for row, sequence in enumerate(self._running):
            if not sequence.done:
                keep.append(row)
            elif not sequence.finished:
                sequence.abandon()
                self._counters.outcomes["cancelled"] += 1
                logger.info("Stopped a generation after %d tokens: the client went away",
                            len(sequence.token_ids))
        if len(keep) == len(self._running):
            return
        self._running = [self._running[row] for row in keep]
        self._batch = self._model.select(self._batch, keep) if keep and self._batch is not None else None
        self._counters.running = len(self._running)

    def _fail(self, sequences: Sequence[SequenceOutput], error: Exception) -> None:
        for sequence in sequences:
            if not sequence.finished:
                sequence.fail(error)
                self._counters.outcomes["failed"] += 1

