"""Incremental detokenization: generated token ids to text pieces, one token at a time.

Byte-level tokenizers can spend several tokens on one character (an emoji is four
UTF-8 bytes, often four tokens), and decoding a partial character gives U+FFFD. This
decoder releases text only once the tokens seen so far decode to whole characters, so
no piece ever ends inside a character.

Each step decodes a short window of recent tokens and releases what the newest tokens
added to the window's text. Decoding a window rather than a single token keeps the
spaces that tokenizers such as SentencePiece attach to the start of a word. The pieces
joined are the text of the whole generation, which is what a non-streamed response
returns: both paths use this decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

# What decode() gives for bytes that are not (yet) a complete UTF-8 character.
REPLACEMENT_CHARACTER = "\ufffd"

Decode = Callable[[Sequence[int]], str]


class IncrementalDetokenizer:
    """Turns token ids into text pieces that never split a character.

    ``decode`` turns a list of token ids into text, skipping special tokens.
    """

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._token_ids: list[int] = []
        # Tokens before _window_start are released and no longer decoded; tokens in
        # [_window_start, _released_end) are released but decoded again as context.
        self._window_start = 0
        self._released_end = 0

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that is now complete, possibly ''."""
        self._token_ids.append(token_id)
        released_text = self._decode(self._token_ids[self._window_start:self._released_end])
        window_text = self._decode(self._token_ids[self._window_start:])
        if len(window_text) <= len(released_text) or window_text.endswith(REPLACEMENT_CHARACTER):
            return ""
        self._window_start = self._released_end
        self._released_end = len(self._token_ids)
        return window_text[len(released_text):]

    def flush(self) -> str:
        """Return the text still held back, even an incomplete character, at the end of a generation."""
        released_text = self._decode(self._token_ids[self._window_start:self._released_end])
        window_text = self._decode(self._token_ids[self._window_start:])
        self._window_start = self._released_end = len(self._token_ids)
        return window_text[len(released_text):]
