"""Routes for registering and reading models, and a model's endpoint."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from tunedock.api.dependencies import ReaderDep, ServicesDep, WriterDep
from tunedock.api.schemas import EndpointPublic, ModelCreate, ModelList, ModelPublic, Snippets
from tunedock.deployments import records
from tunedock.endpoints import snippets

router = APIRouter(prefix="/api/models", tags=["models"])


@router.post("", status_code=201)
def register_model(body: ModelCreate, request: Request, services: ServicesDep, principal: WriterDep) -> ModelPublic:
    request.state.audit_target = f"{body.name} from {body.path}"
    model = services.registry.register(principal, body.name, body.path, body.description, body.tags,
                                       body.base_model, body.technique)
    return ModelPublic.of(model)


@router.get("")
def list_models(services: ServicesDep, principal: ReaderDep) -> ModelList:
    return ModelList(items=[ModelPublic.of(model) for model in services.registry.list()])


@router.get("/{model}")
def get_model(model: str, services: ServicesDep, principal: ReaderDep) -> ModelPublic:
    return ModelPublic.of(services.registry.get(model))


@router.delete("/{model}")
async def delete_model(model: str, services: ServicesDep, principal: WriterDep) -> ModelPublic:
    """Delete a model that is not live; its deployment history stays readable."""
    deleted = await asyncio.to_thread(records.delete_model, services.database, model, principal.username)
    return ModelPublic.of(deleted)


@router.get("/{model}/endpoint")
def get_endpoint(model: str, services: ServicesDep, principal: ReaderDep) -> EndpointPublic:
    found = services.registry.get(model)
    route = services.routing.get(found.slug)
    base_url = services.settings.base_url
    return EndpointPublic(
        url=f"{base_url}/v1", model=found.slug,
        live_deployment=route.deployment_name if route is not None else None,
        snippets=Snippets(**snippets(base_url, found.slug, found.format)),
    )
