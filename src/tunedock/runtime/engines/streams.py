"""The channel that carries one generation's text from an engine thread to the event loop.

An engine thread calls ``emit_text``, ``finish`` or ``fail``; the request handler reads
the events with ``async for``. The handler calls ``cancel`` when its client goes away,
and the engine drops the sequence before its next decoding step.

Events reach the event loop through one ``_LoopDispatcher`` per loop, which wakes the
loop once for all the events that engine threads put while it was busy, rather than
once per token of every sequence.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
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
    """Events of one generation, written by an engine thread and read on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._dispatcher = _dispatcher_for(loop)
        self._events: asyncio.Queue[StreamEvent | BaseException] = asyncio.Queue()
        self._cancelled = False
        self._closed = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Ask the engine to stop this generation; safe to call from any thread, and more than once."""
        self._cancelled = True

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
        event = await self._events.get()
        if isinstance(event, BaseException):
            raise event
        return event

    def next_event_nowait(self) -> StreamEvent | None:
        """Return the next event if one has arrived, else None; raise the engine's error, if any."""
        try:
            event = self._events.get_nowait()
        except asyncio.QueueEmpty:
            return None
        if isinstance(event, BaseException):
            raise event
        return event

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        while True:
            event = await self.next_event()
            yield event
            if isinstance(event, GenerationFinished):
                return

    def _put(self, event: StreamEvent | BaseException) -> None:
        if not self._closed:
            self._dispatcher.put(self._events, event)


class _LoopDispatcher:
    """Moves events from engine threads into queues of one event loop, waking it once per burst."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[StreamEvent | BaseException], StreamEvent | BaseException]] = []
        self._scheduled = False

    def put(self, queue: asyncio.Queue[StreamEvent | BaseException], event: StreamEvent | BaseException) -> None:
        with self._lock:
            self._pending.append((queue, event))
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
        for queue, event in pending:
            queue.put_nowait(event)


_dispatchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopDispatcher] = weakref.WeakKeyDictionary()
_dispatchers_lock = threading.Lock()


def _dispatcher_for(loop: asyncio.AbstractEventLoop) -> _LoopDispatcher:
    with _dispatchers_lock:
        dispatcher = _dispatchers.get(loop)
        if dispatcher is None:
            dispatcher = _dispatchers[loop] = _LoopDispatcher(loop)
        return dispatcher
