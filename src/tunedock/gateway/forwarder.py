"""Forwarding of inference requests to the replicas of a model's live deployment."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson
from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from tunedock.accounts.identity import Principal
from tunedock.deployments.model_state import describe_unavailable_model
from tunedock.deployments.routing import ReplicaTarget, Route
from tunedock.errors import AuthenticationFailed, InvalidInput, PayloadTooLarge, PermissionDenied, ReplicaError
from tunedock.services import Services

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
# Generation on a CPU can take minutes; the gateway waits as long as the replica works.
REPLICA_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5)


class Gateway:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._http: aiohttp.ClientSession | None = None
        self._replica_headers = {"Content-Type": "application/json",
                                 "Authorization": f"Bearer {services.replica_token}"}

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
        principal = await run_in_threadpool(self.services.accounts.authenticate, secret.strip())
        if "inference" not in principal.scopes:
            raise PermissionDenied(f"API key {principal.key_prefix}... lacks the 'inference' scope; "
                                   "use a key created with that scope.", code="scope_missing")
        return principal

    async def forward(self, request: Request, route_name: str) -> Response:
        principal = await self.authenticate(request)
        body = await _read_body(request)
        slug = _requested_model(body)
        if not principal.may_call_model(slug):
            raise PermissionDenied(f"API key {principal.key_prefix}... may not call model {slug!r}.",
                                   code="model_not_allowed", param="model")
        route = self.services.routing.get(slug)
        if route is None or not route.targets:
            raise await run_in_threadpool(describe_unavailable_model, self.services.database, slug)
        return await self._send(route, route_name, body)

    async def _send(self, route: Route, route_name: str, body: bytes) -> Response:
        assert self._http is not None, "Gateway.start() was not called"
        last_error: Exception | None = None
        tried: list[ReplicaTarget] = []
        route.touch()
        # A connection refused before any byte was sent is safe to retry, so each replica
        # gets one try before the request fails.
        while (target := route.pick(exclude=tried)) is not None:
            tried.append(target)
            target.outstanding += 1
            try:
                async with self._http.post(f"{target.replica.url}/v1/{route_name}", data=body,
                                           headers=self._replica_headers) as reply:
                    content = await reply.read()
                    return Response(content, status_code=reply.status,
                                    media_type=reply.headers.get("Content-Type", "application/json"))
            except aiohttp.ClientConnectorError as exc:
                logger.warning("replica pid %s of %s refused the connection: %s", target.replica.pid,
                               route.deployment_name, exc)
                last_error = exc
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                logger.error("replica pid %s of %s failed mid-request: %s", target.replica.pid,
                             route.deployment_name, exc)
                raise ReplicaError(f"The model server of {route.deployment_name} failed while generating the response; "
                                   "retry the request.") from exc
            finally:
                target.outstanding -= 1
        raise ReplicaError(f"No replica of {route.deployment_name} accepted the connection; "
                           "retry shortly.") from last_error


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


def _requested_model(body: bytes) -> str:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The request body is not valid JSON: {exc}.", code="invalid_json") from exc
    if not isinstance(payload, dict):
        raise InvalidInput("The request body must be a JSON object.", code="invalid_json")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("Missing `model`: set it to the slug of a deployed model (GET /v1/models lists them).",
                           code="missing_model", param="model")
    return model
