"""Who hears about a model: watchers, each user's own switch, and webhooks; plus the sent log."""

from __future__ import annotations

import logging
import secrets
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from tunedock.catalog.registration import find_model
from tunedock.errors import InvalidInput, NotFound
from tunedock.store.database import Database
from tunedock.store.tables import Model, ModelWatcher, OutboxEntry, User, Webhook, utc_now

logger = logging.getLogger(__name__)

STATUSES = ("pending", "sending", "sent", "failed")


def watch(database: Database, model_reference: str, user_id: int) -> Model:
    with database.session() as session:
        model = find_model(session, model_reference)
        exists = session.scalars(select(ModelWatcher).where(ModelWatcher.model_id == model.id,
                                                            ModelWatcher.user_id == user_id)).first()
        if exists is None:
            session.add(ModelWatcher(model_id=model.id, user_id=user_id))
            logger.info("user %s watches model %s", user_id, model.slug)
        return model


def unwatch(database: Database, model_reference: str, user_id: int) -> Model:
    with database.session() as session:
        model = find_model(session, model_reference)
        session.execute(delete(ModelWatcher).where(ModelWatcher.model_id == model.id,
                                                   ModelWatcher.user_id == user_id))
        logger.info("user %s no longer watches model %s", user_id, model.slug)
        return model


def watched_models(database: Database, user_id: int) -> list[str]:
    with database.session() as session:
        query = (select(Model.slug).join(ModelWatcher, ModelWatcher.model_id == Model.id)
                 .where(ModelWatcher.user_id == user_id).order_by(Model.slug))
        return list(session.scalars(query))


def set_notify(database: Database, user_id: int, enabled: bool) -> User:
    with database.session() as session:
        user = session.get_one(User, user_id)
        user.notify = enabled
        logger.info("notifications for user %s turned %s", user.username, "on" if enabled else "off")
        return user


def add_webhook(database: Database, model_reference: str, url: str, secret: str | None,
                username: str) -> tuple[Webhook, str]:
    """Register a webhook; return it with its signing secret, generated when not given."""
    _check_url(url)
    secret = secret or secrets.token_urlsafe(32)
    with database.session() as session:
        model = find_model(session, model_reference)
        webhook = Webhook(model_id=model.id, url=url, secret=secret, created_by=username)
        session.add(webhook)
        session.flush()
        logger.info("webhook %s added to model %s by %s", webhook.id, model.slug, username)
        return webhook, secret


def list_webhooks(database: Database, model_reference: str) -> list[Webhook]:
    with database.session() as session:
        model = find_model(session, model_reference)
        return list(session.scalars(select(Webhook).where(Webhook.model_id == model.id,
                                                          Webhook.deleted_at.is_(None)).order_by(Webhook.id)))


def delete_webhook(database: Database, webhook_id: int) -> None:
    with database.session() as session:
        webhook = session.get(Webhook, webhook_id)
        if webhook is None or webhook.deleted_at is not None:
            raise NotFound(f"Webhook {webhook_id} not found; GET /api/models/MODEL/webhooks lists them.",
                           code="webhook_not_found")
        webhook.deleted_at = utc_now()


def recent_notifications(database: Database, status: str | None, limit: int) -> list[OutboxEntry]:
    with database.session() as session:
        return _recent(session, status, limit)


def _recent(session: Session, status: str | None, limit: int) -> list[OutboxEntry]:
    query = select(OutboxEntry)
    if status is not None:
        query = query.where(OutboxEntry.status == status)
    return list(session.scalars(query.order_by(OutboxEntry.id.desc()).limit(limit)))


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(f"Invalid webhook URL {url!r}; use an absolute http:// or https:// URL.", param="url")
