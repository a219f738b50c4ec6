"""What every batching engine shares: request preparation, the queue, the worker thread and counters.

Context length: a prompt longer than the model's context is rejected with 400
``context_length_exceeded``, naming both lengths. For a causal model, whose completion
shares the context with its prompt, a request whose prompt plus ``max_tokens`` exceeds
the context is rejected the same way, naming the room left, rather than silently cut
short; only a server-default ``max_tokens`` is lowered to the room left. Seq2seq models
generate into their decoder, so their prompt and their output are each limited to the
context length on their own, which is also the bound that deploy validation applies to
the default ``max_tokens``.
"""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunedock.errors import InvalidInput
from tunedock.runtime.engines.base import (ChatMessage, Embeddings, Engine, GenerationParams, ModelFormat,
                                           PreparedGeneration)
from tunedock.runtime.engines.chat_templates import ChatTemplate, encode_chat
from tunedock.runtime.engines.embedding_batching import EmbeddingBatcher, EmbeddingJob
from tunedock.runtime.engines.scheduling import EngineCounters, RequestQueue, start_worker
from tunedock.runtime.engines.sequences import SequenceOutput
from tunedock.runtime.engines.streams import GenerationStream
from tunedock.runtime.engines.tokenization import TextTokenizer

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_QUEUE_SIZE = 64
DEFAULT_BATCH_WAIT_SECONDS = 0.005
# Seconds that stop() waits for the worker to end its current step.
_STOP_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class BatchingOptions:
    """How an engine batches requests.

    ``max_batch_size`` is the number of sequences the model processes together: rows
    decoded in one step, or embedding inputs in one forward pass. ``max_queue_size``
    bounds the requests waiting for a place in the batch. ``batch_wait_seconds`` is how
    long an idle engine waits after the first request for others to batch with.
    """

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    batch_wait_seconds: float = DEFAULT_BATCH_WAIT_SECONDS


class BatchingEngine(Engine):
    """An engine with one worker thread fed by a bounded queue; subclasses load the model."""

    def __init__(self, options: BatchingOptions) -> None:
        self.options = options
        self.counters = EngineCounters()
        self._format: ModelFormat | None = None
        self._tokenizer: TextTokenizer | None = None
        self._chat_template: ChatTemplate | None = None
        self._context_length: int | None = None
        self._end_token_ids: frozenset[int] = frozenset()
        self._queue: RequestQueue[Any] = RequestQueue(options.max_queue_size)
        self._worker: threading.Thread | None = None

    @property
    def model_format(self) -> ModelFormat:
        if self._format is None:
            raise RuntimeError(f"{type(self).__name__}.load() has not been called")
        return self._format

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            raise RuntimeError(f"{type(self).__name__}.load() has not been called")
        return self._tokenizer

    def start(self) -> None:
        if self.model_format.is_generative:
            target = self._generation_loop()
        else:
            target = EmbeddingBatcher(self._encode_embeddings, self._queue, self.options.max_batch_size,
                                      self.options.batch_wait_seconds, self.counters).run
        self._worker = start_worker(f"{type(self).__name__}-worker", target)
        logger.info("Batching up to %d sequences; up to %d requests may wait", self.options.max_batch_size,
                    self.options.max_queue_size)

    def stop(self) -> None:
        for item in self._queue.close():
            if isinstance(item, SequenceOutput):
                item.abandon()
            else:
                item.future.cancel()
        if self._worker is not None:
            self._worker.join(_STOP_TIMEOUT_SECONDS)

    def prepare_completion(self, prompt: str, params: GenerationParams) -> PreparedGeneration:
        prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        return self._prepare(prompt_ids, params, "prompt")

    def prepare_chat(self, messages: Sequence[ChatMessage], params: GenerationParams) -> PreparedGeneration:
        prompt_ids = encode_chat(self._chat_template, messages, self.tokenizer)
        return self._prepare(prompt_ids, params, "messages")

    def submit(self, prepared: PreparedGeneration, stream: GenerationStream) -> None:
        self._queue.put(SequenceOutput(prepared, stream, self.tokenizer.decode, self._end_token_ids))

    def embed(self, inputs: Sequence[str]) -> Future[Embeddings]:
        token_ids = [self.tokenizer.encode(text, add_special_tokens=True) for text in inputs]
        for index, ids in enumerate(token_ids):
            self._check_input_length(len(ids), f"input[{index}]", param="input")
        job = EmbeddingJob(token_ids)
        self._queue.put(job)
        return job.future

    def stats(self) -> dict[str, Any]:
        return {**self.counters.snapshot(len(self._queue)), "max_batch_size": self.options.max_batch_size,
                "max_queue_size": self.options.max_queue_size}

    @abstractmethod
    def _generation_loop(self) -> Callable[[], None]:
        """Return the body of the worker thread of a generative model."""

    @abstractmethod
    def _encode_embeddings(self, token_ids: list[list[int]]) -> np.ndarray:
        """Encode a batch of inputs into one pooled vector each (float32, batch x dim)."""

    def _prepare(self, prompt_ids: list[int], params: GenerationParams, prompt_param: str) -> PreparedGeneration:
        if not prompt_ids:
            raise InvalidInput(f"The {prompt_param} encodes to zero tokens; send some text.",
                               param=prompt_param, code="invalid_value")
        self._check_input_length(len(prompt_ids), f"The {prompt_param}", param=prompt_param)
        max_new_tokens = self._max_new_tokens(len(prompt_ids), params, prompt_param)
        return PreparedGeneration(prompt_ids=tuple(prompt_ids), params=params, max_new_tokens=max_new_tokens)

    def _max_new_tokens(self, prompt_tokens: int, params: GenerationParams, prompt_param: str) -> int:
        limit = self._context_length
        if limit is None:
            return params.max_tokens
        if self._format is not ModelFormat.CAUSAL_LM:
            return self._max_decoder_tokens(limit, params)

        room = limit - prompt_tokens
        if room <= 0:
            raise InvalidInput(
                f"The {prompt_param} is {prompt_tokens} tokens long, which fills the model's context "
                f"length of {limit} tokens and leaves no room for the completion. Shorten the {prompt_param}.",
                param=prompt_param, code="context_length_exceeded")
        if params.max_tokens <= room or not params.max_tokens_requested:
            return min(params.max_tokens, room)
        raise InvalidInput(
            f"max_tokens is {params.max_tokens}, but the {prompt_tokens}-token {prompt_param} leaves room "
            f"for only {room} tokens in the model's context length of {limit} tokens. "
            f"Set max_tokens to {room} or less, or shorten the {prompt_param}.",
            param="max_tokens", code="context_length_exceeded")

    @staticmethod
    def _max_decoder_tokens(limit: int, params: GenerationParams) -> int:
        """Return the max_tokens of a seq2seq request, bounded by the context length as deploy validation does."""
        if params.max_tokens <= limit or not params.max_tokens_requested:
            return min(params.max_tokens, limit)
        raise InvalidInput(
            f"max_tokens is {params.max_tokens}, over this model's limit of {limit} generated tokens (its "
            f"context length). Set max_tokens to {limit} or less.",
            param="max_tokens", code="context_length_exceeded")

    def _check_input_length(self, tokens: int, subject: str, param: str) -> None:
        limit = self._context_length
        if limit is not None and tokens > limit:
            raise InvalidInput(
                f"{subject} is {tokens} tokens long, over the model's context length of {limit} "
                f"tokens. Shorten it to {limit} tokens or less.",
                param=param, code="context_length_exceeded")
