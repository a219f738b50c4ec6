"""The HTTP layer of the model server: OpenAI routes over one Engine.

Routes:
    GET  /health               {"status": "ok", "format": ..., "model_path": ...}
    GET  /stats                the engine's counters: queued and running requests,
                               decoding steps, generated tokens, outcomes by finish reason
    POST /v1/completions       causal-lm and seq2seq-lm models; ``stream: true`` streams
    POST /v1/chat/completions  causal-lm and seq2seq-lm models; ``stream: true`` streams
    POST /v1/embeddings        embedding models

The engine runs the model on its own worker thread and batches concurrent requests, so
the event loop stays free and /health responds during a long generation. A full
request queue gives 429 with ``Retry-After``.

Errors: before a streamed response starts, every error is an HTTP error with an OpenAI
error body. The handler waits for the first generated text before it sends the 200, so
a model failure at the prefill is an HTTP error too. After that, an error is one
server-sent event holding an ``error`` object, and the stream ends. Unexpected
exceptions are logged with their traceback, and the client gets a fixed 500 message.

Cancellation: when a client disconnects, its request is cancelled and the engine drops
it before its next decoding step, for streamed and non-streamed requests alike.

The three /v1 routes are plain ASGI apps that ``InferenceShortcut`` calls before any
routing. The framework's routing, request objects, middleware and task groups took more
than half of the HTTP layer's CPU time for a streamed completion (measured in-process
with a stand-in engine), which matters when the model is small. The routes stay in the
Starlette app too, so that a wrong method gets a 405 in the OpenAI error shape.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tunedock.errors import AuthenticationFailed, InvalidInput, TunedockError
from tunedock.runtime.asgi import (EVENT_STREAM_HEADERS, ClientDisconnected, header, read_body, send_empty,
                                   send_json, watch_for_disconnect)
from tunedock.runtime.engines.base import (Embeddings, Engine, EngineOverloaded, Generation, ModelFormat,
                                           PreparedGeneration)
from tunedock.runtime.engines.streams import GenerationFinished, GenerationStream, StreamEvent, TextDelta
from tunedock.runtime.generation_defaults import GenerationDefaults
from tunedock.runtime.openai_requests import (StreamOptions, parse_chat_request, parse_completion_request,
                                              parse_embedding_request)
from tunedock.runtime.openai_responses import (ChunkWriter, chat_completion_body, completion_body, embedding_body,
                                               error_body, server_error_body, sse_event)

logger = logging.getLogger(__name__)

InferenceHandler = Callable[[Scope, Receive, Send], Awaitable[None]]
# Status of the response to a client that disconnected before it was ready; no client receives it.
CLIENT_CLOSED_REQUEST = 499
# Embedding requests up to this many characters are tokenized on the event loop, which
# costs less CPU than a hop to a worker thread and blocks the loop for about 0.3 ms
# (MiniLM's tokenizer, measured on a 2-core x86_64 machine). Larger requests are
# tokenized on a worker thread, so that they do not hold up other requests.
INLINE_TOKENIZATION_CHARS = 1000


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


def create_app(engine: Engine, settings: ServerSettings) -> ASGIApp:
    """Build the ASGI app that serves ``engine`` on the OpenAI routes; the caller starts the engine."""
    service = _ModelService(engine, settings)
    inference = {
        "/v1/completions": InferenceRoute(service, service.completions),
        "/v1/chat/completions": InferenceRoute(service, service.chat_completions),
        "/v1/embeddings": InferenceRoute(service, service.embeddings),
    }
    routes = [
        Route("/health", service.health, methods=["GET"]),
        Route("/stats", service.stats, methods=["GET"]),
        *(Route(path, route, methods=["POST"]) for path, route in inference.items()),
    ]
    return InferenceShortcut(Starlette(routes=routes, exception_handlers={HTTPException: _http_error}), inference)


class InferenceShortcut:
    """ASGI middleware that hands POST requests of the /v1 routes to their handlers before any routing."""

    def __init__(self, app: ASGIApp, routes: dict[str, InferenceRoute]) -> None:
        self.app = app
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self._routes.get(scope["path"])
            if route is not None:
                await route(scope, receive, send)
                return
        await self.app(scope, receive, send)


class InferenceRoute:
    """ASGI app of one /v1 route: checks the replica token and turns exceptions into OpenAI errors."""

    def __init__(self, service: _ModelService, handler: InferenceHandler) -> None:
        self._service = service
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._service.authorized(scope):
            logger.warning("%s %s rejected: missing or invalid replica token", scope["method"], scope["path"])
            await send_json(send, error_body(AuthenticationFailed(
                "This model server answers only the Tunedock gateway; call the model through the "
                "server's /v1 endpoint with an API key.", code="replica_token_required")), status=401)
            return
        try:
            await self._handler(scope, receive, send)
        except ClientDisconnected:
            logger.info("%s %s: the client disconnected; its request was cancelled", scope["method"], scope["path"])
            await send_empty(send, CLIENT_CLOSED_REQUEST)
        except TunedockError as error:
            await _send_error(scope, send, error)
        except Exception:
            logger.exception("%s %s failed with an unexpected error", scope["method"], scope["path"])
            await send_json(send, server_error_body(), status=500)


async def _send_error(scope: Scope, send: Send, error: TunedockError) -> None:
    if error.status_code >= 500:
        logger.error("%s %s failed: %s", scope["method"], scope["path"], error.message)
    else:
        logger.info("%s %s rejected (%s, param %s): %s", scope["method"], scope["path"],
                    error.code, error.param, error.message)
    headers = None
    if isinstance(error, EngineOverloaded):
        headers = [(b"retry-after", str(error.retry_after).encode("latin-1"))]
    await send_json(send, error_body(error), status=error.status_code, headers=headers)


class _ModelService:
    def __init__(self, engine: Engine, settings: ServerSettings) -> None:
        self._engine = engine
        self._settings = settings
        self._health = {"status": "ok", "format": str(engine.model_format), "model_path": settings.model_path}
        token = settings.access_token
        self._expected_authorization = None if token is None else f"Bearer {token}".encode()

    async def health(self, request: Request) -> Response:
        return OrjsonResponse(self._health)

    async def stats(self, request: Request) -> Response:
        return OrjsonResponse(self._engine.stats())

    def authorized(self, scope: Scope) -> bool:
        expected = self._expected_authorization
        if expected is None:
            return True
        offered = header(scope, b"authorization") or ""
        return hmac.compare_digest(offered.encode(), expected)

    async def completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_json_object(receive)
        self._require_generative(scope["path"])
        parsed = parse_completion_request(body, self._settings.generation_defaults)
        prepared = self._engine.prepare_completion(parsed.prompt, parsed.params)
        await self._generate(receive, send, prepared, parsed.streaming, "completion", parsed.model)

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_json_object(receive)
        self._require_generative(scope["path"])
        parsed = parse_chat_request(body, self._settings.generation_defaults)
        prepared = self._engine.prepare_chat(parsed.messages, parsed.params)
        await self._generate(receive, send, prepared, parsed.streaming, "chat", parsed.model)

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_json_object(receive)
        if self._engine.model_format is not ModelFormat.EMBEDDING:
            raise self._wrong_format(scope["path"], "/v1/completions or /v1/chat/completions")
        parsed = parse_embedding_request(body)
        if sum(len(text) for text in parsed.inputs) <= INLINE_TOKENIZATION_CHARS:
            future = self._engine.embed(parsed.inputs)
        else:
            future = await anyio.to_thread.run_sync(self._engine.embed, parsed.inputs)
        embeddings = await _unless_disconnected(receive, asyncio.wrap_future(future))
        model = parsed.model or self._settings.served_model
        await send_json(send, embedding_body(embeddings, model, parsed.encoding_format))

    async def _generate(self, receive: Receive, send: Send, prepared: PreparedGeneration, streaming: StreamOptions,
                        kind: Literal["completion", "chat"], model: str | None) -> None:
        stream = GenerationStream(asyncio.get_running_loop())
        self._engine.submit(prepared, stream)
        served_model = model or self._settings.served_model
        # A disconnect cancels the generation and ends the handler's wait for the next event.
        watcher = watch_for_disconnect(receive, lambda: stream.interrupt(ClientDisconnected()))
        try:
            if not streaming.stream:
                generation = await _collect(stream)
                body_builder = completion_body if kind == "completion" else chat_completion_body
                await send_json(send, body_builder(generation, served_model))
                return
            first_event = await stream.next_event()
            writer = ChunkWriter(kind, served_model, streaming.include_usage)
            await _send_event_stream(send, stream, first_event, writer)
        finally:
            watcher.cancel()
            stream.cancel()

    def _require_generative(self, path: str) -> None:
        if not self._engine.model_format.is_generative:
            raise self._wrong_format(path, "/v1/embeddings")

    def _wrong_format(self, path: str, supported: str) -> InvalidInput:
        model_format = self._engine.model_format
        return InvalidInput(
            f"This model server serves a model of format '{model_format.value}', which does not support {path}; use {supported}.",
            param="model", code="unsupported_model_format")


async def _send_event_stream(send: Send, stream: GenerationStream, first_event: StreamEvent,
                             writer: ChunkWriter) -> None:
    """Send the 200 and the events of ``stream``; an error after the start becomes the last event.

    Everything that arrived while the previous write was under way goes out in one
    write: the text as one chunk, and at the end the closing chunks with ``[DONE]``.
    """
    await send({"type": "http.response.start", "status": 200, "headers": EVENT_STREAM_HEADERS})
    pending = writer.opening()
    try:
        event: StreamEvent = first_event
        while True:
            parts = []
            while isinstance(event, TextDelta):
                parts.append(event.text)
                try:
                    next_event = stream.next_event_nowait()
                except Exception:
                    pending += writer.text("".join(parts))
                    raise
                if next_event is None:
                    break
                event = next_event
            if parts:
                pending += writer.text("".join(parts))
            if isinstance(event, GenerationFinished):
                pending += writer.closing(event)
                break
            await send({"type": "http.response.body", "body": pending, "more_body": True})
            pending = b""
            event = await stream.next_event()
    except (ClientDisconnected, OSError):
        # The server's send raises OSError once the client is gone, so the rest is not sent.
        return
    except TunedockError as error:
        logger.error("A streamed generation failed after it started: %s", error.message)
        pending += sse_event(error_body(error))
    except Exception:
        logger.exception("A streamed generation failed after it started")
        pending += sse_event(server_error_body())
    await send({"type": "http.response.body", "body": pending, "more_body": False})


async def _collect(stream: GenerationStream) -> Generation:
    parts = []
    async for event in stream:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            return _generation("".join(parts), event)
    raise RuntimeError("the generation stream ended without a GenerationFinished event")


def _generation(text: str, finished: GenerationFinished) -> Generation:
    return Generation(text=text, finish_reason=finished.finish_reason, prompt_tokens=finished.prompt_tokens,
                      completion_tokens=finished.completion_tokens)


async def _unless_disconnected(receive: Receive, future: asyncio.Future[Embeddings]) -> Embeddings:
    """Await ``future``; raise ClientDisconnected, having cancelled it, if the client disconnects first."""
    disconnected = False

    def cancel() -> None:
        nonlocal disconnected
        disconnected = True
        future.cancel()

    watcher = watch_for_disconnect(receive, cancel)
    try:
        return await future
    except asyncio.CancelledError:
        if disconnected:
            raise ClientDisconnected() from None
        raise
    finally:
        watcher.cancel()


async def _read_json_object(receive: Receive) -> dict[str, Any]:
    body = await read_body(receive)
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
