"""The audit trail: an append-only record of every state-changing action."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from tunedock.accounts.identity import SYSTEM, Principal
from tunedock.store.database import Database
from tunedock.store.tables import AuditEvent

logger = logging.getLogger(__name__)

MAX_DETAIL = 2000


@dataclass(frozen=True)
class Actor:
    """The one who acted: a signed-in principal, a named user that is not signed in, or the system."""

    name: str
    user_id: int | None = None
    key_prefix: str | None = None

    @classmethod
    def of(cls, principal: Principal) -> Actor:
        return cls(name=principal.username, user_id=principal.user_id, key_prefix=principal.key_prefix)


SYSTEM_ACTOR = Actor(name=SYSTEM)


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None
    limit: int = 100


def record(database: Database, actor: Actor, action: str, target: str, outcome: str,
           status_code: int | None = None, detail: str | None = None, client_address: str | None = None) -> None:
    """Append one audit event; a failure to write it is logged, never raised to the caller."""
    try:
        with database.session() as session:
            session.add(AuditEvent(user_id=actor.user_id, actor=actor.name, key_prefix=actor.key_prefix,
                                   action=action, target=target[:255], outcome=outcome, status_code=status_code,
                                   detail=(detail or None) and detail[:MAX_DETAIL], client_address=client_address))
    except Exception:  # noqa: BLE001 - the action itself already happened; keep serving
        logger.exception("could not write the audit event %s %s by %s (%s)", action, target, actor.name, outcome)


def events(database: Database, query: AuditFilter) -> list[AuditEvent]:
    """Return matching events, newest first."""
    statement = select(AuditEvent)
    if query.actor is not None:
        statement = statement.where(AuditEvent.actor == query.actor)
    if query.action is not None:
        statement = statement.where(AuditEvent.action == query.action)
    if query.target is not None:
        statement = statement.where(AuditEvent.target.contains(query.target))
    if query.since is not None:
        statement = statement.where(AuditEvent.created_at >= query.since)
    if query.until is not None:
        statement = statement.where(AuditEvent.created_at < query.until)
    if query.before_id is not None:
        statement = statement.where(AuditEvent.id < query.before_id)
    with database.session() as session:
        return list(session.scalars(statement.order_by(AuditEvent.id.desc()).limit(query.limit)))
