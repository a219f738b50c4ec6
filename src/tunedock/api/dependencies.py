"""Request dependencies: the shared services and the authenticated principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tunedock.accounts.identity import Principal
from tunedock.errors import AuthenticationFailed, PermissionDenied
from tunedock.record_ids import MAX_ID
from tunedock.services import Services

_bearer = HTTPBearer(auto_error=False, description="An API key or a personal access token.")

WRITER_ROLES = ("developer", "admin")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def bearer_secret(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise AuthenticationFailed("Missing API key or token; send the header `Authorization: Bearer <key>`.",
                                   code="missing_api_key")
    return credentials.credentials


def current_principal(
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    principal = services.accounts.authenticate(bearer_secret(credentials))
    request.state.principal = principal  # for the audit trail
    if "management" not in principal.scopes:
        raise PermissionDenied(f"API key {principal.key_prefix}... lacks the 'management' scope; "
                               "use a key created with that scope.", code="scope_missing")
    return principal


def writer_principal(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if principal.role not in WRITER_ROLES:
        raise PermissionDenied(f"User {principal.username} has role {principal.role!r}; this action needs "
                               "the developer or admin role.", code="role_required")
    return principal


def admin_principal(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if principal.role != "admin":
        raise PermissionDenied(f"User {principal.username} has role {principal.role!r}; this action needs "
                               "the admin role.", code="role_required")
    return principal


ServicesDep = Annotated[Services, Depends(get_services)]
ReaderDep = Annotated[Principal, Depends(current_principal)]
WriterDep = Annotated[Principal, Depends(writer_principal)]
AdminDep = Annotated[Principal, Depends(admin_principal)]
# A path id that can name no row fails validation (422) instead of reaching the store.
RecordId = Annotated[int, Path(ge=1, le=MAX_ID, description="A row id, 1 to 2147483647.")]
