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
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import anyio
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tunedock.errors import AuthenticationFailed, InvalidInput, TunedockError
from tunedock.runtime.engines.base import Engine, EngineOverloaded, Generation, ModelFormat, PreparedGeneration
from tunedock.runtime.engines.streams import GenerationFinished, GenerationStream, StreamEvent, TextDelta
from tunedock.runtime.generation_defaults import GenerationDefaults
from tunedock.runtime.openai_requests import (StreamOptions, parse_chat_request, parse_completion_request,
                                              parse_embedding_request)
from tunedock.runtime.openai_responses import (SSE_DONE, ChunkWriter, chat_completion_body, completion_body,
                                               embedding_body, error_body, server_error_body, sse_event)

logger = logging.getLogger(__name__)

RouteMethod = Callable[[Any, Request], Awaitable[Response]]
ResultT = TypeVar("ResultT")
# Status of the response to a client that disconnected before it was ready; no client receives it.
CLIENT_CLOSED_REQUEST = 499


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


class ClientDisconnected(Exception):
    """The client closed its connection before the response was ready."""


def create_app(engine: Engine, settings: ServerSettings) -> Starlette:
    """Build the Starlette app that serves ``engine`` on the OpenAI routes; the caller starts the engine."""
    service = _ModelService(engine, settings)
    routes = [
        Route("/health", service.health, methods=["GET"]),
        Route("/stats", service.stats, methods=["GET"]),
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
            logger.warning("%s %s rejected: missing or invalid replica token", request.method, request.url.path)
            return OrjsonResponse(error_body(AuthenticationFailed(
                "This model server answers only the Tunedock gateway; call the model through the "
                "server's /v1 endpoint with an API key.", code="replica_token_required")), status_code=401)
        try:
            return await handler(self, request)
        except ClientDisconnected:
            logger.info("%s %s: the client disconnected; its request was cancelled", request.method,
                        request.url.path)
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except TunedockError as error:
            return _error_response(request, error)
        except Exception:
            logger.exception("%s %s failed with an unexpected error", request.method, request.url.path)
            return OrjsonResponse(server_error_body(), status_code=500)

    return wrapper


def _error_response(request: Request, error: TunedockError) -> Response:
    if error.status_code >= 500:
        logger.error("%s %s failed: %s", request.method, request.url.path, error.message)
    else:
        logger.info("%s %s rejected (%s, param %s): %s", request.method, request.url.path,
                    error.code, error.param, error.message)
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, EngineOverloaded) else None
    return OrjsonResponse(error_body(error), status_code=error.status_code, headers=headers)


class _ModelService:
    def __init__(self, engine: Engine, settings: ServerSettings) -> None:
        self._engine = engine
        self._settings = settings
        self._health = {"status": "ok", "format": str(engine.model_format), "model_path": settings.model_path}

    async def health(self, request: Request) -> Response:
        return OrjsonResponse(self._health)

    async def stats(self, request: Request) -> Response:
        return OrjsonResponse(self._engine.stats())

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
        prepared = self._engine.prepare_completion(parsed.prompt, parsed.params)
        return await self._generate(request, prepared, parsed.streaming, "completion", parsed.model)

    @_openai_errors
    async def chat_completions(self, request: Request) -> Response:
        body = await _read_json_object(request)
        self._require_generative(request.url.path)
        parsed = parse_chat_request(body, self._settings.generation_defaults)
        prepared = self._engine.prepare_chat(parsed.messages, parsed.params)
        return await self._generate(request, prepared, parsed.streaming, "chat", parsed.model)

    @_openai_errors
    async def embeddings(self, request: Request) -> Response:
        body = await _read_json_object(request)
        if self._engine.model_format is not ModelFormat.EMBEDDING:
            raise self._wrong_format(request.url.path, "/v1/completions or /v1/chat/completions")
        parsed = parse_embedding_request(body)
        # Tokenizing up to 2048 inputs takes long enough to hold up other requests on the event loop.
        future = await anyio.to_thread.run_sync(self._engine.embed, parsed.inputs)
        try:
            embeddings = await _unless_disconnected(request, asyncio.wrap_future(future))
        except ClientDisconnected:
            future.cancel()
            raise
        model = parsed.model or self._settings.served_model
        return OrjsonResponse(embedding_body(embeddings, model, parsed.encoding_format))

    async def _generate(self, request: Request, prepared: PreparedGeneration, streaming: StreamOptions,
                        kind: Literal["completion", "chat"], model: str | None) -> Response:
        stream = GenerationStream(asyncio.get_running_loop())
        self._engine.submit(prepared, stream)
        served_model = model or self._settings.served_model
        try:
            if not streaming.stream:
                generation = await _unless_disconnected(request, _collect(stream))
                body_builder = completion_body if kind == "completion" else chat_completion_body
                return OrjsonResponse(body_builder(generation, served_model))
            first_event = await _unless_disconnected(request, stream.next_event())
        except BaseException:
            stream.cancel()
            raise
        writer = ChunkWriter(kind, served_model, streaming.include_usage)
        return EventStreamResponse(_stream_events(stream, first_event, writer), on_disconnect=stream.cancel)

    def _require_generative(self, path: str) -> None:
        if not self._engine.model_format.is_generative:
            raise self._wrong_format(path, "/v1/embeddings")

    def _wrong_format(self, path: str, supported: str) -> InvalidInput:
        model_format = self._engine.model_format
        return InvalidInput(
            f"This model server serves a model of format '{model_format.value}', which does not support {path}; use {supported}.",
            param="model", code="unsupported_model_format")


class EventStreamResponse(Response):
    """A ``text/event-stream`` response that calls ``on_disconnect`` as soon as the client disconnects.

    The disconnect is watched on the ASGI receive channel, so it is noticed even while
    no event is being sent, such as while text is held back before a possible stop string.
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], on_disconnect: Callable[[], None]) -> None:
        self.status_code = 200
        self.background = None
        self._events = events
        self._on_disconnect = on_disconnect
        # no-cache keeps proxies from buffering the stream; X-Accel-Buffering does so for nginx.
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def watch_for_disconnect() -> None:
                await _wait_for_disconnect(receive)
                self._on_disconnect()
                group.cancel_scope.cancel()

            group.start_soon(watch_for_disconnect)
            try:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                async for event in self._events:
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:
                # The server's send raises this once the client is gone.
                self._on_disconnect()
            group.cancel_scope.cancel()


async def _stream_events(stream: GenerationStream, first_event: StreamEvent,
                         writer: ChunkWriter) -> AsyncIterator[bytes]:
    try:
        for chunk in writer.opening():
            yield sse_event(chunk)
        event: StreamEvent | None = first_event
        while True:
            # Text that arrived while the previous chunk was being sent goes out as one chunk.
            parts = []
            while isinstance(event, TextDelta):
                parts.append(event.text)
                try:
                    event = stream.next_event_nowait()
                except Exception:
                    yield sse_event(writer.text("".join(parts)))
                    raise
            if parts:
                yield sse_event(writer.text("".join(parts)))
            if isinstance(event, GenerationFinished):
                break
            event = await stream.next_event()
        for chunk in writer.closing(event):
            yield sse_event(chunk)
        yield SSE_DONE
    except TunedockError as error:
        logger.error("A streamed generation failed after it started: %s", error.message)
        yield sse_event(error_body(error))
    except Exception:
        logger.exception("A streamed generation failed after it started")
        yield sse_event(server_error_body())
    finally:
        stream.cancel()


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


async def _unless_disconnected(request: Request, awaitable: Coroutine[Any, Any, ResultT] | asyncio.Future[ResultT]
                               ) -> ResultT:
    """Await ``awaitable``; raise ClientDisconnected, having cancelled it, if the client disconnects first."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request.receive))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()
    if work.done() and not work.cancelled():
        return work.result()
    raise ClientDisconnected()


async def _wait_for_disconnect(receive: Receive) -> None:
    # Once the body is read, the next message the server sends is http.disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


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
