"""A lean HTTP/1.1 client for the gateway's calls to model-server replicas on loopback.

Every inference request crosses this client, so it does only what those calls need. It
sends one POST with a JSON body over a pool of keep-alive connections per replica. httptools
parses the response as it arrives, whole or chunk by chunk for a stream. Closing a call's
connection is how the gateway tells a replica that the client left: the replica sees the
disconnect and stops generating.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import httptools

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5.0
# Replicas run uvicorn, which closes a connection after 5 s idle by default. The pool drops
# its own idle connections a second earlier, so a request rarely goes out on a closing one.
IDLE_SECONDS = 4.0
MAX_IDLE_PER_REPLICA = 64
# A stream's reader pauses the replica's socket while this much relayed text is unsent.
STREAM_BUFFER_BYTES = 256 * 1024


class ReplicaUnreachable(Exception):
    """The replica refused or did not accept the connection; no byte of the call was sent."""


class ReplicaDisconnected(Exception):
    """The replica's connection failed after the call was sent."""

    # True when the replica closed the connection before any response byte, and no abort caused it.
    unanswered = False


class ReplicaReply:
    """The response to one call: its head first, then its body whole or in chunks."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        loop = asyncio.get_running_loop()
        self._head: asyncio.Future[None] = loop.create_future()
        self._done: asyncio.Future[None] = loop.create_future()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._wakeup: asyncio.Future[None] | None = None
        self._streaming = False
        self.status = 0
        self.content_type = "application/json"
        self.retry_after: str | None = None
        self.received_bytes = False
        self.aborted = False

    async def head(self) -> None:
        """Wait until the status line and headers have arrived."""
        await self._head

    async def read(self) -> bytes:
        """Wait for the whole body and return it."""
        await self._done
        return b"".join(self._chunks)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives; raise ReplicaDisconnected if the connection fails first."""
        self._streaming = True
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                self._connection.resume()
                yield chunk
            if self._done.done():
                self._done.result()
                return
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup
            self._wakeup = None

    def abort(self) -> None:
        """Close the connection, so the replica stops working on this call."""
        self.aborted = True
        self._connection.close()

    # Called by the connection as the response arrives.

    def _on_head(self, status: int) -> None:
        self.status = status
        if not self._head.done():
            self._head.set_result(None)

    def _on_body(self, data: bytes) -> None:
        self._chunks.append(data)
        if self._streaming:
            self._buffered += len(data)
            if self._buffered > STREAM_BUFFER_BYTES:
                self._connection.pause()
            self._wake()

    def _on_complete(self) -> None:
        if not self._done.done():
            self._done.set_result(None)
        self._wake()

    def _on_failure(self, error: Exception) -> None:
        for waiter in (self._head, self._done):
            if not waiter.done():
                waiter.set_exception(error)
                # Mark the error as retrieved, so a waiter that is no longer awaited logs no warning.
                waiter.exception()
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a replica, carrying one call at a time."""

    def __init__(self, pool: ReplicaPool, address: tuple[str, int]) -> None:
        self._pool = pool
        self.address = address
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._reply: ReplicaReply | None = None
        self.closed = False
        self.idle_since = 0.0

    def send(self, request: bytes) -> ReplicaReply:
        assert self._transport is not None
        self._reply = ReplicaReply(self)
        self._transport.write(request)
        return self._reply

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()

    def pause(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.resume_reading()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._reply is None:
            # A replica sends nothing between calls, so any bytes here make the connection unusable.
            self.close()
            return
        self._reply.received_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            logger.error("replica at %s:%s sent an invalid HTTP response: %s", *self.address, exc)
            self._fail(ReplicaDisconnected(f"invalid HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        # NOTE: a body that ends with the connection (neither Content-Length nor chunked) counts
        # as a failure here. Replicas run uvicorn, which always frames its bodies.
        self.closed = True
        if self._reply is not None:
            reason = f"connection lost: {exc}" if exc else "the replica closed the connection"
            self._reply._on_failure(ReplicaDisconnected(reason))
            self._reply = None

    # httptools parser callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if self._reply is None:
            return
        if lowered == b"content-type":
            self._reply.content_type = value.decode("latin-1")
        elif lowered == b"retry-after":
            self._reply.retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._reply is not None:
            self._reply._on_head(self._parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self._reply is not None:
            self._reply._on_body(body)

    def on_message_complete(self) -> None:
        reply, self._reply = self._reply, None
        keep_alive = self._parser.should_keep_alive()
        if reply is not None:
            reply._on_complete()
        if keep_alive and not self.closed:
            self._pool.release(self)
        else:
            self.close()

    def _fail(self, error: Exception) -> None:
        reply, self._reply = self._reply, None
        self.close()
        if reply is not None:
            reply._on_failure(error)


class ReplicaPool:
    """Keep-alive connections to the replicas, by address, reused most recent first."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._closed = False

    async def post(self, host: str, port: int, path: str, headers: bytes, body: bytes,
                   on_sent: Callable[[ReplicaReply], None] | None = None) -> ReplicaReply:
        """Send ``body`` to ``path`` and return the reply once its head has arrived.

        ``headers`` are complete header lines, each ending in CRLF. ``on_sent`` gets the
        reply as soon as the call is on its way, so that it can be aborted while it runs.
        Raises ReplicaUnreachable if no connection could be made and ReplicaDisconnected if
        the call failed after that.
        """
        request = (b"POST %s HTTP/1.1\r\nHost: %s:%d\r\n%sContent-Length: %d\r\n\r\n%s"
                   % (path.encode("ascii"), host.encode("ascii"), port, headers, len(body), body))
        address = (host, port)
        connection = self._take_idle(address)
        if connection is not None:
            try:
                return await self._exchange(connection, request, on_sent)
            except ReplicaDisconnected as exc:
                if not exc.unanswered:
                    raise
                # The replica closed this idle connection as the call went out, before reading
                # it; the call is sent again once, on a new connection.
                logger.debug("reused connection to %s:%s closed before a response; retrying", host, port)
        connection = await self._connect(address)
        return await self._exchange(connection, request, on_sent)

    @staticmethod
    async def _exchange(connection: _Connection, request: bytes,
                        on_sent: Callable[[ReplicaReply], None] | None) -> ReplicaReply:
        reply = connection.send(request)
        if on_sent is not None:
            on_sent(reply)
        try:
            await reply.head()
        except ReplicaDisconnected as exc:
            exc.unanswered = not (reply.received_bytes or reply.aborted)
            raise
        except asyncio.CancelledError:
            connection.close()
            raise
        return reply

    def release(self, connection: _Connection) -> None:
        if self._closed:
            connection.close()
            return
        idle = self._idle.setdefault(connection.address, [])
        if len(idle) >= MAX_IDLE_PER_REPLICA:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    def close(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def _take_idle(self, address: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(address)
        if not idle:
            return None
        oldest_usable = time.monotonic() - IDLE_SECONDS
        while idle:
            connection = idle.pop()
            if not connection.closed and connection.idle_since > oldest_usable:
                return connection
            connection.close()
        return None

    async def _connect(self, address: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self, address), *address), CONNECT_TIMEOUT_SECONDS)
        except (OSError, asyncio.TimeoutError) as exc:
            reason = str(exc) or f"connection timed out after {CONNECT_TIMEOUT_SECONDS:g} s"
            raise ReplicaUnreachable(f"{address[0]}:{address[1]}: {reason}") from exc
        return connection
