"""Plain ASGI messages for the model server's inference routes.

The /v1 routes run once per request, so they skip the framework's request and response
objects: they read the body from ``receive`` and send their responses as ASGI messages.
The headers are the ones Starlette's ``Response`` classes send for the same bodies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

JSON_HEADER = (b"content-type", b"application/json")
# no-cache keeps proxies from buffering the stream; X-Accel-Buffering does so for nginx.
EVENT_STREAM_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"),
                        (b"content-type", b"text/event-stream; charset=utf-8")]


class ClientDisconnected(Exception):
    """The client closed its connection before the response was ready."""


def header(scope: Scope, name: bytes) -> str | None:
    """Return the first value of the request header ``name`` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(receive: Receive) -> bytes:
    """Return the whole request body; raise ClientDisconnected if the client leaves first."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_json(send: Send, payload: Any, status: int = 200,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send ``payload`` encoded by orjson, which also encodes numpy arrays, as the whole response."""
    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    raw_headers = [*(headers or ()), (b"content-length", str(len(body)).encode("latin-1")), JSON_HEADER]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def send_empty(send: Send, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def wait_for_disconnect(receive: Receive) -> None:
    # Once the body is read, the next message the server sends is http.disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


def watch_for_disconnect(receive: Receive, on_disconnect: Callable[[], None]) -> asyncio.Task[None]:
    """Start a task that calls ``on_disconnect()`` when the client disconnects; cancel it when done."""

    async def watch() -> None:
        await wait_for_disconnect(receive)
        on_disconnect()

    return asyncio.get_running_loop().create_task(watch())
