"""Writing notifications into the store's outbox, inside the transaction that causes them.

A deployment that becomes live, fails, or is taken down by the system writes its
notifications in the same commit as that state change, so a crash can never leave a
changed state without its notification, or a notification without its change.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunedock.endpoints import snippets
from tunedock.notifier import content
from tunedock.notifier.content import Notification
from tunedock.notifier.messages import make_message_id
from tunedock.store.tables import Deployment, Model, ModelWatcher, OutboxEntry, User, Webhook, utc_now

logger = logging.getLogger(__name__)

# Builds one kind's notification for a message id and recipients.
Builder = Callable[[str, tuple[str, ...]], Notification]


@dataclass(frozen=True)
class OutboxConfig:
    api_url: str  # base of the inference endpoint shown in snippets
    console_url: str
    message_id_domain: str
    server_recipients: tuple[str, ...]


class Outbox:
    """Composes a notification for each kind of event and stores one entry per channel."""

    def __init__(self, config: OutboxConfig) -> None:
        self.config = config

    def deployment_succeeded(self, session: Session, deployment: Deployment, model: Model) -> None:
        ended = deployment.ended_at or utc_now()
        curl = snippets(self.config.api_url, model.slug, model.format)["curl"]

        def build(message_id: str, recipients: tuple[str, ...]) -> Notification:
            return content.deployment_succeeded(
                deployment_id=deployment.id, deployment_name=deployment.name, model_name=model.name,
                duration_seconds=(ended - deployment.started_at).total_seconds(),
                endpoint_url=f"{self.config.api_url}/v1", curl_snippet=curl,
                console_url=self.config.console_url, recipients=recipients, message_id=message_id)

        self._store(session, deployment, model, build)

    def deployment_failed(self, session: Session, deployment: Deployment, model: Model, job_id: int,
                          reason: str) -> None:
        def build(message_id: str, recipients: tuple[str, ...]) -> Notification:
            return content.deployment_failed(
                deployment_id=deployment.id, deployment_name=deployment.name, model_name=model.name,
                job_id=job_id, reason=reason, console_url=self.config.console_url, recipients=recipients,
                message_id=message_id)

        self._store(session, deployment, model, build)

    def undeployed_by_system(self, session: Session, deployment: Deployment, model: Model) -> None:
        reason_text = deployment.undeploy_reason or ""
        reason = reason_text.split(" ", 1)[0].rstrip(":")
        if reason not in content.SYSTEM_UNDEPLOY_REASONS:
            logger.warning("no notification for system un-deploy of %s with reason %r", deployment.name, reason_text)
            return

        def build(message_id: str, recipients: tuple[str, ...]) -> Notification:
            return content.deployment_undeployed(
                deployment_id=deployment.id, deployment_name=deployment.name, model_name=model.name,
                reason=reason, reason_text=reason_text,
                started_at=deployment.undeploy_started_at or utc_now(),
                ended_at=deployment.undeploy_ended_at or utc_now(), console_url=self.config.console_url,
                recipients=recipients, message_id=message_id)

        self._store(session, deployment, model, build)

    def idle_warning(self, session: Session, deployment: Deployment, model: Model, minutes_left: int) -> None:
        def build(message_id: str, recipients: tuple[str, ...]) -> Notification:
            return content.idle_warning(
                deployment_id=deployment.id, deployment_name=deployment.name, model_name=model.name,
                minutes_left=minutes_left, console_url=self.config.console_url, recipients=recipients,
                message_id=message_id)

        self._store(session, deployment, model, build)

    def _store(self, session: Session, deployment: Deployment, model: Model, build: Builder) -> None:
        recipients = self._recipients(session, deployment, model)
        if recipients:
            self._add(session, deployment, "email", None, recipients, build)
        for webhook in session.scalars(select(Webhook).where(Webhook.model_id == model.id,
                                                             Webhook.deleted_at.is_(None))):
            self._add(session, deployment, "webhook", webhook.id, (), build)

    def _add(self, session: Session, deployment: Deployment, channel: str, webhook_id: int | None,
             recipients: tuple[str, ...], build: Builder) -> None:
        entry = OutboxEntry(kind="pending", channel=channel, deployment_id=deployment.id, webhook_id=webhook_id,
                            recipients=list(recipients), message_id=f"<unassigned-{uuid.uuid4().hex}>",
                            status="pending", attempts=0, next_attempt_at=utc_now())
        session.add(entry)
        session.flush()
        notification = build(make_message_id(entry.id, self.config.message_id_domain), recipients)
        entry.kind = notification.kind.value
        entry.message_id = notification.message_id
        entry.subject = notification.subject
        entry.text = notification.text
        entry.html = notification.html
        entry.facts = notification.facts
        logger.info("queued notification %s (%s, %s) for %s", entry.id, entry.kind, channel, deployment.name)

    def _recipients(self, session: Session, deployment: Deployment, model: Model) -> tuple[str, ...]:
        deployer = session.get(User, deployment.deployed_by_id) if deployment.deployed_by_id else None
        watchers = session.scalars(select(User).join(ModelWatcher, ModelWatcher.user_id == User.id)
                                   .where(ModelWatcher.model_id == model.id))
        people = [user for user in (deployer, *watchers) if user is not None and user.notify and not user.disabled]
        return content.collect_recipients([user.email for user in people], self.config.server_recipients)


def as_notification(entry: OutboxEntry) -> Notification:
    """Rebuild the stored notification, identical on every attempt."""
    return Notification(kind=content.NotificationKind(entry.kind), subject=entry.subject, text=entry.text,
                        html=entry.html, recipients=tuple(entry.recipients), message_id=entry.message_id,
                        facts=entry.facts)


def stored_at(entry: OutboxEntry) -> datetime:
    return entry.created_at
