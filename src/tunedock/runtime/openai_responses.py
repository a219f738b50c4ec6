"""Response bodies in the shapes of the OpenAI API, as plain dicts ready for orjson.

Streamed responses are server-sent events: one ``data: <JSON chunk>`` line per event
and a blank line after it, then ``data: [DONE]``. Every chunk of a stream has the same
``id`` and ``created``; ``finish_reason`` is null on every chunk but the last one of the
choice. With ``stream_options.include_usage`` each chunk carries ``"usage": null`` and
one more chunk with empty ``choices`` and the usage comes before ``[DONE]``. An error
after the stream started is sent as one event with an ``error`` object, and the stream
ends without ``[DONE]``.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any, Literal

import numpy as np
import orjson

from tunedock.errors import TunedockError
from tunedock.runtime.engines.base import Embeddings, Generation
from tunedock.runtime.engines.streams import GenerationFinished
from tunedock.runtime.openai_requests import EncodingFormat

SSE_DONE = b"data: [DONE]\n\n"

INTERNAL_ERROR_MESSAGE = "Internal error in the model server"


def completion_body(generation: Generation, model: str) -> dict[str, Any]:
    choice = {"index": 0, "text": generation.text, "logprobs": None,
              "finish_reason": generation.finish_reason}
    return _generation_body("cmpl", "text_completion", model, choice, generation)


def chat_completion_body(generation: Generation, model: str) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", "content": generation.text},
              "logprobs": None, "finish_reason": generation.finish_reason}
    return _generation_body("chatcmpl", "chat.completion", model, choice, generation)


def embedding_body(embeddings: Embeddings, model: str, encoding_format: EncodingFormat) -> dict[str, Any]:
    """Build the embeddings list; base64 is the little-endian float32 bytes of each vector."""
    data = [{"object": "embedding", "index": index, "embedding": _encode_vector(vector, encoding_format)}
            for index, vector in enumerate(embeddings.vectors)]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": embeddings.prompt_tokens, "total_tokens": embeddings.prompt_tokens},
    }


def error_body(error: TunedockError) -> dict[str, Any]:
    """Build the OpenAI error body; 5xx errors get a fixed message, never the exception's text.

    503 from a model server that is shutting down is the exception: its message is fixed text.
    """
    if error.status_code >= 500 and error.status_code != 503:
        return server_error_body()
    error_type = {429: "rate_limit_error", 503: "server_error"}.get(error.status_code, "invalid_request_error")
    return {"error": {"message": error.message, "type": error_type, "param": error.param, "code": error.code}}


def server_error_body() -> dict[str, Any]:
    return {"error": {"message": INTERNAL_ERROR_MESSAGE, "type": "server_error",
                      "param": None, "code": "internal_error"}}


class ChunkWriter:
    """Server-sent events of one streamed completion (``completion``) or chat completion (``chat``).

    Every text chunk of a stream differs only in its text, so the JSON before and after
    the text is encoded once, and each chunk is those bytes around the encoded text.
    The bytes equal what ``sse_event`` makes of the chunk's dict.
    """

    def __init__(self, kind: Literal["completion", "chat"], model: str, include_usage: bool) -> None:
        self._kind = kind
        self._include_usage = include_usage
        prefix, object_type = ("chatcmpl", "chat.completion.chunk") if kind == "chat" else ("cmpl", "text_completion")
        self._base = {"id": f"{prefix}-{uuid.uuid4().hex}", "object": object_type, "created": int(time.time()),
                      "model": model}
        self._text_prefix, self._text_suffix = self._split_around_text()

    def opening(self) -> bytes:
        """Return the events sent before any text: the chat API announces the assistant's role first."""
        if self._kind == "chat":
            return sse_event(self._chunk({"role": "assistant", "content": ""}, None))
        return b""

    def text(self, text: str) -> bytes:
        return self._text_prefix + orjson.dumps(text) + self._text_suffix

    def closing(self, finished: GenerationFinished) -> bytes:
        """Return the last chunk of the choice with its finish_reason, the usage chunk when requested, and [DONE]."""
        events = sse_event(self._chunk({} if self._kind == "chat" else "", finished.finish_reason))
        if self._include_usage:
            events += sse_event({**self._base, "choices": [],
                                 "usage": _usage(finished.prompt_tokens, finished.completion_tokens)})
        return events + SSE_DONE

    def _split_around_text(self) -> tuple[bytes, bytes]:
        # A marker that cannot occur in the encoded chunk otherwise: the id is random and unique to it.
        marker = f"text-of-{self._base['id']}"
        encoded = sse_event(self._chunk({"content": marker} if self._kind == "chat" else marker, None))
        before, found, after = encoded.partition(orjson.dumps(marker))
        if not found or orjson.dumps(marker) in after:
            raise RuntimeError("the chunk template must contain its text marker exactly once")
        return before, after

    def _chunk(self, content: Any, finish_reason: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self._kind == "chat":
            choice["delta"] = content
        else:
            choice["text"] = content
        choice.update(logprobs=None, finish_reason=finish_reason)
        chunk = {**self._base, "choices": [choice]}
        if self._include_usage:
            chunk["usage"] = None
        return chunk


def sse_event(payload: dict[str, Any]) -> bytes:
    """Encode one server-sent event holding ``payload`` as JSON."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _generation_body(id_prefix: str, object_type: str, model: str, choice: dict[str, Any],
                     generation: Generation) -> dict[str, Any]:
    return {
        "id": f"{id_prefix}-{uuid.uuid4().hex}",
        "object": object_type,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _usage(generation.prompt_tokens, generation.completion_tokens),
    }


def _encode_vector(vector: np.ndarray, encoding_format: EncodingFormat) -> np.ndarray | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector
