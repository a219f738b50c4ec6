"""Forwarding of inference requests to the replicas of a model's live deployment.

The gateway works on the raw ASGI messages rather than on framework request objects:
every inference request passes here, and its own cost is the latency that the product adds
to the model's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.exc import DataError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.types import Message, Receive, Scope, Send

from tunedock.accounts.identity import Principal
from tunedock.deployments.model_state import describe_unavailable_model
from tunedock.deployments.routing import ReplicaTarget, Route
from tunedock.errors import (
    DATABASE_UNREACHABLE,
    UNSTORABLE_VALUE,
    AuthenticationFailed,
    InvalidInput,
    NoReplicaAccepted,
    PayloadTooLarge,
    PermissionDenied,
    ReplicaError,
    TunedockError,
)
from tunedock.gateway.errors import openai_domain_error_response, openai_error_response
from tunedock.gateway.limits import RateLimiter
from tunedock.gateway.replica_client import ReplicaDisconnected, ReplicaPool, ReplicaReply, ReplicaUnreachable
from tunedock.services import Services

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("tunedock.gateway.access")

MAX_BODY_BYTES = 8 * 1024 * 1024
# The status nginx made common for "the client closed the connection before the answer".
CLIENT_CLOSED = 499
USAGE_TAIL_BYTES = 4096
STREAM_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                  (b"x-accel-buffering", b"no")]


class Gateway:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._pool = ReplicaPool()
        self._replica_headers = (b"Content-Type: application/json\r\nAuthorization: Bearer %s\r\n"
                                 % services.replica_token.encode("ascii"))
        settings = services.settings
        self.limits = RateLimiter(settings.rate_limit_per_key, settings.rate_limit_per_model)
        self.metrics = services.metrics

    async def start(self) -> None:
        logger.info("inference gateway started")

    async def close(self) -> None:
        self._pool.close()
        logger.info("inference gateway stopped")

    async def authenticate(self, authorization: str) -> Principal:
        """Resolve an ``Authorization`` header to a principal with the inference scope."""
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise AuthenticationFailed("Missing API key; send the header `Authorization: Bearer <key>`.",
                                       code="missing_api_key")
        principal = self.services.accounts.remembered_principal(secret)
        if principal is None:
            principal = await run_in_threadpool(self.services.accounts.authenticate, secret)
        if "inference" not in principal.scopes:
            raise PermissionDenied(f"API key {principal.key_prefix}... lacks the 'inference' scope; "
                                   "use a key created with that scope.", code="scope_missing")
        return principal

    async def handle(self, scope: Scope, receive: Receive, send: Send, route_name: str) -> None:
        """Respond to one ``POST /v1/<route_name>`` request with the replica's response, or an error."""
        started = time.perf_counter()
        try:
            call = await self._admit(scope, receive, route_name, started)
        except Exception as exc:  # noqa: BLE001 - every refusal becomes an OpenAI error body
            await _send_error(scope, receive, send, exc)
            return
        watch = _ClientWatch(receive)
        try:
            if call.stream:
                await self._stream(call, watch, send)
            else:
                await self._send(call, watch, send)
        except Exception as exc:  # noqa: BLE001 - a stream handles its own errors once it starts
            await _send_error(scope, receive, send, exc)
        finally:
            watch.stop()

    async def _admit(self, scope: Scope, receive: Receive, route_name: str, started: float) -> _Call:
        """Check the key, the body, the model and the rate limits; return the call to forward."""
        headers = dict(scope["headers"])
        principal = await self.authenticate(headers.get(b"authorization", b"").decode("latin-1"))
        body = await _read_body(headers.get(b"content-length"), receive)
        payload = _parse_object(body)
        slug = _requested_model(payload)
        if not principal.may_call_model(slug):
            raise PermissionDenied(f"API key {principal.key_prefix}... may not call model {slug!r}.",
                                   code="model_not_allowed", param="model")
        route = self.services.routing.get(slug)
        if route is None or not route.targets:
            raise await run_in_threadpool(describe_unavailable_model, self.services.database, slug)
        self.limits.check(principal.key_prefix, slug)
        route.touch()
        return _Call(route=route, route_name=route_name, body=body, key_prefix=principal.key_prefix,
                     started=started, stream=payload.get("stream") is True)

    async def _send(self, call: _Call, watch: _ClientWatch, send: Send) -> None:
        target, reply = await self._connect(call, watch)
        if reply is not None:
            await self._relay_whole(call, target, reply, watch, send)

    async def _stream(self, call: _Call, watch: _ClientWatch, send: Send) -> None:
        """Relay a server-sent event stream chunk by chunk, never buffering it."""
        target, reply = await self._connect(call, watch)
        if reply is None:
            return
        if reply.status != 200 or not reply.content_type.startswith("text/event-stream"):
            # The replica rejected the call before streaming, so its error is an ordinary response.
            await self._relay_whole(call, target, reply, watch, send)
            return
        status = 200
        tail = b""
        try:
            await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
            async for chunk in reply.chunks():
                tail = (tail + chunk)[-USAGE_TAIL_BYTES:]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ReplicaDisconnected as exc:
            if watch.left:
                status = CLIENT_CLOSED
                logger.info("client left a stream from %s; closed it on replica pid %s",
                            call.route.deployment_name, target.replica.pid)
            else:
                status = 502
                logger.error("replica pid %s of %s failed mid-stream: %s", target.replica.pid,
                             call.route.deployment_name, exc)
                await send(_stream_error("The model server failed while streaming; retry the request.",
                                         "replica_error"))
        except asyncio.CancelledError:
            reply.abort()
            raise
        except Exception:  # noqa: BLE001 - the answer has started, so the error goes in the stream
            status = 500
            reply.abort()
            logger.exception("relaying a stream from replica pid %s of %s failed", target.replica.pid,
                             call.route.deployment_name)
            await send(_stream_error("Internal server error; the server log has details.", "internal_error"))
        finally:
            target.outstanding -= 1
            self._finish(call, status, _last_usage_event(tail))
        await send({"type": "http.response.body", "body": b""})

    async def _relay_whole(self, call: _Call, target: ReplicaTarget, reply: ReplicaReply, watch: _ClientWatch,
                           send: Send) -> None:
        """Relay a response that is not a stream once all of it has arrived."""
        try:
            content = await reply.read()
        except ReplicaDisconnected as exc:
            self._replica_failed(call, target, watch, exc)
            return
        except asyncio.CancelledError:
            reply.abort()
            raise
        finally:
            target.outstanding -= 1
        self._finish(call, reply.status, content if reply.status == 200 else b"")
        headers = [(b"content-type", reply.content_type.encode("latin-1")),
                   (b"content-length", b"%d" % len(content))]
        if reply.retry_after:
            headers.append((b"retry-after", reply.retry_after.encode("latin-1")))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _connect(self, call: _Call, watch: _ClientWatch) -> tuple[ReplicaTarget, ReplicaReply | None]:
        """Send the call to the least busy replica and wait for the head of its response.

        A connection refused before any byte was sent is safe to retry, so each replica
        gets one try before the request fails. The chosen target's ``outstanding`` count
        stays raised for the caller to lower; the reply is None if the client left.
        """
        tried: list[ReplicaTarget] = []
        last_error: Exception | None = None
        while (target := call.route.pick(exclude=tried)) is not None:
            tried.append(target)
            target.outstanding += 1
            replica = target.replica
            try:
                reply = await self._pool.post(replica.host, replica.port, f"/v1/{call.route_name}",
                                              self._replica_headers, call.body, on_sent=watch.attach)
            except ReplicaUnreachable as exc:
                target.outstanding -= 1
                logger.warning("replica pid %s of %s refused the connection: %s", replica.pid,
                               call.route.deployment_name, exc)
                # The replica may have died; supervision replaces it sooner than its next round.
                self.services.deployments.check_replicas_soon()
                last_error = exc
                continue
            except ReplicaDisconnected as exc:
                target.outstanding -= 1
                self._replica_failed(call, target, watch, exc)
                return target, None
            except BaseException:
                target.outstanding -= 1
                raise
            return target, reply
        self._finish(call, 502)
        raise NoReplicaAccepted(f"No replica of {call.route.deployment_name} accepted the connection; "
                                "retry shortly.") from last_error

    def _replica_failed(self, call: _Call, target: ReplicaTarget, watch: _ClientWatch, exc: Exception) -> None:
        """Account for a call whose replica connection closed: the client left, or the replica failed."""
        if watch.left:
            logger.info("client left during a request to %s; abandoned it on replica pid %s",
                        call.route.deployment_name, target.replica.pid)
            self._finish(call, CLIENT_CLOSED)
            return
        logger.error("replica pid %s of %s failed mid-request: %s", target.replica.pid,
                     call.route.deployment_name, exc)
        self._finish(call, 502)
        raise ReplicaError(f"The model server of {call.route.deployment_name} failed while generating the "
                           "response; retry the request.") from exc

    def _finish(self, call: _Call, status: int, content: bytes = b"") -> None:
        """Count the call in the metrics and write its access-log line."""
        seconds = time.perf_counter() - call.started
        prompt_tokens, completion_tokens = _usage(content)
        self.metrics.observe(call.route.slug, call.route.deployment_id, call.route.deployment_name, call.route_name,
                             status, seconds, prompt_tokens, completion_tokens)
        access_logger.info("%s model=%s deployment=%s status=%d latency_ms=%.1f key=%s stream=%s",
                           call.route_name, call.route.slug, call.route.deployment_name, status, seconds * 1000,
                           call.key_prefix, call.stream)


@dataclass
class _Call:
    route: Route
    route_name: str
    body: bytes
    key_prefix: str
    started: float
    stream: bool


class _ClientWatch:
    """Notice the client leaving while its call runs, and close the call's replica connection then."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._reply: ReplicaReply | None = None
        self._stopped = False
        self.left = False
        self._waiter = asyncio.ensure_future(receive())
        self._waiter.add_done_callback(self._on_message)

    def attach(self, reply: ReplicaReply) -> None:
        self._reply = reply
        if self.left:
            reply.abort()

    def stop(self) -> None:
        """Stop watching: a late disconnect must not close a connection that went back to the pool."""
        self._stopped = True
        self._reply = None
        self._waiter.cancel()

    def _on_message(self, waiter: asyncio.Future[Message]) -> None:
        if self._stopped or waiter.cancelled() or waiter.exception() is not None:
            return
        if waiter.result()["type"] != "http.disconnect":
            self._waiter = asyncio.ensure_future(self._receive())
            self._waiter.add_done_callback(self._on_message)
            return
        self.left = True
        if self._reply is not None:
            self._reply.abort()


def _stream_error(message: str, code: str) -> Message:
    """Return the server-sent event that ends a stream which failed after it started."""
    error = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return {"type": "http.response.body", "body": b"data: " + orjson.dumps(error) + b"\n\n", "more_body": True}


async def _send_error(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    if isinstance(exc, TunedockError):
        response = openai_domain_error_response(exc)
    elif isinstance(exc, DataError):
        logger.warning("the database rejected a value of an inference request: %s", exc.orig)
        response = openai_error_response(400, UNSTORABLE_VALUE, "invalid_value")
    elif isinstance(exc, OperationalError):
        logger.error("database unreachable during an inference request: %s", exc.orig)
        response = openai_error_response(503, DATABASE_UNREACHABLE, "database_unavailable")
    else:
        logger.exception("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
        response = openai_error_response(500, "Internal server error; the server log has details.")
    await response(scope, receive, send)


def _usage(content: bytes) -> tuple[int, int]:
    """Read token counts from a JSON answer's ``usage`` field, if it has one."""
    if not content:
        return 0, 0
    try:
        usage = orjson.loads(content).get("usage") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _last_usage_event(tail: bytes) -> bytes:
    """Return the JSON of the stream's usage chunk (sent with include_usage), if it ended with one."""
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            return line[len(b"data: "):]
    return b""


async def _read_body(declared: bytes | None, receive: Receive) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large(int(declared))
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("The client closed the connection before the request body arrived.",
                               code="client_closed")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large(size)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(size: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is {size} bytes or more; the limit is {MAX_BODY_BYTES} bytes.")


def _parse_object(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The request body is not valid JSON: {exc}.", code="invalid_json") from exc
    if not isinstance(payload, dict):
        raise InvalidInput("The request body must be a JSON object.", code="invalid_json")
    return payload


def _requested_model(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("Missing `model`: set it to the slug of a deployed model (GET /v1/models lists them).",
                           code="missing_model", param="model")
    return model
