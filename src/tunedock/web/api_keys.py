"""API keys as the console shows them, and ending a sign-in."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from tunedock.accounts.identity import Principal
from tunedock.services import Services
from tunedock.store.tables import ApiKey, utc_now

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiKeyInfo:
    """An API key as its owner may see it: everything but the secret and its hash."""

    id: int
    name: str
    prefix: str
    scopes: list[str]
    models: list[str] | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > utc_now())

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyInfo:
        return cls(id=key.id, name=key.name, prefix=key.prefix, scopes=list(key.scopes),
                   models=list(key.models) if key.models is not None else None, created_at=key.created_at,
                   last_used_at=key.last_used_at, expires_at=key.expires_at, revoked_at=key.revoked_at)

def list_api_keys(services: Services, principal: Principal) -> list[ApiKeyInfo]:
    """Return the principal's own API keys (not sign-in tokens), newest first."""
    keys = [ApiKeyInfo.of(key) for key, _owner in services.accounts.list_keys(principal, False)]
    return sorted(keys, key=lambda key: key.id, reverse=True)

def revoke_api_key(services: Services, principal: Principal, key_id: int) -> ApiKeyInfo:
    return ApiKeyInfo.of(services.accounts.revoke_key(principal, key_id))

def end_sign_in(services: Services, principal: Principal) -> None:
    """Revoke the personal access token of a console session, so the cookie is useless from now on."""
    services.accounts.sign_out(principal)
