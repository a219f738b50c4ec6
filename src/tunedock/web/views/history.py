"""The Deployment History tab: versions, one version's details, un-deploy and redeploy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from tunedock.api.schemas import DeploymentDetail
from tunedock.deployments import records
from tunedock.errors import NotFound, TunedockError
from tunedock.record_ids import MAX_ID
from tunedock.services import Services
from tunedock.store.tables import Deployment
from tunedock.web.audit import note_failure, note_target
from tunedock.web.dependencies import CheckedSessionDep, RecordId, ServicesDep, SessionDep, form_values
from tunedock.web.model_pages import ModelSummary, model_summary
from tunedock.web.routing import ConsoleRoute
from tunedock.web.session import ConsoleSession, require_writer
from tunedock.web.templating import render

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

PAGE_SIZE = 50


@dataclass(frozen=True)
class HistoryPage:
    summary: ModelSummary
    deployments: list[Deployment]
    detail: DeploymentDetail | None
    older_than: int | None  # the `before` value of the next page, if there is one


def load_history(services: Services, slug: str, selected: int | None, before: int | None) -> HistoryPage:
    summary = model_summary(services, slug)
    _, deployments = records.history(services.database, str(summary.model.id), before, PAGE_SIZE)
    detail = None
    if selected is not None:
        record = records.deployment_record(services.database, selected)
        if record.model.id != summary.model.id:
            raise NotFound(f"Deployment {selected} is not a version of model {summary.model.name!r}.",
                           code="deployment_not_found")
        detail = DeploymentDetail.of(record)
    last = deployments[-1].version if deployments else None
    older_than = last if len(deployments) == PAGE_SIZE and last is not None and last > 1 else None
    return HistoryPage(summary=summary, deployments=deployments, detail=detail, older_than=older_than)


@router.get("/models/{slug}/history")
async def history_page(slug: str, request: Request, session: SessionDep, services: ServicesDep,
                       deployment: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
                       before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None) -> Response:
    page = await run_in_threadpool(load_history, services, slug, deployment, before)
    return _history_page(request, session, page)


def _history_page(request: Request, session: ConsoleSession, page: HistoryPage, error: str | None = None,
                  files_changed: bool = False, status_code: int = 200) -> Response:
    return render(request, "model_history.html", session, status_code=status_code, summary=page.summary,
                  tab="history", page=page, error=error, files_changed=files_changed)


@router.get("/deployments/{deployment_id}")
async def deployment_page(deployment_id: RecordId, session: SessionDep, services: ServicesDep) -> Response:
    """Open a version's details in its model's history (the link in notification emails)."""
    record = await run_in_threadpool(records.deployment_record, services.database, deployment_id)
    return RedirectResponse(_detail_url(record.model.slug, deployment_id), status_code=303)


def _detail_url(slug: str, deployment_id: int) -> str:
    return f"/models/{slug}/history?deployment={deployment_id}#details"


@router.post("/deployments/{deployment_id}/undeploy")
async def undeploy(deployment_id: RecordId, request: Request, session: CheckedSessionDep,
                   services: ServicesDep) -> Response:
    require_writer(session)
    try:
        job = await services.deployments.undeploy(session.principal, deployment_id)
    except TunedockError as exc:
        return await _action_failed(request, session, services, deployment_id, exc)
    note_target(request, f"deployment {deployment_id} (job {job.id})")
    return RedirectResponse(f"/jobs/{job.id}?follow=true", status_code=303)


@router.post("/deployments/{deployment_id}/redeploy")
async def redeploy(deployment_id: RecordId, request: Request, session: CheckedSessionDep, services: ServicesDep,
                   submitted: Annotated[dict[str, str], Depends(form_values)]) -> Response:
    require_writer(session)
    allow_changed_files = submitted.get("allow_changed_files") == "true"
    try:
        created = await services.deployments.redeploy(session.principal, deployment_id, None, allow_changed_files)
    except TunedockError as exc:
        return await _action_failed(request, session, services, deployment_id, exc)
    note_target(request, f"{created.deployment.name} (parameters of deployment {deployment_id})")
    return RedirectResponse(f"/jobs/{created.job.id}?follow=true", status_code=303)


async def _action_failed(request: Request, session: ConsoleSession, services: Services, deployment_id: int,
                         exc: TunedockError) -> Response:
    """Show why an un-deploy or redeploy was not started, on the version's details."""
    if exc.status_code >= 500 or exc.code == "deployment_not_found":
        raise exc
    note_failure(request, exc.message)
    record = await run_in_threadpool(records.deployment_record, services.database, deployment_id)
    page = await run_in_threadpool(load_history, services, str(record.model.id), deployment_id, None)
    return _history_page(request, session, page, error=exc.message,
                         files_changed=exc.code == "model_files_changed", status_code=exc.status_code)
