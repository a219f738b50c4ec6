"""Plain-text and HTML rendering of a notification's body.

Both forms come from one ``MessageBody`` so that they always carry the same facts. Every
value is escaped in the HTML form, because model and deployment names are user input.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime, timezone

_LABEL_WIDTH = 12


@dataclass(frozen=True)
class Link:
    label: str
    url: str


@dataclass(frozen=True)
class MessageBody:
    """The content of a notification: an opening sentence, labelled facts, a code block, links."""

    opening: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    code_caption: str | None = None
    code: str | None = None
    links: list[Link] = field(default_factory=list)
    closing: str | None = None


def render_text(body: MessageBody) -> str:
    paragraphs = [body.opening]
    if body.facts:
        paragraphs.append("\n".join(f"{label + ':':<{_LABEL_WIDTH}} {value}" for label, value in body.facts))
    if body.code is not None:
        paragraphs.append(f"{body.code_caption or 'Code'}:\n\n{body.code}")
    for link in body.links:
        paragraphs.append(f"{link.label}: {link.url}")
    if body.closing:
        paragraphs.append(body.closing)
    return "\n\n".join(paragraphs) + "\n"


def render_html(title: str, body: MessageBody) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        f'<head><meta charset="utf-8"><title>{_escape(title)}</title></head>',
        '<body style="font-family: sans-serif; font-size: 14px; color: #222;">',
        f"<p>{_escape(body.opening)}</p>",
    ]
    if body.facts:
        parts.append(_facts_table(body.facts))
    if body.code is not None:
        parts.append(f"<p>{_escape(body.code_caption or 'Code')}:</p>")
        parts.append(f'<pre style="background: #f4f4f4; padding: 8px;">{_escape(body.code)}</pre>')
    for link in body.links:
        parts.append(f'<p><a href="{_escape(link.url)}">{_escape(link.label)}</a></p>')
    if body.closing:
        parts.append(f'<p style="color: #666;">{_escape(body.closing)}</p>')
    parts.extend(["</body>", "</html>"])
    return "\n".join(parts) + "\n"


def _facts_table(facts: list[tuple[str, str]]) -> str:
    rows = [
        f'<tr><th align="left" style="padding-right: 16px;">{_escape(label)}</th><td>{_escape(value)}</td></tr>'
        for label, value in facts
    ]
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _escape(value: str) -> str:
    return html.escape(value, quote=True)


def format_duration(seconds: float) -> str:
    """Format a duration for people: ``45 s``, ``2 min 14 s``, ``1 h 5 min``."""
    total = max(0, round(seconds))
    hours, remainder = divmod(total, 3600)
    minutes, secs = divmod(remainder, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def format_timestamp(moment: datetime) -> str:
    """Format a moment in UTC, such as ``2025-03-01 14:05:09 UTC``."""
    return as_utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


def as_utc(moment: datetime) -> datetime:
    # A naive value is taken as UTC, the time zone that the store writes.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def one_line(value: str) -> str:
    """Collapse line breaks and other whitespace runs, for email headers and subjects."""
    return " ".join(value.split())
