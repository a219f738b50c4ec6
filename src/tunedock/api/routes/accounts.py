"""Routes for signing in, API keys and users."""

from __future__ import annotations

from fastapi import APIRouter

from tunedock.api.dependencies import AdminDep, ReaderDep, ServicesDep
from tunedock.api.schemas import (
    ApiKeyCreate,
    ApiKeyIssued,
    LoginRequest,
    TokenPublic,
    UserCreate,
    UserCreated,
)

router = APIRouter(tags=["accounts"])


@router.post("/api/auth/login")
def login(body: LoginRequest, services: ServicesDep) -> TokenPublic:
    return TokenPublic(token=services.accounts.login(body.username, body.password))


@router.post("/api/keys", status_code=201)
def create_api_key(body: ApiKeyCreate, services: ServicesDep, principal: ReaderDep) -> ApiKeyIssued:
    issued = services.accounts.create_api_key(principal, body.name, body.scopes, body.models, body.expires_at)
    return ApiKeyIssued(id=issued.id, name=issued.name, prefix=issued.prefix, scopes=issued.scopes,
                        key=issued.secret)


@router.post("/api/users", status_code=201)
def create_user(body: UserCreate, services: ServicesDep, principal: AdminDep) -> UserCreated:
    user_id = services.accounts.create_user(body.username, body.email, body.password, body.role)
    return UserCreated(id=user_id, username=body.username, role=body.role)
