"""Typed readers for fields of a JSON request body.

Each reader returns the field's value, None when the field is absent or null, or
raises InvalidInput naming the field, its bad value and the accepted values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tunedock.errors import InvalidInput

MAX_STOP_STRINGS = 4


def read_number(body: Mapping[str, Any], name: str, minimum: float, maximum: float) -> float | None:
    """Read a number in [minimum, maximum]; JSON booleans are rejected."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid_type(name, value, "a number")
    if not minimum <= value <= maximum:
        raise InvalidInput(f"{name} must be between {minimum:g} and {maximum:g}, got {value!r}.",
                           param=name, code="invalid_value")
    return float(value)


def read_integer(body: Mapping[str, Any], name: str, minimum: int, maximum: int | None = None) -> int | None:
    """Read an integer of at least ``minimum`` (and at most ``maximum`` when given)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(name, value, "an integer")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise InvalidInput(f"{name} must be at least {minimum}{upper}, got {value}.",
                           param=name, code="invalid_value")
    return value


def read_string(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid_type(name, value, "a string")
    return value


def read_stop(body: Mapping[str, Any], name: str = "stop") -> tuple[str, ...] | None:
    """Read ``stop``: one non-empty string, or a list of up to 4 of them."""
    value = body.get(name)
    if value is None:
        return None
    strings = [value] if isinstance(value, str) else value
    if not isinstance(strings, list) or not all(isinstance(item, str) for item in strings):
        raise _invalid_type(name, value, f"a string or a list of up to {MAX_STOP_STRINGS} strings")
    if len(strings) > MAX_STOP_STRINGS:
        raise InvalidInput(f"{name} has {len(strings)} strings; at most {MAX_STOP_STRINGS} are allowed.",
                           param=name, code="invalid_value")
    if any(item == "" for item in strings):
        raise InvalidInput(f"{name} must not contain an empty string.", param=name, code="invalid_value")
    return tuple(strings)


def reject_unsupported(body: Mapping[str, Any], name: str, neutral_values: tuple[Any, ...],
                       feature: str) -> None:
    """Raise InvalidInput when ``name`` is set to anything but null or one of ``neutral_values``.

    The comparison is type-strict, so ``n: true`` does not pass as ``n: 1``.
    """
    value = body.get(name)
    if value is None:
        return
    if any(type(value) is type(neutral) and value == neutral for neutral in neutral_values):
        return
    raise InvalidInput(
        f"{name}={_show(value)} is not supported by this model server: {feature}. "
        f"Remove {name} from the request.",
        param=name, code="unsupported_parameter")


def reject_unknown_fields(body: Mapping[str, Any], known: frozenset[str]) -> None:
    """Raise InvalidInput for the first field that is not in ``known``."""
    for name in body:
        if name not in known:
            raise InvalidInput(f"Unrecognized request argument supplied: {name}.",
                               param=name, code="unknown_parameter")


def _invalid_type(name: str, value: Any, expected: str) -> InvalidInput:
    return InvalidInput(f"{name} must be {expected}, got {_show(value)}.", param=name, code="invalid_type")


def _show(value: Any) -> str:
    # JSON spelling, shortened, so the message quotes what the client sent.
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
