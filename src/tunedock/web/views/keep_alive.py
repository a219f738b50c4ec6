"""The keep-alive page that idle-warning emails link to."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tunedock.deployments import records
from tunedock.services import Services
from tunedock.web.audit import note_failure
from tunedock.web.dependencies import CheckedSessionDep, RecordId, ServicesDep, SessionDep
from tunedock.web.routing import ConsoleRoute
from tunedock.web.session import ConsoleSession
from tunedock.web.templating import render

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


@router.get("/deployments/{deployment_id}/keep-alive")
async def keep_alive_page(deployment_id: RecordId, request: Request, session: SessionDep,
                          services: ServicesDep) -> Response:
    return await _page(request, session, services, deployment_id, outcome=None)


@router.post("/deployments/{deployment_id}/keep-alive")
async def keep_alive(deployment_id: RecordId, request: Request, session: CheckedSessionDep,
                     services: ServicesDep) -> Response:
    await run_in_threadpool(records.get_deployment, services.database, deployment_id)  # 404 when unknown
    if services.deployments.keep_alive(deployment_id):
        return await _page(request, session, services, deployment_id, outcome="kept")
    note_failure(request, "the deployment is not live")
    return await _page(request, session, services, deployment_id, outcome="not_live", status_code=409)


async def _page(request: Request, session: ConsoleSession, services: Services, deployment_id: int,
                outcome: str | None, status_code: int = 200) -> Response:
    record = await run_in_threadpool(records.deployment_record, services.database, deployment_id)
    live = record.model.live_deployment_id == deployment_id
    idle_after = record.deployment.parameters.get("scaling", {}).get("idle_undeploy_after")
    return render(request, "keep_alive.html", session, status_code=status_code, record=record, live=live,
                  idle_after=idle_after, outcome=outcome, summary=None)
