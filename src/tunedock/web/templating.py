"""The console's Jinja2 environment and the helper that renders one page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from tunedock.web import formatting
from tunedock.web.session import CSRF_FIELD, ConsoleSession

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PREFIX = "/console/static"

# Pages load scripts and styles from the console's static files only, call only this origin
# (the console and /v1), and may not be framed, which stops clickjacking of their buttons.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

templates = Jinja2Templates(directory=TEMPLATES_DIR)
templates.env.filters.update(
    duration=formatting.human_duration,
    size=formatting.human_size,
    count=formatting.human_count,
    time=formatting.time_tag,
    param=formatting.parameter_value,
    badge=formatting.status_badge,
    flatten=formatting.flatten_parameters,
)
templates.env.globals.update(static=STATIC_PREFIX, csrf_field=CSRF_FIELD)


def render(request: Request, template: str, session: ConsoleSession | None, status_code: int = 200,
           headers: dict[str, str] | None = None, **context: Any) -> Response:
    """Render a page; every page gets the session (or None) for the header and CSRF fields."""
    context["session"] = session
    response_headers = {**SECURITY_HEADERS, **(headers or {})}
    return templates.TemplateResponse(request, template, context, status_code=status_code,
                                      headers=response_headers)
