"""Routes for deploying, un-deploying and reading the deployment history."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query

from tunedock.api.dependencies import ReaderDep, ServicesDep, WriterDep
from tunedock.api.schemas import (
    DeploymentAccepted,
    DeploymentCreate,
    DeploymentDetail,
    DeploymentPage,
    DeploymentSummary,
    JobPublic,
)
from tunedock.deployments import records
from tunedock.deployments.manager import DeployRequest
from tunedock.errors import InvalidInput

router = APIRouter(tags=["deployments"])

MAX_PAGE_SIZE = 200


@router.post("/api/models/{model}/deployments", status_code=202)
async def create_deployment(model: str, body: DeploymentCreate, services: ServicesDep,
                            principal: WriterDep) -> DeploymentAccepted:
    request = DeployRequest(parameters=body.parameters(), description=body.description)
    created = await services.deployments.deploy(principal, model, request)
    job, events = await asyncio.to_thread(records.get_job, services.database, created.job.id)
    return DeploymentAccepted(
        deployment=DeploymentSummary.of(created.deployment, created.model.live_deployment_id),
        job=JobPublic.of(job, events),
    )


@router.get("/api/models/{model}/deployments")
def list_deployments(model: str, services: ServicesDep, principal: ReaderDep,
                     cursor: str | None = Query(default=None, description="next_cursor of the previous page."),
                     limit: int = Query(default=50, ge=1, le=MAX_PAGE_SIZE)) -> DeploymentPage:
    before_version = _parse_cursor(cursor)
    found, deployments = records.history(services.database, model, before_version, limit)
    items = [DeploymentSummary.of(deployment, found.live_deployment_id) for deployment in deployments]
    next_cursor = str(items[-1].version) if len(items) == limit and items[-1].version > 1 else None
    return DeploymentPage(items=items, next_cursor=next_cursor)


@router.get("/api/deployments/{deployment_id}")
def get_deployment(deployment_id: int, services: ServicesDep, principal: ReaderDep) -> DeploymentDetail:
    deployment = records.get_deployment(services.database, deployment_id)
    return DeploymentDetail.of(deployment, records.get_model_of(services.database, deployment))


@router.post("/api/deployments/{deployment_id}/undeploy", status_code=202)
async def undeploy(deployment_id: int, services: ServicesDep, principal: WriterDep) -> JobPublic:
    job = await services.deployments.undeploy(principal, deployment_id)
    job, events = await asyncio.to_thread(records.get_job, services.database, job.id)
    return JobPublic.of(job, events)


@router.get("/api/jobs/{job_id}")
def get_job(job_id: int, services: ServicesDep, principal: ReaderDep) -> JobPublic:
    job, events = records.get_job(services.database, job_id)
    return JobPublic.of(job, events)


def _parse_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit():
        raise InvalidInput(f"Invalid cursor {cursor!r}; pass the next_cursor value of the previous page.",
                           param="cursor")
    return int(cursor)
