"""Stop sequences matched on generated text, as the OpenAI API defines them.

A stop string ends the generation wherever it appears in the generated text, even when
it spans several tokens, and neither it nor anything after it is returned. While the
end of the text could still grow into a stop string, that end is held back, and it is
released as soon as the next text shows that it cannot. A client streaming the response
therefore never sees a part of a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    """Finds the first stop string in text that arrives piece by piece."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = tuple(stop)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return the text that is safe to release and whether a stop string was found.

        After a stop string is found the caller must stop feeding: the text before the
        stop string has been released and the rest is dropped.
        """
        if not self._stop:
            return text, False
        pending = self._held + text
        stop_at = _first_stop_position(pending, self._stop)
        if stop_at is not None:
            self._held = ""
            return pending[:stop_at], True

        keep = _longest_stop_prefix_suffix(pending, self._stop)
        self._held = pending[len(pending) - keep:] if keep else ""
        return pending[:len(pending) - keep], False

    def flush(self) -> str:
        """Release the held-back text at the end of a generation that no stop string ended."""
        held, self._held = self._held, ""
        return held


def _first_stop_position(text: str, stop: Sequence[str]) -> int | None:
    positions = [index for index in (text.find(item) for item in stop) if index >= 0]
    return min(positions) if positions else None


def _longest_stop_prefix_suffix(text: str, stop: Sequence[str]) -> int:
    """Return the length of the longest end of ``text`` that begins some stop string."""
    longest = 0
    for item in stop:
        for length in range(min(len(item) - 1, len(text)), longest, -1):
            if text.endswith(item[:length]):
                longest = length
                break
    return longest
