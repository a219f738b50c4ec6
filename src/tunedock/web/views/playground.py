"""The prompt playground: run one prompt on two to four deployed models side by side.

The browser calls the inference API (/v1/...) itself, the way any OpenAI client does, so
the playground shows what real clients get, streaming included. The inference API takes
only bearer keys, never the session cookie, so the console issues the signed-in user a
short-lived API key with only the inference scope on request. A leaked playground key
stops working after ``PLAYGROUND_KEY_LIFETIME``.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tunedock.catalog.formats import EMBEDDING
from tunedock.store.tables import utc_now
from tunedock.web.audit import note_target
from tunedock.web.dependencies import CheckedSessionDep, ServicesDep, SessionDep
from tunedock.web.routing import ConsoleRoute
from tunedock.web.templating import render

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

PLAYGROUND_KEY_LIFETIME = timedelta(hours=1)
PLAYGROUND_KEY_NAME = "playground (web console)"


@router.get("/playground")
async def playground_page(request: Request, session: SessionDep, services: ServicesDep) -> Response:
    models = {model.slug: model for model in await run_in_threadpool(services.registry.list)}
    deployed = sorted(
        ({"slug": route.slug, "name": models[route.slug].name, "format": models[route.slug].format,
          "deployment": route.deployment_name}
         for route in services.routing.routes()
         if route.slug in models and models[route.slug].format != EMBEDDING),
        key=lambda item: item["name"].lower())
    return render(request, "playground.html", session, deployed=deployed, summary=None)


@router.post("/playground/key")
async def playground_key(request: Request, session: CheckedSessionDep, services: ServicesDep) -> Response:
    """Issue a short-lived inference key for the playground's requests to /v1."""
    expires_at = utc_now() + PLAYGROUND_KEY_LIFETIME
    issued = await run_in_threadpool(services.accounts.create_api_key, session.principal, PLAYGROUND_KEY_NAME,
                                     ["inference"], None, expires_at)
    note_target(request, f"key {issued.prefix} for the playground")
    return JSONResponse({"key": issued.secret, "prefix": issued.prefix, "expires_at": expires_at.isoformat()},
                        headers={"Cache-Control": "no-store"})
