"""The channel that carries one generation's text from an engine thread to the event loop.

An engine thread calls ``emit_text``, ``finish`` or ``fail``; the request handler reads
the events with ``async for``. The handler calls ``cancel`` when its client goes away,
and the engine drops the sequence before its next decoding step.

Events reach the event loop through one ``_LoopDispatcher`` per loop, which wakes the
loop once for all the events that engine threads put while it was busy, rather than
once per token of every sequence. On the loop, each stream keeps its events in a deque
and wakes its one reader through a plain future, which costs less per token than an
``asyncio.Queue``.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Text generated since the previous event; never ends inside a character."""

    text: str


@dataclass(frozen=True, slots=True)
class GenerationFinished:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


StreamEvent = TextDelta | GenerationFinished


class GenerationStream:
    """Events of one generation, written by an engine thread and read on ``loop`` by one reader."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dispatcher = _dispatcher_for(loop)
        self._events: deque[StreamEvent | BaseException] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._cancelled = False
        self._closed = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Ask the engine to stop this generation; safe to call from any thread, and more than once."""
        self._cancelled = True

    def interrupt(self, error: BaseException) -> None:
        """Cancel the generation and make the reader's next wait raise ``error``. Call it on the loop's thread."""
        self._cancelled = True
        self._deliver(error)

    def emit_text(self, text: str) -> None:
        if text:
            self._put(TextDelta(text))

    def finish(self, finished: GenerationFinished) -> None:
        self._put(finished)
        self._closed = True

    def fail(self, error: BaseException) -> None:
        self._put(error)
        self._closed = True

    async def next_event(self) -> StreamEvent:
        """Return the next event; raise the error that the engine reported, if any."""
        while not self._events:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._pop()

    def next_event_nowait(self) -> StreamEvent | None:
        """Return the next event if one has arrived, else None; raise the engine's error, if any."""
        if not self._events:
            return None
        return self._pop()

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        while True:
            event = await self.next_event()
            yield event
            if isinstance(event, GenerationFinished):
                return

    def _pop(self) -> StreamEvent:
        event = self._events.popleft()
        if isinstance(event, BaseException):
            raise event
        return event

    def _put(self, event: StreamEvent | BaseException) -> None:
        if not self._closed:
            self._dispatcher.put(self, event)

    def _deliver(self, event: StreamEvent | BaseException) -> None:
        # Runs on the loop's thread.
        self._events.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _LoopDispatcher:
    """Moves events from engine threads into streams read on one event loop, waking it once per burst."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[GenerationStream, StreamEvent | BaseException]] = []
        self._scheduled = False

    def put(self, stream: GenerationStream, event: StreamEvent | BaseException) -> None:
        with self._lock:
            self._pending.append((stream, event))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:
            pass  # The event loop is closed: the server is shutting down and no handler reads events.

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._scheduled = False
        for stream, event in pending:
            stream._deliver(event)


_dispatchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopDispatcher] = weakref.WeakKeyDictionary()
_dispatchers_lock = threading.Lock()


def _dispatcher_for(loop: asyncio.AbstractEventLoop) -> _LoopDispatcher:
    with _dispatchers_lock:
        dispatcher = _dispatchers.get(loop)
        if dispatcher is None:
            dispatcher = _dispatchers[loop] = _LoopDispatcher(loop)
        return dispatcher
