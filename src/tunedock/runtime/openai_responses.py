"""Response bodies in the shapes of the OpenAI API, as plain dicts ready for orjson."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import numpy as np

from tunedock.errors import TunedockError
from tunedock.runtime.engines.base import Embeddings, Generation
from tunedock.runtime.openai_requests import EncodingFormat

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
    """Build the OpenAI error body; 5xx errors get a fixed message, never the exception's text."""
    if error.status_code >= 500:
        return server_error_body()
    return {"error": {"message": error.message, "type": "invalid_request_error",
                      "param": error.param, "code": error.code}}


def server_error_body() -> dict[str, Any]:
    return {"error": {"message": INTERNAL_ERROR_MESSAGE, "type": "server_error",
                      "param": None, "code": "internal_error"}}


def _generation_body(id_prefix: str, object_type: str, model: str, choice: dict[str, Any],
                     generation: Generation) -> dict[str, Any]:
    return {
        "id": f"{id_prefix}-{uuid.uuid4().hex}",
        "object": object_type,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens,
        },
    }


def _encode_vector(vector: np.ndarray, encoding_format: EncodingFormat) -> np.ndarray | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector
