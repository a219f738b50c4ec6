"""The Model Endpoint tab: the inference URL and copyable cURL, Python and JavaScript calls."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tunedock.endpoints import KEY_VARIABLE, snippets
from tunedock.web.dependencies import ServicesDep, SessionDep
from tunedock.web.model_pages import model_summary
from tunedock.web.routing import ConsoleRoute
from tunedock.web.templating import render

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

SNIPPET_TABS = (("curl", "cURL"), ("python", "Python"), ("javascript", "JavaScript"))


@router.get("/models/{slug}/endpoint")
async def endpoint_page(slug: str, request: Request, session: SessionDep, services: ServicesDep) -> Response:
    summary = await run_in_threadpool(model_summary, services, slug)
    base_url = services.settings.base_url
    model = summary.model
    route = services.routing.get(model.slug)
    return render(request, "model_endpoint.html", session, summary=summary, tab="endpoint",
                  url=f"{base_url}/v1", snippets=snippets(base_url, model.slug, model.format),
                  tabs=SNIPPET_TABS, key_variable=KEY_VARIABLE,
                  serving=route.deployment_name if route is not None else None)
