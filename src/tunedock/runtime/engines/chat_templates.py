"""Chat templates: rendering a conversation into the prompt a model was fine-tuned on.

The template is the Jinja text in ``chat_template.jinja`` when the model directory has
one, else the ``chat_template`` entry of ``tokenizer_config.json``: a string, or a list
of ``{"name", "template"}`` objects of which the one named ``default`` is used. Models
without one get the plain template of ``chat_prompt``.

The template sees ``messages`` (``role`` and ``content`` of each), ``add_generation_prompt``
(always true) and the special tokens that ``tokenizer_config.json`` names, such as
``bos_token`` and ``eos_token``. Each of those may be written as a string or as an object
whose ``content`` holds the string. It runs in Jinja's sandbox with the ``tojson``
filter, ``raise_exception(message)`` and ``strftime_now(format)``, the helpers that
templates on the Hugging Face hub rely on.

A special token typed inside a message (``<|im_end|>``, say) is encoded as plain text,
so a message cannot forge a turn boundary: before rendering, such tokens in message
contents are wrapped in private-use markers, and the rendered prompt is encoded piece
by piece, with the marked tokens encoded literally.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tunedock.errors import InvalidInput
from tunedock.runtime.engines.base import ChatMessage, ModelLoadFailed
from tunedock.runtime.engines.chat_prompt import render_plain_chat_prompt
from tunedock.runtime.engines.tokenization import TextTokenizer, read_tokenizer_config

logger = logging.getLogger(__name__)

TEMPLATE_FILE = "chat_template.jinja"
# Characters of Unicode's private use area, which no tokenizer gives a meaning.
_MARK_START, _MARK_END = "\ue000", "\ue001"


class ChatTemplate:
    """A compiled chat template and the special tokens it may refer to."""

    def __init__(self, source: str, special_tokens: dict[str, str], origin: str) -> None:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                    extensions=[loopcontrols])
        environment.filters["tojson"] = _to_json
        environment.globals["raise_exception"] = _raise_template_error
        environment.globals["strftime_now"] = _strftime_now
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise ModelLoadFailed(f"the chat template in {origin} is not valid Jinja: {error} "
                                  f"(line {error.lineno})") from error
        self.special_tokens = special_tokens
        self.origin = origin

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        try:
            return self._template.render(messages=list(messages), add_generation_prompt=True,
                                         **self.special_tokens)
        except jinja2.TemplateError as error:
            raise InvalidInput(f"The model's chat template rejected the messages: {error}",
                               param="messages", code="invalid_messages") from error


def load_chat_template(model_path: Path) -> ChatTemplate | None:
    """Read the chat template of the model in ``model_path``, or None when it has none."""
    config = read_tokenizer_config(model_path)
    template_file = model_path / TEMPLATE_FILE
    if template_file.is_file():
        source, origin = template_file.read_text(encoding="utf-8"), str(template_file)
    else:
        source = _template_from_config(config.get("chat_template"), model_path)
        origin = str(model_path / "tokenizer_config.json")
    if not source:
        return None
    template = ChatTemplate(source, read_special_tokens(model_path, config), origin)
    logger.info("Chat template from %s", origin)
    return template


def read_special_tokens(model_path: Path, config: dict[str, Any] | None = None) -> dict[str, str]:
    """Return the named special tokens (``bos_token``, ``eos_token``, ...) as strings.

    ``special_tokens_map.json`` is read first and ``tokenizer_config.json`` wins; in both
    a token is a string or an object with the string in ``content``.
    """
    tokens: dict[str, str] = {}
    map_file = model_path / "special_tokens_map.json"
    sources = [_read_json_object(map_file) if map_file.is_file() else {},
               config if config is not None else read_tokenizer_config(model_path)]
    for source in sources:
        for key, value in source.items():
            text = special_token_text(value)
            if key.endswith("_token") and text is not None:
                tokens[key] = text
    return tokens


def special_token_text(value: Any) -> str | None:
    """Return the text of a special token written as a string or as ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def encode_chat(template: ChatTemplate | None, messages: Sequence[ChatMessage], tokenizer: TextTokenizer) -> list[int]:
    """Render ``messages`` with ``template`` (or the plain template) and encode the prompt."""
    if template is None:
        return tokenizer.encode(render_plain_chat_prompt(messages), add_special_tokens=True)

    pattern = _special_token_pattern(tokenizer.special_tokens)
    conversation = [{"role": message.role, "content": _mark_special_tokens(message.content, pattern)}
                    for message in messages]
    rendered = template.render(conversation)
    # re.split with one group alternates: text, marked token, text, ..., text.
    pieces = re.split(f"{_MARK_START}(.*?){_MARK_END}", rendered, flags=re.DOTALL)
    token_ids: list[int] = []
    for index, piece in enumerate(pieces):
        piece = piece.replace(_MARK_START, "").replace(_MARK_END, "")
        if not piece:
            continue
        if index % 2:
            token_ids += tokenizer.encode_literal(piece)
        else:
            token_ids += tokenizer.encode(piece, add_special_tokens=False)
    return token_ids


def _template_from_config(value: Any, model_path: Path) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list):
        named = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
        template = named.get("default")
        if isinstance(template, str):
            return template
    raise ModelLoadFailed(f"chat_template in {model_path / 'tokenizer_config.json'} must be a string or a "
                          "list of {\"name\", \"template\"} objects with one named 'default'")


def _special_token_pattern(special_tokens: frozenset[str]) -> re.Pattern[str] | None:
    if not special_tokens:
        return None
    # Longest first, so that a token that starts another does not match in its place.
    alternatives = sorted(special_tokens, key=len, reverse=True)
    return re.compile("|".join(re.escape(token) for token in alternatives))


def _mark_special_tokens(content: str, pattern: re.Pattern[str] | None) -> str:
    # Markers already in the text are dropped, so they cannot be used to mark a token.
    content = content.replace(_MARK_START, "").replace(_MARK_END, "")
    if pattern is None:
        return content
    return pattern.sub(lambda match: f"{_MARK_START}{match.group(0)}{_MARK_END}", content)


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("Ignoring unreadable %s: %s", path, error)
        return {}
    return value if isinstance(value, dict) else {}


def _to_json(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _raise_template_error(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(format_string: str) -> str:
    return datetime.now().strftime(format_string)
