"""Template filters: human durations, sizes and counts, and times the browser localizes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

_SIZE_UNITS = ("B", "KB", "MB", "GB", "TB")


def human_duration(seconds: float | None) -> str:
    """Format seconds as ``1 min 12 s``, ``3 h 5 min`` or ``0.4 s``; ``—`` when unknown."""
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    total = round(seconds)
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return _join((days, "d"), (hours, "h"))
    if hours:
        return _join((hours, "h"), (minutes, "min"))
    if minutes:
        return _join((minutes, "min"), (secs, "s"))
    return f"{secs} s"


def _join(first: tuple[int, str], second: tuple[int, str]) -> str:
    text = f"{first[0]} {first[1]}"
    return f"{text} {second[0]} {second[1]}" if second[0] else text


def human_size(size_bytes: int | None) -> str:
    """Format a byte count with decimal units (1 MB = 1,000,000 bytes)."""
    if size_bytes is None:
        return "—"
    value = float(size_bytes)
    for unit in _SIZE_UNITS:
        if value < 1000 or unit == _SIZE_UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_count(count: int | None) -> str:
    """Format a parameter count as ``22.7 M`` or ``1.1 B``."""
    if count is None:
        return "—"
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= limit:
            return f"{count / limit:.1f} {suffix}"
    return str(count)


def utc_iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def time_tag(moment: datetime | None) -> Markup:
    """Render a <time> element in UTC; console.js rewrites its text in the browser's time zone."""
    if moment is None:
        return Markup("—")
    iso = utc_iso(moment)
    utc_text = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{0}" title="{1}" data-local-time>{1}</time>').format(iso, utc_text)


def parameter_value(value: Any) -> str:
    """Show a deployment parameter as people read it: ``off`` for null, lists joined."""
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(repr(item) if isinstance(item, str) else str(item) for item in value) or "none"
    return str(value)


def flatten_parameters(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Return nested parameters as (dotted name, value) pairs, e.g. ("generation.top_p", 1.0)."""
    flat: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            flat.extend(flatten_parameters(value, f"{prefix}{key}."))
        else:
            flat.append((f"{prefix}{key}", value))
    return flat


def status_badge(status: str) -> Markup:
    return Markup('<span class="badge badge-{0}">{1}</span>').format(escape(status), status.replace("_", " "))
