"""The Deploy tab: every deployment parameter, pre-filled from the live version."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from tunedock.deployments.manager import DeployRequest
from tunedock.errors import InvalidParameters, TunedockError
from tunedock.web.deploy_form import DeployForm, add_parameter_errors, build_form, read_form
from tunedock.web.audit import note_failure, note_target
from tunedock.web.dependencies import CheckedSessionDep, ServicesDep, SessionDep, form_values
from tunedock.web.model_pages import ModelSummary, model_summary
from tunedock.web.routing import ConsoleRoute
from tunedock.web.session import ConsoleSession, require_writer
from tunedock.web.templating import render

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


@router.get("/models/{slug}/deploy")
async def deploy_page(slug: str, request: Request, session: SessionDep, services: ServicesDep) -> Response:
    summary = await run_in_threadpool(model_summary, services, slug)
    current = summary.live.parameters if summary.live is not None else None
    return _deploy_page(request, session, summary, build_form(summary.model, current))


def _deploy_page(request: Request, session: ConsoleSession, summary: ModelSummary, form: DeployForm,
                 status_code: int = 200) -> Response:
    source = summary.live.name if summary.live is not None else None
    return render(request, "model_deploy.html", session, status_code=status_code, summary=summary, tab="deploy",
                  form=form, prefilled_from=source)


@router.post("/models/{slug}/deploy")
async def deploy(slug: str, request: Request, session: CheckedSessionDep, services: ServicesDep,
                 submitted: Annotated[dict[str, str], Depends(form_values)]) -> Response:
    require_writer(session)
    summary = await run_in_threadpool(model_summary, services, slug)
    form = build_form(summary.model, None)
    body = read_form(form, submitted)
    if body is None:
        note_failure(request, "invalid deployment parameters in the form")
        return _deploy_page(request, session, summary, form, status_code=422)
    try:
        created = await services.deployments.deploy(
            session.principal, str(summary.model.id),
            DeployRequest(parameters=body.parameters(), description=body.description))
    except InvalidParameters as exc:
        note_failure(request, exc.message)
        add_parameter_errors(form, exc.details.get("fields", []))
        if not form.has_errors:
            form.errors.append(exc.message)
        return _deploy_page(request, session, summary, form, status_code=exc.status_code)
    except TunedockError as exc:
        if exc.status_code >= 500:
            raise
        note_failure(request, exc.message)
        form.errors.append(exc.message)
        return _deploy_page(request, session, summary, form, status_code=exc.status_code)
    note_target(request, created.deployment.name)
    return RedirectResponse(f"/jobs/{created.job.id}?follow=true", status_code=303)
