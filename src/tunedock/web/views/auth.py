"""Signing in and out of the console."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from tunedock.errors import AuthenticationFailed, RateLimited
from tunedock.web.dependencies import CheckedSessionDep, ServicesDep, form_values
from tunedock.web.api_keys import end_sign_in
from tunedock.web.routing import ConsoleRoute
from tunedock.web.session import (
    ConsoleSession,
    clear_session_cookie,
    optional_session,
    safe_next,
    set_session_cookie,
    set_sign_in_cookie,
    sign_in_nonce,
    sign_in_nonce_matches,
)
from tunedock.web.templating import render

logger = logging.getLogger(__name__)

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

OptionalSessionDep = Annotated[ConsoleSession | None, Depends(optional_session)]


@router.get("/")
def home() -> Response:
    return RedirectResponse("/models", status_code=303)


@router.get("/sign-in")
def sign_in_page(request: Request, session: OptionalSessionDep, next: str | None = None) -> Response:
    if session is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _sign_in_form(request, safe_next(next))


def _sign_in_form(request: Request, next_path: str, username: str = "", error: str | None = None,
                  status_code: int = 200) -> Response:
    nonce = sign_in_nonce(request)
    response = render(request, "sign_in.html", None, status_code=status_code, next=next_path,
                      username=username, error=error, nonce=nonce)
    set_sign_in_cookie(request, response, nonce)
    return response


@router.post("/sign-in")
async def sign_in(request: Request, services: ServicesDep,
                  values: Annotated[dict[str, str], Depends(form_values)]) -> Response:
    next_path = safe_next(values.get("next"))
    username = values.get("username", "").strip()
    if not sign_in_nonce_matches(request, values.get("csrf_token")):
        logger.warning("sign-in form for %r rejected: missing or wrong CSRF token", username)
        return _sign_in_form(request, next_path, username, "The sign-in form expired. Please try again.",
                             status_code=403)
    # The same limits and audit events as POST /api/auth/login.
    address = request.client.host if request.client else None
    try:
        token = await run_in_threadpool(services.accounts.sign_in, username, values.get("password", ""), address,
                                        "console")
    except (RateLimited, AuthenticationFailed) as exc:
        return _sign_in_form(request, next_path, username, exc.message, status_code=exc.status_code)
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookie(request, response, token)
    return response


@router.post("/sign-out")
async def sign_out(session: CheckedSessionDep, services: ServicesDep) -> Response:
    await run_in_threadpool(end_sign_in, services, session.principal)
    response = RedirectResponse("/sign-in", status_code=303)
    clear_session_cookie(response)
    return response
