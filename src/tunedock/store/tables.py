"""Stored rows. API shapes live in ``tunedock.api.schemas``; these are the table models."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database; SQLite drops the offset otherwise."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored; use UTC-aware values")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(254))
    display_name: Mapped[str] = mapped_column(String(128), default="")
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Whether the user receives notification emails (deploy outcomes, system un-deploys).
    notify: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    last_login_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ApiKey(Base):
    """An API key or a personal access token; only the SHA-256 of the secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))  # "api_key" or "personal_token"
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    slug: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    source_path: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(32))
    architecture: Mapped[str] = mapped_column(String(128))
    base_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    technique: Mapped[str | None] = mapped_column(String(64), nullable=True)
    parameter_count: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    context_length: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The last version number handed out; incremented in one UPDATE so numbers never repeat.
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    # Plain integer, not a foreign key: models and deployments would reference each other.
    live_deployment_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    deleted_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        UniqueConstraint("model_id", "version", name="uq_deployments_model_version"),
        # History filtered by status reads one page, not every row of a long history.
        Index("ix_deployments_model_status_version", "model_id", "status", "version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(160))
    description: Mapped[str] = mapped_column(Text, default="")
    # The resolved parameters, every default filled in: exactly what the replicas ran with.
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    files_hash: Mapped[str | None] = mapped_column(String(80), nullable=True)
    engine_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Set on a redeploy of an earlier version: the deployment whose parameters were copied.
    origin_deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"), nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # deploying, success, failed
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    deployed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    deployed_by: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    undeployed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    undeploy_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    undeploy_started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    undeploy_ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))  # deploy, undeploy
    status: Mapped[str] = mapped_column(String(16))  # in_progress, success, failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str] = mapped_column(String(64))
    cancel_requested_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "sequence", name="uq_job_events_job_sequence"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    sequence: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)


class Replica(Base):
    __tablename__ = "replicas"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # starting, ready, stopped, failed
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    log_path: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    stopped_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ModelWatcher(Base):
    """A user who receives the notifications of a model's deployments besides the deployer."""

    __tablename__ = "model_watchers"
    __table_args__ = (UniqueConstraint("model_id", "user_id", name="uq_model_watchers_model_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)


class Webhook(Base):
    """A URL that receives a model's notifications as signed JSON POSTs."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(128))  # kept in clear: it signs every delivery
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class OutboxEntry(Base):
    """One notification to deliver by email or webhook, written with the change that caused it.

    The rendered content is stored, so every retry sends the same message with the same
    Message-ID. Status: ``pending`` (waiting for its next attempt), ``sending`` (an attempt
    is under way), ``sent`` or ``failed`` (for good, with ``last_error`` saying why).
    """

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16))  # email, webhook
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"), nullable=True, index=True)
    webhook_id: Mapped[int | None] = mapped_column(ForeignKey("webhooks.id"), nullable=True)
    recipients: Mapped[list[str]] = mapped_column(JSON, default=list)
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str] = mapped_column(Text, default="")
    facts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class AuditEvent(Base):
    """One state-changing action: who did what to which target, and how it ended.

    Rows are only ever inserted; on SQLite and PostgreSQL a trigger rejects updates and
    deletes.
    """

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # null for the system
    actor: Mapped[str] = mapped_column(String(64), index=True)  # username, or "system"
    key_prefix: Mapped[str | None] = mapped_column(String(32), nullable=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(255), default="")
    outcome: Mapped[str] = mapped_column(String(16))  # success, denied, failed
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    client_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
