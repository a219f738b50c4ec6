"""The engine interface of the model server, and the values that cross it.

An engine owns one loaded model and the threads that run it. The HTTP layer validates
a request, asks the engine to prepare it (tokenization and length checks, which raise
``InvalidInput``), then submits it and reads its text as it is generated from a
``GenerationStream``. Embeddings come back as a future.

Requests that arrive while the engine is busy wait in a bounded queue and are batched
with the requests already running, up to the engine's maximum batch size. A full
queue raises ``EngineOverloaded`` at submission, which the HTTP layer returns as 429.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunedock.errors import TunedockError
from tunedock.runtime.engines.streams import FinishReason, GenerationStream

_MAX_MESSAGE_CHARS = 400


class ModelFormat(enum.StrEnum):
    """The kind of model a deployment serves, as named on the command line."""

    CAUSAL_LM = "causal-lm"
    SEQ2SEQ_LM = "seq2seq-lm"
    EMBEDDING = "embedding"

    @property
    def is_generative(self) -> bool:
        return self is not ModelFormat.EMBEDDING


class ModelLoadFailed(TunedockError):
    """The model server could not load its model; ``message`` is shown to people as is."""

    code = "model_load_failed"


class EngineOverloaded(TunedockError):
    """The engine's request queue is full; the client should retry after ``retry_after`` seconds."""

    status_code = 429
    code = "model_server_overloaded"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineStopped(TunedockError):
    """The engine shut down before it finished a request."""

    status_code = 503
    code = "model_server_stopping"


def describe_exception(error: BaseException) -> str:
    """Return the exception's type and the first line of its message, shortened for one log line."""
    lines = str(error).strip().splitlines()
    first_line = lines[0] if lines else ""
    if len(first_line) > _MAX_MESSAGE_CHARS:
        first_line = first_line[:_MAX_MESSAGE_CHARS] + "..."
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Sampling and stopping settings for one generation request.

    ``temperature`` 0 means greedy decoding. ``top_k`` 0 means no top-k filtering.
    ``max_tokens_requested`` is False when ``max_tokens`` is a server default: the
    engine then lowers it to the room left in the context instead of rejecting it.
    """

    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    max_tokens_requested: bool
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class PreparedGeneration:
    """A validated generation request: its prompt as token ids and its token budget."""

    prompt_ids: tuple[int, ...]
    params: GenerationParams
    max_new_tokens: int

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)


@dataclass(frozen=True, slots=True)
class Generation:
    """Generated text with the token counts that the usage block reports."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One float32 row per input, in input order, and the tokens read for all inputs."""

    vectors: np.ndarray
    prompt_tokens: int


class Engine(ABC):
    """One loaded model behind the OpenAI routes.

    ``load`` and ``start`` are called once, in that order, before any request.
    ``prepare_*``, ``submit`` and ``embed`` are thread-safe and return quickly: the
    model work runs on the engine's own threads. ``prepare_*`` and ``embed`` raise
    ``tunedock.errors.InvalidInput`` for requests that do not fit the model, such as a
    prompt over the context length; ``submit`` and ``embed`` raise ``EngineOverloaded``
    when the request queue is full.
    """

    @property
    @abstractmethod
    def model_format(self) -> ModelFormat:
        """Format that the model was loaded as."""

    @abstractmethod
    def load(self, model_path: Path, model_format: ModelFormat, device: str) -> None:
        """Load the model and tokenizer, or raise ModelLoadFailed saying what and why."""

    @abstractmethod
    def start(self) -> None:
        """Start the threads that run the model."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the model threads; requests still queued or running fail with EngineStopped."""

    @abstractmethod
    def prepare_completion(self, prompt: str, params: GenerationParams) -> PreparedGeneration:
        """Tokenize ``prompt`` (a causal model's prefix or a seq2seq model's encoder input) and check its length."""

    @abstractmethod
    def prepare_chat(self, messages: Sequence[ChatMessage], params: GenerationParams) -> PreparedGeneration:
        """Render ``messages`` with the model's chat template, tokenize them and check the length."""

    @abstractmethod
    def submit(self, prepared: PreparedGeneration, stream: GenerationStream) -> None:
        """Queue ``prepared``; its text and its end arrive on ``stream``."""

    @abstractmethod
    def embed(self, inputs: Sequence[str]) -> Future[Embeddings]:
        """Queue ``inputs`` for embedding as the model's sentence-transformers files declare."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Return counters of the engine's work: queued and running requests, decoding steps, outcomes."""
