"""Server-side defaults for generation parameters that a request leaves unset.

Each parameter takes the first value found in:

1. the request;
2. ``--generation-defaults``, a JSON object with any of temperature, max_tokens,
   top_p, top_k and stop;
3. the model's ``generation_config.json``, for the keys it sets explicitly:
   ``max_new_tokens`` becomes max_tokens, ``do_sample: false`` becomes temperature 0,
   and ``do_sample: true`` brings its temperature, top_p and top_k;
4. the built-in values, which follow the OpenAI API: temperature 1.0, top_p 1.0,
   no top-k filtering and no stop strings. ``max_tokens`` is 16, the OpenAI default
   for completions, on the chat route as well, so that a request without
   ``max_tokens`` cannot keep a CPU busy for minutes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunedock.errors import InvalidInput
from tunedock.runtime.validation import read_integer, read_number, read_stop, reject_unknown_fields

logger = logging.getLogger(__name__)

MAX_TEMPERATURE = 2.0
DEFAULT_FIELDS = frozenset({"temperature", "max_tokens", "top_p", "top_k", "stop"})


@dataclass(frozen=True, slots=True)
class GenerationDefaults:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    stop: tuple[str, ...] = ()


def parse_generation_defaults(text: str) -> dict[str, Any]:
    """Parse ``--generation-defaults`` into the parameters it sets; raise ValueError naming a bad key."""
    try:
        values: Any = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"must be a JSON object with keys from {', '.join(sorted(DEFAULT_FIELDS))}")

    try:
        reject_unknown_fields(values, DEFAULT_FIELDS)
        return _read_overrides(values)
    except InvalidInput as error:
        raise ValueError(error.message) from error


def read_model_generation_defaults(model_path: Path) -> dict[str, Any]:
    """Read the defaults that ``generation_config.json`` in ``model_path`` sets explicitly.

    A missing file gives no defaults. Values that are not valid request values are
    logged and left out, because the file is advice and must not stop the model loading.
    """
    config = _read_generation_config(model_path / "generation_config.json")
    translated: dict[str, Any] = {}
    if "max_new_tokens" in config:
        translated["max_tokens"] = config["max_new_tokens"]
    if config.get("do_sample") is False:
        translated["temperature"] = 0.0
    elif config.get("do_sample") is True:
        translated |= {key: config[key] for key in ("temperature", "top_p", "top_k") if key in config}

    defaults: dict[str, Any] = {}
    for key, value in translated.items():
        try:
            defaults |= _read_overrides({key: value})
        except InvalidInput as error:
            logger.warning("Ignoring %s from %s/generation_config.json: %s", key, model_path, error.message)
    return defaults


def resolve_generation_defaults(*overrides: Mapping[str, Any]) -> GenerationDefaults:
    """Apply ``overrides`` over the built-in defaults; later mappings win."""
    defaults = GenerationDefaults()
    for values in overrides:
        defaults = replace(defaults, **values)
    return defaults


def _read_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    read = {
        "temperature": read_number(values, "temperature", 0.0, MAX_TEMPERATURE),
        "top_p": read_number(values, "top_p", 0.0, 1.0),
        "top_k": read_integer(values, "top_k", 0),
        "max_tokens": read_integer(values, "max_tokens", 1),
        "stop": read_stop(values),
    }
    return {key: value for key, value in read.items() if value is not None}


def _read_generation_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("Ignoring unreadable %s: %s", path, error)
        return {}
    return config if isinstance(config, dict) else {}
