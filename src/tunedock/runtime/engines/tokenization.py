"""One tokenizer interface for the engines, over a transformers tokenizer or a bare ``tokenizers`` one.

The ctranslate2 engine runs without transformers and torch, so it reads
``tokenizer.json`` with the ``tokenizers`` library; the transformers engine uses the
tokenizer that transformers loads. Both are wrapped in ``TextTokenizer``. Calls are
serialized by a lock, because a tokenizer switches settings while it encodes special
tokens as plain text, and the worker thread decodes while request handlers encode.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class TextTokenizer(Protocol):
    @property
    def special_tokens(self) -> frozenset[str]:
        """Texts of the special (control) tokens, such as ``</s>`` or ``<|im_end|>``."""

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """Encode ``text``; special-token texts in it become their special tokens."""

    def encode_literal(self, text: str) -> list[int]:
        """Encode ``text`` with special-token texts in it encoded as plain text."""

    def decode(self, token_ids: Sequence[int]) -> str:
        """Decode ``token_ids``, leaving out special tokens."""


class TransformersTokenizer:
    """A ``TextTokenizer`` over a tokenizer loaded by transformers."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self._special_tokens = frozenset(str(token) for token in tokenizer.all_special_tokens) | frozenset(
            str(token) for token in tokenizer.added_tokens_decoder.values() if getattr(token, "special", False))

    @property
    def special_tokens(self) -> frozenset[str]:
        return self._special_tokens

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        with self._lock:
            return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def encode_literal(self, text: str) -> list[int]:
        with self._lock:
            return list(self._tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))

    def decode(self, token_ids: Sequence[int]) -> str:
        with self._lock:
            return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=True))


class FastTokenizer:
    """A ``TextTokenizer`` over ``tokenizer.json``, read with the ``tokenizers`` library only.

    Decoding applies ``clean_up_tokenization_spaces`` when ``tokenizer_config.json``
    sets it, as transformers does.
    """

    def __init__(self, model_path: Path) -> None:
        from tokenizers import Tokenizer

        path = model_path / "tokenizer.json"
        self._tokenizer = Tokenizer.from_file(str(path))
        self._literal = Tokenizer.from_file(str(path))
        self._literal.encode_special_tokens = True
        self._lock = threading.Lock()
        config = read_tokenizer_config(model_path)
        self._clean_up_spaces = config.get("clean_up_tokenization_spaces") is True
        added = self._tokenizer.get_added_tokens_decoder().values()
        self._special_tokens = frozenset(token.content for token in added if token.special)

    @property
    def special_tokens(self) -> frozenset[str]:
        return self._special_tokens

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tokenizer.id_to_token(token_id)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        with self._lock:
            return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_literal(self, text: str) -> list[int]:
        with self._lock:
            return self._literal.encode(text, add_special_tokens=False).ids

    def decode(self, token_ids: Sequence[int]) -> str:
        with self._lock:
            text = self._tokenizer.decode(list(token_ids), skip_special_tokens=True)
        return clean_up_tokenization_spaces(text) if self._clean_up_spaces else text


def clean_up_tokenization_spaces(text: str) -> str:
    """Remove the spaces that word-level tokenizers leave before punctuation and English contractions."""
    for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                           (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(spaced, joined)
    return text


def read_tokenizer_config(model_path: Path) -> dict[str, Any]:
    """Return ``tokenizer_config.json`` as a dict, or {} when it is missing or unreadable."""
    path = model_path / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("Ignoring unreadable %s: %s", path, error)
        return {}
    return config if isinstance(config, dict) else {}
