"""The HTTP layer of the model server: OpenAI routes over one Engine.

Routes:
    GET  /health               {"status": "ok", "format": ..., "model_path": ...}
    POST /v1/completions       causal-lm and seq2seq-lm models
    POST /v1/chat/completions  causal-lm and seq2seq-lm models
    POST /v1/embeddings        embedding models

Model work runs in a worker thread behind one lock, one request at a time, so the
event loop stays free and /health responds during a long generation. Every error
response is an OpenAI error body. Unexpected exceptions are logged with their
traceback, and the client gets a fixed 500 message.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tunedock.errors import AuthenticationFailed, InvalidInput, TunedockError
from tunedock.runtime.engines.base import Engine, ModelFormat
from tunedock.runtime.generation_defaults import GenerationDefaults
from tunedock.runtime.openai_requests import (parse_chat_request, parse_completion_request,
                                              parse_embedding_request)
from tunedock.runtime.openai_responses import (chat_completion_body, completion_body, embedding_body,
                                               error_body, server_error_body)

logger = logging.getLogger(__name__)

RouteMethod = Callable[[Any, Request], Awaitable[Response]]
ResultT = TypeVar("ResultT")


class OrjsonResponse(Response):
    """A JSON response encoded with orjson, which also encodes numpy arrays."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    model_path: str
    served_model: str
    generation_defaults: GenerationDefaults
    # When set, every /v1 request must carry it as a Bearer token: only the gateway knows it.
    access_token: str | None = None


def create_app(engine: Engine, settings: ServerSettings) -> Starlette:
    """Build the Starlette app that serves ``engine`` on the OpenAI routes."""
    service = _ModelService(engine, settings)
    routes = [
        Route("/health", service.health, methods=["GET"]),
        Route("/v1/completions", service.completions, methods=["POST"]),
        Route("/v1/chat/completions", service.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", service.embeddings, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


def _openai_errors(handler: RouteMethod) -> RouteMethod:
    """Turn exceptions raised by a route into OpenAI error responses."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Request) -> Response:
        if not self.authorized(request):
            logger.warning("%s %s refused: missing or wrong replica token", request.method, request.url.path)
            return OrjsonResponse(error_body(AuthenticationFailed(
                "This model server answers only the Tunedock gateway; call the model through the "
                "server's /v1 endpoint with an API key.", code="replica_token_required")), status_code=401)
        try:
            return await handler(self, request)
        except TunedockError as error:
            if error.status_code >= 500:
                logger.error("%s %s failed: %s", request.method, request.url.path, error.message)
            else:
                logger.info("%s %s rejected (%s, param %s): %s", request.method, request.url.path,
                            error.code, error.param, error.message)
            return OrjsonResponse(error_body(error), status_code=error.status_code)
        except Exception:
            logger.exception("%s %s failed with an unexpected error", request.method, request.url.path)
            return OrjsonResponse(server_error_body(), status_code=500)

    return wrapper


class _ModelService:
    def __init__(self, engine: Engine, settings: ServerSettings) -> None:
        self._engine = engine
        self._settings = settings
        self._lock = anyio.Lock()
        self._health = {"status": "ok", "format": str(engine.model_format), "model_path": settings.model_path}

    async def health(self, request: Request) -> Response:
        return OrjsonResponse(self._health)

    def authorized(self, request: Request) -> bool:
        token = self._settings.access_token
        if token is None:
            return True
        offered = request.headers.get("authorization", "")
        return hmac.compare_digest(offered.encode(), f"Bearer {token}".encode())

    @_openai_errors
    async def completions(self, request: Request) -> Response:
        body = await _read_json_object(request)
        self._require_generative(request.url.path)
        parsed = parse_completion_request(body, self._settings.generation_defaults)
        generation = await self._run(self._engine.complete, parsed.prompt, parsed.params)
        return OrjsonResponse(completion_body(generation, parsed.model or self._settings.served_model))

    @_openai_errors
    async def chat_completions(self, request: Request) -> Response:
        body = await _read_json_object(request)
        self._require_generative(request.url.path)
        parsed = parse_chat_request(body, self._settings.generation_defaults)
        generation = await self._run(self._engine.chat, parsed.messages, parsed.params)
        return OrjsonResponse(chat_completion_body(generation, parsed.model or self._settings.served_model))

    @_openai_errors
    async def embeddings(self, request: Request) -> Response:
        body = await _read_json_object(request)
        if self._engine.model_format is not ModelFormat.EMBEDDING:
            raise self._wrong_format(request.url.path, "/v1/completions or /v1/chat/completions")
        parsed = parse_embedding_request(body)
        embeddings = await self._run(self._engine.embed, parsed.inputs)
        model = parsed.model or self._settings.served_model
        return OrjsonResponse(embedding_body(embeddings, model, parsed.encoding_format))

    async def _run(self, function: Callable[..., ResultT], *args: Any) -> ResultT:
        # One model call at a time: the engine is not thread-safe, and concurrent
        # calls would compete for the same CPU threads anyway.
        async with self._lock:
            return await anyio.to_thread.run_sync(function, *args)

    def _require_generative(self, path: str) -> None:
        if not self._engine.model_format.is_generative:
            raise self._wrong_format(path, "/v1/embeddings")

    def _wrong_format(self, path: str, supported: str) -> InvalidInput:
        model_format = self._engine.model_format
        return InvalidInput(
            f"This model server serves a model of format '{model_format.value}', which does not support {path}; use {supported}.",
            param="model", code="unsupported_model_format")


async def _read_json_object(request: Request) -> dict[str, Any]:
    body = await request.body()
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"The request body is not valid JSON: {error}.", code="invalid_json") from error
    if not isinstance(value, dict):
        raise InvalidInput("The request body must be a JSON object.", code="invalid_json")
    return value


async def _http_error(request: Request, error: Exception) -> Response:
    # Unknown routes (404) and wrong methods (405), in the OpenAI error shape.
    assert isinstance(error, HTTPException)
    body = {"error": {"message": f"{request.method} {request.url.path}: {error.detail}",
                      "type": "invalid_request_error", "param": None, "code": None}}
    return OrjsonResponse(body, status_code=error.status_code, headers=error.headers)
