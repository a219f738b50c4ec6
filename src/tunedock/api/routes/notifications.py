"""Routes for notifications: the sent log, watching models, webhooks and keep-alive."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from tunedock.api.dependencies import ReaderDep, RecordId, ServicesDep, WriterDep
from tunedock.deployments import records
from tunedock.errors import Conflict
from tunedock.notifier import subscriptions
from tunedock.store.tables import OutboxEntry, Webhook

router = APIRouter(tags=["notifications"])


class NotificationPublic(BaseModel):
    id: int
    kind: str
    channel: str
    deployment_id: int | None
    recipients: list[str]
    subject: str
    message_id: str
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None

    @classmethod
    def of(cls, entry: OutboxEntry) -> NotificationPublic:
        return cls(id=entry.id, kind=entry.kind, channel=entry.channel, deployment_id=entry.deployment_id,
                   recipients=entry.recipients, subject=entry.subject, message_id=entry.message_id,
                   status=entry.status, attempts=entry.attempts, last_error=entry.last_error,
                   created_at=entry.created_at, next_attempt_at=entry.next_attempt_at, sent_at=entry.sent_at)


class NotificationList(BaseModel):
    items: list[NotificationPublic]


class WatchState(BaseModel):
    model: str
    watching: bool


class NotifySwitch(BaseModel):
    enabled: bool


class WebhookCreate(BaseModel):
    url: str = Field(min_length=1, max_length=2000)
    secret: str | None = Field(default=None, min_length=16, max_length=128,
                               description="Signing secret; generated when omitted.")


class WebhookPublic(BaseModel):
    id: int
    url: str
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, webhook: Webhook) -> WebhookPublic:
        return cls(id=webhook.id, url=webhook.url, created_by=webhook.created_by, created_at=webhook.created_at)


class WebhookIssued(WebhookPublic):
    secret: str = Field(description="Signs every delivery (X-Tunedock-Signature); shown only here.")


@router.get("/api/notifications")
def list_notifications(services: ServicesDep, principal: ReaderDep,
                       status: Literal["pending", "sending", "sent", "failed"] | None = None,
                       limit: int = Query(default=50, ge=1, le=500)) -> NotificationList:
    """Recent notifications, newest first, with their delivery status."""
    entries = subscriptions.recent_notifications(services.database, status, limit)
    return NotificationList(items=[NotificationPublic.of(entry) for entry in entries])


@router.put("/api/models/{model}/watch")
def watch_model(model: str, services: ServicesDep, principal: ReaderDep) -> WatchState:
    """Receive this model's notifications as well as its deployers do."""
    found = subscriptions.watch(services.database, model, principal.user_id)
    return WatchState(model=found.slug, watching=True)


@router.delete("/api/models/{model}/watch")
def unwatch_model(model: str, services: ServicesDep, principal: ReaderDep) -> WatchState:
    found = subscriptions.unwatch(services.database, model, principal.user_id)
    return WatchState(model=found.slug, watching=False)


@router.put("/api/users/me/notifications")
def set_my_notifications(body: NotifySwitch, services: ServicesDep, principal: ReaderDep) -> NotifySwitch:
    """Turn your own notification emails on or off."""
    user = subscriptions.set_notify(services.database, principal.user_id, body.enabled)
    return NotifySwitch(enabled=user.notify)


@router.post("/api/models/{model}/webhooks", status_code=201)
def add_webhook(model: str, body: WebhookCreate, services: ServicesDep, principal: WriterDep) -> WebhookIssued:
    webhook, secret = subscriptions.add_webhook(services.database, model, body.url, body.secret,
                                                principal.username)
    return WebhookIssued(**WebhookPublic.of(webhook).model_dump(), secret=secret)


@router.get("/api/models/{model}/webhooks")
def list_webhooks(model: str, services: ServicesDep, principal: ReaderDep) -> list[WebhookPublic]:
    return [WebhookPublic.of(webhook) for webhook in subscriptions.list_webhooks(services.database, model)]


@router.delete("/api/webhooks/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: RecordId, services: ServicesDep, principal: WriterDep) -> None:
    subscriptions.delete_webhook(services.database, webhook_id)


@router.post("/api/deployments/{deployment_id}/keep-alive")
async def keep_alive(deployment_id: RecordId, services: ServicesDep, principal: ReaderDep) -> dict[str, object]:
    """Reset a live deployment's idle clock, as a request to its endpoint would."""
    deployment = await asyncio.to_thread(records.get_deployment, services.database, deployment_id)
    if not services.deployments.keep_alive(deployment_id):
        raise Conflict(f"Deployment {deployment.name} is not live; there is no idle clock to reset.",
                       code="deployment_not_live")
    return {"deployment": deployment.name, "kept_alive": True}
