"""Routes for registering and reading models, and a model's endpoint."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from tunedock.api.dependencies import ReaderDep, ServicesDep, WriterDep
from tunedock.api.schemas import EndpointPublic, ModelCreate, ModelList, ModelPublic, SnippetKey, Snippets
from tunedock.deployments import records
from tunedock.endpoints import snippets
from tunedock.errors import AuthenticationFailed, InvalidInput, PermissionDenied
from tunedock.services import Services
from tunedock.store.tables import Model

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


@router.post("/{model}/endpoint")
def get_endpoint_with_key(model: str, body: SnippetKey, services: ServicesDep,
                          principal: ReaderDep) -> EndpointPublic:
    """The endpoint with one of the caller's own API keys written into the snippets."""
    try:
        owner = services.accounts.authenticate(body.api_key)
    except AuthenticationFailed as exc:
        raise InvalidInput("The api_key in the body is not a valid, active API key; pass one of your own keys "
                           "(`tunedock keys list`).", code="invalid_api_key", param="api_key") from exc
    found = services.registry.get(model)
    if owner.user_id != principal.user_id:
        raise PermissionDenied("That API key belongs to another user; fill in one of your own keys.",
                               code="not_key_owner", param="api_key")
    if "inference" not in owner.scopes or not owner.may_call_model(found.slug):
        raise PermissionDenied(f"API key {owner.key_prefix}... may not call {found.slug!r}; choose a key with the "
                               "inference scope for this model.", code="model_not_allowed", param="api_key")
    return _endpoint(services, found, body.api_key)


@router.get("/{model}/endpoint")
def get_endpoint(model: str, services: ServicesDep, principal: ReaderDep) -> EndpointPublic:
    return _endpoint(services, services.registry.get(model), None)


def _endpoint(services: Services, found: Model, api_key: str | None) -> EndpointPublic:
    route = services.routing.get(found.slug)
    base_url = services.settings.base_url
    return EndpointPublic(
        url=f"{base_url}/v1", model=found.slug,
        live_deployment=route.deployment_name if route is not None else None,
        snippets=Snippets(**snippets(base_url, found.slug, found.format, api_key=api_key)),
    )
