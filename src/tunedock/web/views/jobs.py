"""A deploy or un-deploy job: its progress events, live, until it ends."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from tunedock.api.schemas import JobPublic
from tunedock.deployments import records
from tunedock.services import Services
from tunedock.store.tables import Deployment, Model
from tunedock.web.dependencies import CheckedSessionDep, RecordId, ServicesDep, SessionDep
from tunedock.web.routing import ConsoleRoute
from tunedock.web.session import require_writer
from tunedock.web.templating import render

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


@dataclass(frozen=True)
class JobView:
    job: JobPublic
    deployment: Deployment
    model: Model

    @property
    def history_url(self) -> str:
        return f"/models/{self.model.slug}/history?deployment={self.deployment.id}#details"


def load_job(services: Services, job_id: int) -> JobView:
    job, events = records.get_job(services.database, job_id)
    deployment = records.get_deployment(services.database, job.deployment_id)
    model = records.get_model_of(services.database, deployment)
    return JobView(job=JobPublic.of(job, events), deployment=deployment, model=model)


@router.get("/jobs/{job_id}")
async def job_page(job_id: RecordId, request: Request, session: SessionDep, services: ServicesDep,
                   follow: bool = False) -> Response:
    """Show a job; with ``follow`` (set after a deploy or un-deploy) a job that already succeeded opens the history."""
    view = await run_in_threadpool(load_job, services, job_id)
    if follow and view.job.status == "success":
        return RedirectResponse(view.history_url, status_code=303)
    return render(request, "job.html", session, view=view, summary=None)


@router.get("/jobs/{job_id}/status")
async def job_status(job_id: RecordId, session: SessionDep, services: ServicesDep) -> Response:
    """The job as the management API returns it, plus where to go when it ends; polled by job.js."""
    view = await run_in_threadpool(load_job, services, job_id)
    body = view.job.model_dump(mode="json")
    body["history_url"] = view.history_url
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(job_id: RecordId, session: CheckedSessionDep, services: ServicesDep) -> Response:
    require_writer(session)
    await services.deployments.cancel(session.principal, job_id)
    return RedirectResponse(f"/jobs/{job_id}?follow=true", status_code=303)
