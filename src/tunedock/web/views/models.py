"""The models table, registering a model and a model's overview."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from tunedock.errors import TunedockError
from tunedock.services import Services
from tunedock.web.audit import note_failure, note_target
from tunedock.web.dependencies import CheckedSessionDep, ServicesDep, SessionDep, form_values
from tunedock.web.model_pages import model_files, model_summaries, model_summary
from tunedock.web.routing import ConsoleRoute
from tunedock.web.session import ConsoleSession, require_writer
from tunedock.web.templating import render

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

REGISTER_FIELDS = ("name", "path", "description", "tags", "base_model", "technique")
# Errors without a param that still belong to one field of the register form.
CODE_FIELDS = {"model_exists": "name"}


@router.get("/models")
async def models_page(request: Request, session: SessionDep, services: ServicesDep) -> Response:
    summaries = await run_in_threadpool(model_summaries, services)
    return render(request, "models.html", session, summaries=summaries)


@router.get("/models/new")
def register_page(request: Request, session: SessionDep, services: ServicesDep) -> Response:
    require_writer(session)
    return _register_form(request, session, services, {})


def _register_form(request: Request, session: ConsoleSession, services: Services, values: dict[str, str],
                   errors: dict[str, str] | None = None, status_code: int = 200) -> Response:
    roots = [str(root) for root in services.registry.allowed_roots]
    return render(request, "model_register.html", session, status_code=status_code, values=values,
                  errors=errors or {}, roots=roots)


@router.post("/models")
async def register_model(request: Request, session: CheckedSessionDep, services: ServicesDep,
                         submitted: Annotated[dict[str, str], Depends(form_values)]) -> Response:
    require_writer(session)
    values = {name: submitted.get(name, "").strip() for name in REGISTER_FIELDS}
    tags = [tag.strip() for tag in values["tags"].split(",") if tag.strip()]
    note_target(request, f"{values['name']} from {values['path']}")
    try:
        model = await run_in_threadpool(
            services.registry.register, session.principal, values["name"], values["path"],
            values["description"], tags, values["base_model"] or None, values["technique"] or None)
    except TunedockError as exc:
        if exc.status_code >= 500:
            raise
        note_failure(request, exc.message)
        field = exc.param or CODE_FIELDS.get(exc.code, "form")
        return _register_form(request, session, services, values, {field: exc.message}, status_code=exc.status_code)
    return RedirectResponse(f"/models/{model.slug}", status_code=303)


@router.get("/models/{slug}")
async def overview_page(slug: str, request: Request, session: SessionDep, services: ServicesDep) -> Response:
    summary = await run_in_threadpool(model_summary, services, slug)
    files, files_note = await run_in_threadpool(model_files, summary.model)
    return render(request, "model_overview.html", session, summary=summary, tab="overview", files=files,
                  files_note=files_note)
