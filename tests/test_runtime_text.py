"""Unit tests of the model server's text pipeline: incremental detokenization and stop strings."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from tunedock.runtime.engines.detokenizer import REPLACEMENT_CHARACTER, IncrementalDetokenizer
from tunedock.runtime.engines.stop_strings import StopStringMatcher

MULTI_BYTE_TEXTS = ["Grüße 👋 日本語!", "🇫🇷 flag, 👩‍👩‍👧 family", "Привет, мир", "naïve café"]


def byte_level_tokenizer() -> Tokenizer:
    """A byte-level BPE tokenizer without merges: every UTF-8 byte is one token."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={char: index for index, char in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def stream_pieces(tokenizer: Tokenizer, text: str) -> list[str]:
    detokenizer = IncrementalDetokenizer(lambda ids: tokenizer.decode(list(ids)))
    pieces = [detokenizer.push(token_id) for token_id in tokenizer.encode(text).ids]
    return pieces + [detokenizer.flush()]


@pytest.mark.parametrize("text", MULTI_BYTE_TEXTS)
def test_detokenizer_pieces_join_to_text(text: str) -> None:
    assert "".join(stream_pieces(byte_level_tokenizer(), text)) == text


@pytest.mark.parametrize("text", MULTI_BYTE_TEXTS)
def test_detokenizer_never_splits_a_character(text: str) -> None:
    pieces = stream_pieces(byte_level_tokenizer(), text)
    assert not any(REPLACEMENT_CHARACTER in piece for piece in pieces)


def test_detokenizer_holds_partial_character() -> None:
    tokenizer = byte_level_tokenizer()
    detokenizer = IncrementalDetokenizer(lambda ids: tokenizer.decode(list(ids)))
    first_byte, *rest = tokenizer.encode("👋").ids
    assert detokenizer.push(first_byte) == ""
    assert [detokenizer.push(token_id) for token_id in rest] == ["", "", "👋"]


def test_detokenizer_flush_releases_incomplete_bytes() -> None:
    tokenizer = byte_level_tokenizer()
    detokenizer = IncrementalDetokenizer(lambda ids: tokenizer.decode(list(ids)))
    detokenizer.push(tokenizer.encode("👋").ids[0])
    assert detokenizer.flush() == REPLACEMENT_CHARACTER


def feed_all(matcher: StopStringMatcher, pieces: list[str]) -> tuple[list[str], bool]:
    released = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        released.append(text)
        if stopped:
            return released, True
    released.append(matcher.flush())
    return released, False


def test_stop_string_spanning_pieces_is_found() -> None:
    released, stopped = feed_all(StopStringMatcher(["END"]), ["abc E", "N", "D tail"])
    assert stopped
    assert "".join(released) == "abc "


def test_possible_stop_prefix_is_held_back() -> None:
    matcher = StopStringMatcher(["END"])
    assert matcher.feed("abc EN") == ("abc ", False)


def test_held_text_released_when_no_stop_follows() -> None:
    matcher = StopStringMatcher(["END"])
    matcher.feed("abc EN")
    assert matcher.feed("ZZ") == ("ENZZ", False)


def test_held_text_released_at_flush() -> None:
    matcher = StopStringMatcher(["END"])
    matcher.feed("abc EN")
    assert matcher.flush() == "EN"


def test_earliest_of_several_stop_strings_wins() -> None:
    released, _ = feed_all(StopStringMatcher(["xyz", "b"]), ["a", "bxyz"])
    assert "".join(released) == "a"


def test_no_stop_strings_releases_everything() -> None:
    assert StopStringMatcher([]).feed("abc") == ("abc", False)
