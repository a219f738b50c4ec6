"""The engine interface of the model server, and the values that cross it.

An engine owns one loaded model and runs the blocking model work: tokenization,
generation and embedding. The HTTP layer validates requests, turns them into these
values and calls the engine from a worker thread, one call at a time.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tunedock.errors import TunedockError

FinishReason = Literal["stop", "length"]

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

    Methods other than ``load`` are not thread-safe: the caller serializes them.
    ``complete``, ``chat`` and ``embed`` raise ``tunedock.errors.InvalidInput`` for
    requests that do not fit the model, such as a prompt over the context length.
    """

    @property
    @abstractmethod
    def model_format(self) -> ModelFormat:
        """Format that the model was loaded as."""

    @abstractmethod
    def load(self, model_path: Path, model_format: ModelFormat, device: str) -> None:
        """Load the model and tokenizer, or raise ModelLoadFailed saying what and why."""

    @abstractmethod
    def complete(self, prompt: str, params: GenerationParams) -> Generation:
        """Generate a continuation of ``prompt`` (causal) or an output for it as the encoder input (seq2seq)."""

    @abstractmethod
    def chat(self, messages: Sequence[ChatMessage], params: GenerationParams) -> Generation:
        """Render ``messages`` into a prompt and generate the assistant's reply."""

    @abstractmethod
    def embed(self, inputs: Sequence[str]) -> Embeddings:
        """Embed each input as the model's sentence-transformers files declare."""
