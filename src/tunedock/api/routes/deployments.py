"""Routes for deploying, redeploying, un-deploying, jobs and the deployment history."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Literal

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from tunedock.api.dependencies import ReaderDep, RecordId, ServicesDep, WriterDep
from tunedock.api.schemas import (
    DeploymentAccepted,
    DeploymentCreate,
    DeploymentDetail,
    DeploymentDiff,
    DeploymentPage,
    DeploymentRef,
    DeploymentSummary,
    FieldChangePublic,
    JobEventPublic,
    JobPublic,
    RedeployRequest,
    UsagePublic,
)
from tunedock.deployments import records
from tunedock.deployments.comparison import changes_between, compared_fields
from tunedock.deployments.manager import DeployRequest
from tunedock.errors import InvalidInput
from tunedock.record_ids import is_record_id
from tunedock.services import Services
from tunedock.store.tables import Deployment

router = APIRouter(tags=["deployments"])

MAX_PAGE_SIZE = 200
EVENT_POLL_SECONDS = 0.2
KEEP_ALIVE_SECONDS = 15.0
StatusFilter = Literal["deploying", "success", "failed"]


@router.post("/api/models/{model}/deployments", status_code=202)
async def create_deployment(model: str, body: DeploymentCreate, request: Request, services: ServicesDep,
                            principal: WriterDep) -> DeploymentAccepted:
    deploy_request = DeployRequest(parameters=body.parameters(), description=body.description)
    created = await services.deployments.deploy(principal, model, deploy_request)
    request.state.audit_target = created.deployment.name
    return await _accepted(services, created)


@router.post("/api/deployments/{deployment_id}/redeploy", status_code=202)
async def redeploy(deployment_id: RecordId, request: Request, services: ServicesDep, principal: WriterDep,
                   body: RedeployRequest | None = None) -> DeploymentAccepted:
    """Deploy a new version of the model with this version's parameters (a rollback)."""
    body = body or RedeployRequest()
    created = await services.deployments.redeploy(principal, deployment_id, body.description,
                                                  body.allow_changed_files)
    request.state.audit_target = f"{created.deployment.name} (parameters of deployment {deployment_id})"
    return await _accepted(services, created)


async def _accepted(services: Services, created: records.NewDeployment) -> DeploymentAccepted:
    job, events = await asyncio.to_thread(records.get_job, services.database, created.job.id)
    return DeploymentAccepted(
        deployment=DeploymentSummary.of(created.deployment, created.model.live_deployment_id),
        job=JobPublic.of(job, events),
    )


@router.get("/api/models/{model}/deployments")
def list_deployments(model: str, services: ServicesDep, principal: ReaderDep,
                     cursor: str | None = Query(default=None, description="next_cursor of the previous page."),
                     limit: int = Query(default=50, ge=1, le=MAX_PAGE_SIZE),
                     status: StatusFilter | None = Query(default=None, description="Only deployments with "
                                                         "this status.")) -> DeploymentPage:
    before_version = _parse_cursor(cursor)
    found, deployments = records.history(services.database, model, before_version, limit, status)
    items = [DeploymentSummary.of(deployment, found.live_deployment_id) for deployment in deployments]
    next_cursor = str(items[-1].version) if len(items) == limit and items[-1].version > 1 else None
    return DeploymentPage(items=items, next_cursor=next_cursor)


@router.get("/api/models/{model}/deployments/{version}")
def get_version(model: str, version: RecordId, services: ServicesDep, principal: ReaderDep) -> DeploymentDetail:
    """One version of a model's history, by its number."""
    deployment = records.find_version(services.database, model, version)
    return DeploymentDetail.of(records.deployment_record(services.database, deployment.id))


@router.get("/api/deployments/{deployment_id}")
def get_deployment(deployment_id: RecordId, services: ServicesDep, principal: ReaderDep) -> DeploymentDetail:
    detail = DeploymentDetail.of(records.deployment_record(services.database, deployment_id))
    detail.usage = UsagePublic.of(services.metrics.usage(deployment_id))
    return detail


@router.get("/api/deployments/{a}/diff/{b}")
def diff_deployments(a: RecordId, b: RecordId, services: ServicesDep, principal: ReaderDep) -> DeploymentDiff:
    """Compare two versions of one model field by field; `before` is a's value, `after` b's."""
    first = records.deployment_record(services.database, a)
    second = records.deployment_record(services.database, b)
    if first.model.id != second.model.id:
        raise InvalidInput(f"Deployments {first.deployment.name} and {second.deployment.name} belong to "
                           "different models; compare two versions of one model.", code="different_models")
    changes = changes_between(first.deployment, second.deployment)
    changed = {change.field for change in changes}
    return DeploymentDiff(
        model=first.model.slug, a=_ref(first.deployment), b=_ref(second.deployment),
        changes=[FieldChangePublic.of(change) for change in changes],
        unchanged=[name for name in compared_fields(first.deployment) if name not in changed],
    )


def _ref(deployment: Deployment) -> DeploymentRef:
    return DeploymentRef(id=deployment.id, name=deployment.name, version=deployment.version)


@router.post("/api/deployments/{deployment_id}/undeploy", status_code=202)
async def undeploy(deployment_id: RecordId, request: Request, services: ServicesDep, principal: WriterDep) -> JobPublic:
    job = await services.deployments.undeploy(principal, deployment_id)
    job, events = await asyncio.to_thread(records.get_job, services.database, job.id)
    request.state.audit_target = f"deployment {deployment_id} (job {job.id})"
    return JobPublic.of(job, events)


@router.get("/api/jobs/{job_id}")
def get_job(job_id: RecordId, services: ServicesDep, principal: ReaderDep) -> JobPublic:
    job, events = records.get_job(services.database, job_id)
    return JobPublic.of(job, events)


@router.post("/api/jobs/{job_id}/cancel")
async def cancel_job(job_id: RecordId, services: ServicesDep, principal: WriterDep) -> JobPublic:
    """Cancel a deploy in progress; it ends `failed` with reason "cancelled by <user>"."""
    await services.deployments.cancel(principal, job_id)
    job, events = await asyncio.to_thread(records.get_job, services.database, job_id)
    return JobPublic.of(job, events)


@router.get("/api/jobs/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def stream_job_events(job_id: RecordId, services: ServicesDep, principal: ReaderDep,
                            last_event_id: str | None = Header(default=None)) -> StreamingResponse:
    """Stream a job's progress events as server-sent events, then one `end` event with the job.

    Each `progress` event carries its sequence number as its id; a client that reconnects
    with `Last-Event-ID` receives only the events after it.
    """
    await asyncio.to_thread(records.get_job, services.database, job_id)  # 404 before streaming starts
    after = int(last_event_id) if last_event_id and is_record_id(last_event_id) else 0
    return StreamingResponse(_job_events(services, job_id, after), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _job_events(services: Services, job_id: int, after: int) -> AsyncIterator[bytes]:
    quiet_since = time.monotonic()
    while True:
        job, events = await asyncio.to_thread(records.get_job, services.database, job_id)
        for event in events:
            if event.sequence > after:
                after = event.sequence
                data = orjson.dumps(JobEventPublic.of(event).model_dump(mode="json"))
                yield b"id: %d\nevent: progress\ndata: %s\n\n" % (event.sequence, data)
                quiet_since = time.monotonic()
        if job.status != "in_progress":
            yield b"event: end\ndata: %s\n\n" % orjson.dumps(JobPublic.of(job, events).model_dump(mode="json"))
            return
        if time.monotonic() - quiet_since >= KEEP_ALIVE_SECONDS:
            # A comment line keeps proxies and client read timeouts from closing a quiet stream.
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(EVENT_POLL_SECONDS)


def _parse_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not is_record_id(cursor):
        raise InvalidInput(f"Invalid cursor {cursor!r}; pass the next_cursor value of the previous page.",
                           param="cursor")
    return int(cursor)
