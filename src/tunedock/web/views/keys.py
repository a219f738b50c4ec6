"""The API keys page: create a key (its secret shown once), list and revoke keys."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from tunedock.accounts.identity import SCOPES
from tunedock.accounts.service import IssuedKey
from tunedock.errors import InvalidInput, TunedockError
from tunedock.services import Services
from tunedock.store.tables import utc_now
from tunedock.web.audit import note_failure, note_target
from tunedock.web.dependencies import CheckedSessionDep, RecordId, ServicesDep, SessionDep, form_values
from tunedock.web.api_keys import list_api_keys, revoke_api_key
from tunedock.web.routing import ConsoleRoute
from tunedock.web.session import ConsoleSession, require_writer
from tunedock.web.templating import render

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

# Choices of the "Expires" field, in days; 0 means the key never expires.
EXPIRY_DAYS = ((0, "Never"), (1, "In 1 day"), (7, "In 7 days"), (30, "In 30 days"), (90, "In 90 days"),
               (365, "In 1 year"))


@router.get("/keys")
async def keys_page(request: Request, session: SessionDep, services: ServicesDep,
                    revoked: str | None = None) -> Response:
    return await _keys_page(request, session, services, revoked=revoked)


async def _keys_page(request: Request, session: ConsoleSession, services: Services,
                     issued: IssuedKey | None = None, revoked: str | None = None,
                     values: dict[str, str] | None = None, error: str | None = None,
                     status_code: int = 200) -> Response:
    keys = await run_in_threadpool(list_api_keys, services, session.principal)
    return render(request, "keys.html", session, status_code=status_code, keys=keys, issued=issued,
                  revoked=revoked, values=values or {}, error=error, scopes=SCOPES, expiry_days=EXPIRY_DAYS)


@router.post("/keys")
async def create_key(request: Request, session: CheckedSessionDep, services: ServicesDep,
                     submitted: Annotated[dict[str, str], Depends(form_values)]) -> Response:
    # The management API lets only developers and admins create keys; the console follows it.
    require_writer(session)
    form = await request.form()
    scopes = [scope for scope in form.getlist("scopes") if isinstance(scope, str)]
    models = [slug.strip() for slug in submitted.get("models", "").split(",") if slug.strip()] or None
    name = submitted.get("name", "").strip()
    try:
        if not name:
            raise InvalidInput("Enter a name for the key, for example the program that will use it.",
                               param="name")
        issued = await run_in_threadpool(services.accounts.create_api_key, session.principal, name, scopes,
                                         models, _expiry(submitted.get("expires_in_days", "")))
    except TunedockError as exc:
        if exc.status_code >= 500:
            raise
        note_failure(request, exc.message)
        return await _keys_page(request, session, services, values=submitted, error=exc.message, status_code=400)
    note_target(request, f"key {issued.prefix}")
    return await _keys_page(request, session, services, issued=issued)


def _expiry(days_text: str) -> datetime | None:
    """Return the expiry time for the "Expires" choice, in days from now; 0 or no choice means never."""
    days = int(days_text) if days_text.isascii() and days_text.isdecimal() and len(days_text) < 6 else 0
    if days == 0:
        return None
    return utc_now() + timedelta(days=days)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: RecordId, request: Request, session: CheckedSessionDep, services: ServicesDep) -> Response:
    revoked = await run_in_threadpool(revoke_api_key, services, session.principal, key_id)
    note_target(request, f"key {revoked.prefix}")
    return RedirectResponse(f"/keys?revoked={revoked.prefix}", status_code=303)
