"""The gateway's HTTP client to replicas, against scripted HTTP servers on loopback.

Each test runs one scenario in its own event loop with ``asyncio.run``. The scripted server
is a plain asyncio server in that same loop. It counts the connections it accepts, notes
each one the client closes, and responds to every request with the coroutine that the test gives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from tunedock.gateway.replica_client import ReplicaDisconnected, ReplicaPool, ReplicaReply, ReplicaUnreachable

HOST = "127.0.0.1"
PATH = "/v1/completions"
HEADERS = b"Content-Type: application/json\r\n"
REQUEST_BODY = b'{"model":"m","prompt":"hi"}'
# A wait for something that happens at once on loopback. The deadline only stops a broken
# client from hanging the test.
DEADLINE_SECONDS = 10.0


def whole_response(body: bytes, status: str = "200 OK", content_type: bytes = b"application/json",
                   extra_headers: bytes = b"") -> bytes:
    return (b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status.encode("ascii"), content_type, len(body), extra_headers, body))


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
STREAM_EVENTS = [b'data: {"text":"20"}\n\n', b'data: {"text":"24"}\n\n', b'data: {"text":"-01"}\n\n',
                 b"data: [DONE]\n\n"]
JSON_BODY = b'{"id":"cmpl-1","choices":[{"text":"2024-01-05"}]}'


@dataclass
class Exchange:
    """One request as the scripted server read it, and its place on its connection (1 for the first)."""

    number: int
    head: bytes
    body: bytes


# Writes the response to one request. It returns False to close the connection without reading more.
Respond = Callable[[Exchange, asyncio.StreamWriter], Awaitable[bool]]


class ScriptedServer:
    def __init__(self, respond: Respond) -> None:
        self._respond = respond
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: list[asyncio.Task[None]] = []
        self.accepted = 0
        self.exchanges: list[Exchange] = []
        self.client_closed = asyncio.Event()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def wait_for_client_close(self) -> bool:
        """Return whether the client closed a connection before the deadline."""
        try:
            await asyncio.wait_for(self.client_closed.wait(), DEADLINE_SECONDS)
        except TimeoutError:
            return False
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.append(handler)
        number = 0
        try:
            while True:
                number += 1
                exchange = await read_request(reader, number)
                if exchange is None:
                    self.client_closed.set()
                    return
                self.exchanges.append(exchange)
                if not await self._respond(exchange, writer):
                    return
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def read_request(reader: asyncio.StreamReader, number: int) -> Exchange | None:
    """Read one request with a Content-Length body, or return None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length)
    return Exchange(number=number, head=head, body=body)


@contextlib.asynccontextmanager
async def scripted_server(respond: Respond) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(respond)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def replica_pool() -> AsyncIterator[ReplicaPool]:
    pool = ReplicaPool()
    try:
        yield pool
    finally:
        pool.close()


async def post(pool: ReplicaPool, server: ScriptedServer) -> ReplicaReply:
    return await pool.post(HOST, server.port, PATH, HEADERS, REQUEST_BODY)


async def post_and_read(pool: ReplicaPool, server: ScriptedServer) -> bytes:
    reply = await post(pool, server)
    return await reply.read()


# Server behaviours ----------------------------------------------------------------------------

async def respond_json(exchange: Exchange, writer: asyncio.StreamWriter) -> bool:
    writer.write(whole_response(JSON_BODY))
    await writer.drain()
    return True


async def respond_created_as_text(exchange: Exchange, writer: asyncio.StreamWriter) -> bool:
    writer.write(whole_response(b"created", status="201 Created", content_type=b"text/plain; charset=utf-8"))
    await writer.drain()
    return True


async def respond_then_close(exchange: Exchange, writer: asyncio.StreamWriter) -> bool:
    """Respond as if the connection stays open, then close it at once, as a replica's idle timeout does."""
    await respond_json(exchange, writer)
    return False


async def close_on_second_request(exchange: Exchange, writer: asyncio.StreamWriter) -> bool:
    """Respond to a connection's first request, and close the connection on the next one without a response."""
    if exchange.number > 1:
        return False
    return await respond_json(exchange, writer)


async def close_mid_body(exchange: Exchange, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                 b'{"id":"cmpl-1",')
    await writer.drain()
    return False


async def stream_events(exchange: Exchange, writer: asyncio.StreamWriter) -> bool:
    writer.write(STREAM_HEAD)
    for event in STREAM_EVENTS:
        writer.write(chunk(event))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True


async def stream_first_event_only(exchange: Exchange, writer: asyncio.StreamWriter) -> bool:
    """Start a stream and never finish it, like a replica still generating."""
    writer.write(STREAM_HEAD + chunk(STREAM_EVENTS[0]))
    await writer.drain()
    return True


async def respond_busy(exchange: Exchange, writer: asyncio.StreamWriter) -> bool:
    writer.write(whole_response(b'{"error":"busy"}', status="503 Service Unavailable",
                                extra_headers=b"Retry-After: 7\r\n"))
    await writer.drain()
    return True


async def respond_with_connection_close(exchange: Exchange, writer: asyncio.StreamWriter) -> bool:
    """Say ``Connection: close`` but keep the connection open, so only the client's choice counts."""
    writer.write(whole_response(JSON_BODY, extra_headers=b"Connection: close\r\n"))
    await writer.drain()
    return True


# Whole responses ------------------------------------------------------------------------------

async def created_reply() -> tuple[ReplicaReply, bytes]:
    async with scripted_server(respond_created_as_text) as server, replica_pool() as pool:
        reply = await post(pool, server)
        return reply, await reply.read()


def test_post_returns_status() -> None:
    reply, _ = asyncio.run(created_reply())
    assert reply.status == 201


def test_post_returns_content_type() -> None:
    reply, _ = asyncio.run(created_reply())
    assert reply.content_type == "text/plain; charset=utf-8"


def test_post_returns_body() -> None:
    _, body = asyncio.run(created_reply())
    assert body == b"created"


def test_post_sends_request_body() -> None:
    async def scenario() -> bytes:
        async with scripted_server(respond_json) as server, replica_pool() as pool:
            await post_and_read(pool, server)
            return server.exchanges[0].body

    assert asyncio.run(scenario()) == REQUEST_BODY


def test_retry_after_is_exposed() -> None:
    async def scenario() -> str | None:
        async with scripted_server(respond_busy) as server, replica_pool() as pool:
            reply = await post(pool, server)
            await reply.read()
            return reply.retry_after

    assert asyncio.run(scenario()) == "7"


# Connection reuse -----------------------------------------------------------------------------

def test_sequential_posts_reuse_connection() -> None:
    async def scenario() -> int:
        async with scripted_server(respond_json) as server, replica_pool() as pool:
            await post_and_read(pool, server)
            await post_and_read(pool, server)
            return server.accepted

    assert asyncio.run(scenario()) == 1


def test_connection_close_header_prevents_reuse() -> None:
    async def scenario() -> int:
        async with scripted_server(respond_with_connection_close) as server, replica_pool() as pool:
            await post_and_read(pool, server)
            await post_and_read(pool, server)
            return server.accepted

    assert asyncio.run(scenario()) == 2


def test_post_after_idle_connection_closed() -> None:
    async def scenario() -> bytes:
        async with scripted_server(respond_then_close) as server, replica_pool() as pool:
            await post_and_read(pool, server)
            return await post_and_read(pool, server)

    assert asyncio.run(scenario()) == JSON_BODY


def test_closed_idle_connection_replaced() -> None:
    async def scenario() -> int:
        async with scripted_server(respond_then_close) as server, replica_pool() as pool:
            await post_and_read(pool, server)
            await post_and_read(pool, server)
            return server.accepted

    assert asyncio.run(scenario()) == 2


def test_unanswered_reused_post_resent() -> None:
    async def scenario() -> bytes:
        async with scripted_server(close_on_second_request) as server, replica_pool() as pool:
            await post_and_read(pool, server)
            return await post_and_read(pool, server)

    assert asyncio.run(scenario()) == JSON_BODY


def test_pool_close_closes_idle_connections() -> None:
    async def scenario() -> bool:
        async with scripted_server(respond_json) as server:
            pool = ReplicaPool()
            await post_and_read(pool, server)
            pool.close()
            return await server.wait_for_client_close()

    assert asyncio.run(scenario())


# Failures -------------------------------------------------------------------------------------

def test_post_to_closed_port_is_unreachable() -> None:
    async def scenario() -> None:
        # A bound socket that does not listen refuses connections, and keeps the port from other tests.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unused:
            unused.bind((HOST, 0))
            async with replica_pool() as pool:
                await pool.post(HOST, unused.getsockname()[1], PATH, HEADERS, REQUEST_BODY)

    with pytest.raises(ReplicaUnreachable):
        asyncio.run(scenario())


def test_close_mid_body_fails_read() -> None:
    async def scenario() -> None:
        async with scripted_server(close_mid_body) as server, replica_pool() as pool:
            await post_and_read(pool, server)

    with pytest.raises(ReplicaDisconnected):
        asyncio.run(scenario())


# Streams --------------------------------------------------------------------------------------

def test_stream_chunks_arrive_in_order() -> None:
    async def scenario() -> bytes:
        async with scripted_server(stream_events) as server, replica_pool() as pool:
            reply = await post(pool, server)
            return b"".join([piece async for piece in reply.chunks()])

    assert asyncio.run(scenario()) == b"".join(STREAM_EVENTS)


def test_stream_abort_closes_connection() -> None:
    async def scenario() -> bool:
        async with scripted_server(stream_first_event_only) as server, replica_pool() as pool:
            reply = await post(pool, server)
            pieces = reply.chunks()
            await anext(pieces)
            reply.abort()
            await pieces.aclose()
            return await server.wait_for_client_close()

    assert asyncio.run(scenario())
