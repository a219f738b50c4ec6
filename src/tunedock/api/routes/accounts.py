"""Routes for signing in, API keys, users and the audit trail."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Query, Request

from tunedock.accounts import audit
from tunedock.accounts.audit import AuditFilter
from tunedock.api.dependencies import AdminDep, ReaderDep, RecordId, ServicesDep, WriterDep
from tunedock.api.schemas import (
    ApiKeyCreate,
    ApiKeyIssued,
    ApiKeyPublic,
    AuditEventPublic,
    AuditPage,
    LoginRequest,
    PasswordReset,
    PasswordResetDone,
    TokenPublic,
    UserCreate,
    UserCreated,
    UserPublic,
    UserUpdate,
)
from tunedock.errors import InvalidInput, PermissionDenied
from tunedock.record_ids import MAX_ID

router = APIRouter(tags=["accounts"])


@router.post("/api/auth/login")
def login(body: LoginRequest, request: Request, services: ServicesDep) -> TokenPublic:
    """Exchange a username and password for a personal access token (a Bearer token)."""
    address = request.client.host if request.client else None
    token = services.accounts.sign_in(body.username, body.password, address)
    return TokenPublic(token=token)


@router.get("/api/users/me")
def who_am_i(services: ServicesDep, principal: ReaderDep) -> UserPublic:
    return UserPublic.of(services.accounts.get_user_by_id(principal.user_id))


@router.post("/api/keys", status_code=201)
def create_api_key(body: ApiKeyCreate, request: Request, services: ServicesDep,
                   principal: WriterDep) -> ApiKeyIssued:
    """Create an API key; shown once. Admins may create one for another user with `user`."""
    request.state.audit_target = f"key {body.name!r} for {body.user or principal.username}"
    if body.user is not None and body.user != principal.username:
        if principal.role != "admin":
            raise PermissionDenied("Only admins may create API keys for other users.", code="role_required")
        issued = services.accounts.create_api_key_for(principal, body.user, body.name, body.scopes, body.models,
                                                      body.expires_at)
    else:
        issued = services.accounts.create_api_key(principal, body.name, body.scopes, body.models, body.expires_at)
    return ApiKeyIssued(id=issued.id, name=issued.name, prefix=issued.prefix, scopes=issued.scopes,
                        key=issued.secret)


@router.get("/api/keys")
def list_api_keys(services: ServicesDep, principal: ReaderDep,
                  all_users: bool = Query(default=False, alias="all", description="Every user's keys (admins).")
                  ) -> list[ApiKeyPublic]:
    if all_users and principal.role != "admin":
        raise PermissionDenied("Only admins may list every user's keys; drop all=true to list yours.",
                               code="role_required")
    return [ApiKeyPublic.of(key, owner) for key, owner in services.accounts.list_keys(principal, all_users)]


@router.delete("/api/keys/{key_id}")
def revoke_api_key(key_id: RecordId, request: Request, services: ServicesDep, principal: WriterDep) -> ApiKeyPublic:
    """Revoke a key; requests with it fail from now on."""
    key = services.accounts.revoke_key(principal, key_id)
    request.state.audit_target = f"key {key.prefix}"
    return ApiKeyPublic.of(key, services.accounts.get_user_by_id(key.user_id).username)


@router.post("/api/users", status_code=201)
def create_user(body: UserCreate, request: Request, services: ServicesDep, principal: AdminDep) -> UserCreated:
    request.state.audit_target = f"user {body.username}"
    user_id = services.accounts.create_user(body.username, body.email, body.password, body.role)
    return UserCreated(id=user_id, username=body.username, role=body.role)


@router.get("/api/users")
def list_users(services: ServicesDep, principal: AdminDep) -> list[UserPublic]:
    return [UserPublic.of(user) for user in services.accounts.list_users()]


@router.patch("/api/users/{username}")
def update_user(username: str, body: UserUpdate, request: Request, services: ServicesDep,
                principal: AdminDep) -> UserPublic:
    """Change a user's role or disable them; a disabled user's keys and tokens stop at once."""
    request.state.audit_target = f"user {username}: " + ", ".join(
        f"{field}={value}" for field, value in body.model_dump(exclude_none=True).items())
    return UserPublic.of(services.accounts.update_user(principal, username, body.role, body.disabled))


@router.post("/api/users/{username}/reset-password")
def reset_password(username: str, body: PasswordReset, services: ServicesDep,
                   principal: AdminDep) -> PasswordResetDone:
    """Set a new password (generated and returned once when not given) and end the user's sign-ins."""
    generated = services.accounts.reset_password(username, body.password)
    return PasswordResetDone(username=username, password=generated)


@router.get("/api/audit")
def list_audit_events(services: ServicesDep, principal: AdminDep,
                      user: str | None = Query(default=None, description="Username, or `system`."),
                      action: str | None = Query(default=None, description="For example deployment.deploy."),
                      target: str | None = Query(default=None, description="Part of the target."),
                      since: datetime | None = None, until: datetime | None = None,
                      cursor: int | None = Query(default=None, ge=1, le=MAX_ID,
                                                 description="next_cursor of the previous page."),
                      limit: int = Query(default=100, ge=1, le=1000)) -> AuditPage:
    """Audit events, newest first, filtered by user, action, target and time."""
    found = audit.events(services.database, AuditFilter(actor=user, action=action, target=target,
                                                        since=_as_utc(since), until=_as_utc(until),
                                                        before_id=cursor, limit=limit))
    items = [AuditEventPublic.of(event) for event in found]
    return AuditPage(items=items, next_cursor=items[-1].id if len(items) == limit else None)


def _as_utc(moment: datetime | None) -> datetime | None:
    """Read a time without an offset as UTC, as the audit trail stores it."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"Time {moment.isoformat()} is out of range; give one such as 2026-12-01T00:00:00Z.",
                           param="since/until") from exc
