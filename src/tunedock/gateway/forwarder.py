"""Forwarding of inference requests to the replicas of a model's live deployment."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tunedock.accounts.identity import Principal
from tunedock.deployments.model_state import describe_unavailable_model
from tunedock.deployments.routing import ReplicaTarget, Route
from tunedock.errors import AuthenticationFailed, InvalidInput, PayloadTooLarge, PermissionDenied, ReplicaError
from tunedock.gateway.limits import RateLimiter
from tunedock.services import Services

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("tunedock.gateway.access")

MAX_BODY_BYTES = 8 * 1024 * 1024
# Generation on a CPU can take minutes; the gateway waits as long as the replica works.
REPLICA_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5)
# The status nginx made common for "the client closed the connection before the answer".
CLIENT_CLOSED = 499
USAGE_TAIL_BYTES = 4096


class Gateway:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._http: aiohttp.ClientSession | None = None
        self._replica_headers = {"Content-Type": "application/json",
                                 "Authorization": f"Bearer {services.replica_token}"}
        settings = services.settings
        self.limits = RateLimiter(settings.rate_limit_per_key, settings.rate_limit_per_model)
        self.metrics = services.metrics

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
        self._http = aiohttp.ClientSession(connector=connector, timeout=REPLICA_TIMEOUT,
                                           auto_decompress=False, skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise AuthenticationFailed("Missing API key; send the header `Authorization: Bearer <key>`.",
                                       code="missing_api_key")
        principal = self.services.accounts.remembered_principal(secret.strip())
        if principal is None:
            principal = await run_in_threadpool(self.services.accounts.authenticate, secret.strip())
        if "inference" not in principal.scopes:
            raise PermissionDenied(f"API key {principal.key_prefix}... lacks the 'inference' scope; "
                                   "use a key created with that scope.", code="scope_missing")
        return principal

    async def forward(self, request: Request, route_name: str) -> Response:
        started = time.perf_counter()
        principal = await self.authenticate(request)
        body = await _read_body(request)
        payload = _parse_object(body)
        slug = _requested_model(payload)
        if not principal.may_call_model(slug):
            raise PermissionDenied(f"API key {principal.key_prefix}... may not call model {slug!r}.",
                                   code="model_not_allowed", param="model")
        route = self.services.routing.get(slug)
        if route is None or not route.targets:
            raise await run_in_threadpool(describe_unavailable_model, self.services.database, slug)
        self.limits.check(principal.key_prefix, slug)
        call = _Call(route=route, route_name=route_name, body=body, key_prefix=principal.key_prefix,
                     started=started, stream=payload.get("stream") is True)
        if call.stream:
            return await self._stream(call)
        return await self._send(request, call)

    async def _send(self, request: Request, call: _Call) -> Response:
        last_error: Exception | None = None
        tried: list[ReplicaTarget] = []
        call.route.touch()
        # A connection refused before any byte was sent is safe to retry, so each replica
        # gets one try before the request fails.
        while (target := call.route.pick(exclude=tried)) is not None:
            tried.append(target)
            target.outstanding += 1
            try:
                status, content, media_type = await self._post_unless_disconnected(request, target, call)
            except aiohttp.ClientConnectorError as exc:
                logger.warning("replica pid %s of %s refused the connection: %s", target.replica.pid,
                               call.route.deployment_name, exc)
                last_error = exc
                continue
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                logger.error("replica pid %s of %s failed mid-request: %s", target.replica.pid,
                             call.route.deployment_name, exc)
                self._finish(call, 502)
                raise ReplicaError(f"The model server of {call.route.deployment_name} failed while generating the "
                                   "response; retry the request.") from exc
            finally:
                target.outstanding -= 1
            self._finish(call, status, content if status == 200 else b"")
            headers = {"Retry-After": call.retry_after} if call.retry_after else None
            return Response(content, status_code=status, media_type=media_type, headers=headers)
        self._finish(call, 502)
        raise ReplicaError(f"No replica of {call.route.deployment_name} accepted the connection; "
                           "retry shortly.") from last_error

    async def _post_unless_disconnected(self, request: Request, target: ReplicaTarget,
                                        call: _Call) -> tuple[int, bytes, str]:
        """Forward the call; if the client goes away first, abandon it so the replica stops generating."""
        reply = asyncio.ensure_future(self._post(target, call))
        disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            done, _ = await asyncio.wait({reply, disconnected}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnected.cancel()
        if reply in done:
            return reply.result()
        reply.cancel()
        await asyncio.gather(reply, return_exceptions=True)
        logger.info("client left during a request to %s; abandoned it on replica pid %s",
                    call.route.deployment_name, target.replica.pid)
        return CLIENT_CLOSED, b"", "application/json"

    async def _post(self, target: ReplicaTarget, call: _Call) -> tuple[int, bytes, str]:
        assert self._http is not None, "Gateway.start() was not called"
        async with self._http.post(f"{target.replica.url}/v1/{call.route_name}", data=call.body,
                                   headers=self._replica_headers) as reply:
            content = await reply.read()
            call.retry_after = reply.headers.get("Retry-After")
            return reply.status, content, reply.headers.get("Content-Type", "application/json")

    async def _stream(self, call: _Call) -> Response:
        """Relay a server-sent event stream chunk by chunk, never buffering it."""
        assert self._http is not None, "Gateway.start() was not called"
        call.route.touch()
        tried: list[ReplicaTarget] = []
        while (target := call.route.pick(exclude=tried)) is not None:
            tried.append(target)
            target.outstanding += 1
            try:
                reply = await self._http.post(f"{target.replica.url}/v1/{call.route_name}", data=call.body,
                                              headers=self._replica_headers)
            except aiohttp.ClientConnectorError as exc:
                target.outstanding -= 1
                logger.warning("replica pid %s of %s refused the connection: %s", target.replica.pid,
                               call.route.deployment_name, exc)
                continue
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                target.outstanding -= 1
                self._finish(call, 502)
                raise ReplicaError(f"The model server of {call.route.deployment_name} failed before streaming; "
                                   "retry the request.") from exc
            if reply.status != 200 or not reply.content_type.startswith("text/event-stream"):
                content = await reply.read()
                retry_after = reply.headers.get("Retry-After")
                reply.release()
                target.outstanding -= 1
                self._finish(call, reply.status)
                return Response(content, status_code=reply.status, media_type=reply.content_type,
                                headers={"Retry-After": retry_after} if retry_after else None)
            return StreamingResponse(self._relay(call, target, reply), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._finish(call, 502)
        raise ReplicaError(f"No replica of {call.route.deployment_name} accepted the connection; retry shortly.")

    async def _relay(self, call: _Call, target: ReplicaTarget,
                     reply: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        status = 200
        tail = b""
        try:
            async for chunk in reply.content.iter_any():
                tail = (tail + chunk)[-USAGE_TAIL_BYTES:]
                yield chunk
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            status = 502
            logger.error("replica pid %s of %s failed mid-stream: %s", target.replica.pid,
                         call.route.deployment_name, exc)
            error = {"error": {"message": "The model server failed while streaming; retry the request.",
                               "type": "server_error", "param": None, "code": "replica_error"}}
            yield b"data: " + orjson.dumps(error) + b"\n\n"
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            logger.info("client left a stream from %s; closing it on replica pid %s", call.route.deployment_name,
                        target.replica.pid)
            raise
        finally:
            reply.close()
            target.outstanding -= 1
            self._finish(call, status, _last_usage_event(tail))

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
    retry_after: str | None = None


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


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


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large(int(declared))
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large(size)
        chunks.append(chunk)
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
