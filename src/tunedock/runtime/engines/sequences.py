"""The engine-side state of one generation: its tokens, text, stop strings and limits.

Every engine feeds each generated token to ``SequenceOutput.add``, which turns the
tokens into text with the incremental detokenizer, applies the stop strings and the
token budget, and sends the text to the request's stream. The same code serves every
engine, so the engines differ only in how they compute the next token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

from tunedock.runtime.engines.base import EngineStopped, PreparedGeneration
from tunedock.runtime.engines.detokenizer import Decode, IncrementalDetokenizer
from tunedock.runtime.engines.stop_strings import StopStringMatcher
from tunedock.runtime.engines.streams import FinishReason, GenerationFinished, GenerationStream

logger = logging.getLogger(__name__)


class SequenceOutput:
    """Tokens generated for one request so far, and whether the request is finished."""

    def __init__(self, prepared: PreparedGeneration, stream: GenerationStream, decode: Decode,
                 end_token_ids: Collection[int]) -> None:
        self.prepared = prepared
        self.stream = stream
        self.token_ids: list[int] = []
        self.finished = False
        self.finish_reason: FinishReason | None = None
        self.queued_at = time.monotonic()
        # Engine-specific sampling state, such as the request's seeded random generator.
        self.sampling_state: object | None = None
        self._end_token_ids = end_token_ids
        self._detokenizer = IncrementalDetokenizer(decode)
        self._stop = StopStringMatcher(prepared.params.stop)

    @property
    def cancelled(self) -> bool:
        return self.stream.cancelled

    @property
    def done(self) -> bool:
        """True once the sequence needs no more tokens: finished, or its client went away."""
        return self.finished or self.stream.cancelled

    def add(self, token_id: int) -> bool:
        """Append a generated token and send the text it completes; return True when the sequence ends.

        An end-of-sequence token ends the sequence and counts as a completion token but
        adds no text.
        """
        if self.finished:
            raise RuntimeError("SequenceOutput.add() after the sequence finished")
        self.token_ids.append(token_id)
        if token_id in self._end_token_ids:
            self._finish("stop")
            return True

        released, stopped = self._stop.feed(self._detokenizer.push(token_id))
        self.stream.emit_text(released)
        if stopped:
            self._finish("stop", flush=False)
        elif len(self.token_ids) >= self.prepared.max_new_tokens:
            self._finish("length")
        return self.finished

    def end(self, reason: FinishReason) -> None:
        """Finish a sequence that the engine stopped, such as at a limit the engine applies itself."""
        if not self.finished:
            self._finish(reason)

    def fail(self, error: BaseException) -> None:
        self.finished = True
        self.stream.fail(error)

    def abandon(self) -> None:
        """End a sequence whose client went away, or fail it with EngineStopped on shutdown."""
        if self.finished:
            return
        self.finished = True
        if not self.stream.cancelled:
            self.stream.fail(EngineStopped("The model server is shutting down; retry the request."))

    def _finish(self, reason: FinishReason, flush: bool = True) -> None:
        if flush:
            # The rest of the text, and any held-back start of a stop string, can still hold a stop string.
            released, stopped = self._stop.feed(self._detokenizer.flush())
            if not stopped:
                released += self._stop.flush()
            reason = "stop" if stopped else reason
            self.stream.emit_text(released)
        self.finished = True
        self.finish_reason = reason
        self.stream.finish(GenerationFinished(finish_reason=reason, prompt_tokens=self.prepared.prompt_tokens,
                                              completion_tokens=len(self.token_ids)))
