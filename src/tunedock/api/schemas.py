"""Request and response shapes of the management API, separate from the stored rows."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunedock.deployments.parameters import (
    DeploymentParameters,
    GenerationDefaults,
    Hardware,
    Optimization,
    Scaling,
)
from tunedock.deployments.comparison import FieldChange, changes_between
from tunedock.deployments.records import DeploymentRecord, duration_seconds
from tunedock.deployments.usage import DeploymentUsage
from tunedock.store.tables import ApiKey, AuditEvent, Deployment, Job, JobEvent, Model, User


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCreate(_Request):
    name: str = Field(min_length=1, max_length=128)
    path: str = Field(min_length=1, description="Local Hugging Face model directory on the server.")
    description: str = Field(default="", max_length=4000)
    tags: list[str] = Field(default_factory=list)
    base_model: str | None = Field(default=None, max_length=256)
    technique: str | None = Field(default=None, max_length=64, description="For example full, lora, qlora.")


class ModelPublic(BaseModel):
    id: int
    name: str
    slug: str
    description: str
    tags: list[str]
    path: str
    format: str
    architecture: str
    base_model: str | None
    technique: str | None
    parameter_count: int
    size_bytes: int
    context_length: int | None
    live_deployment_id: int | None
    created_at: datetime
    deleted_at: datetime | None = None
    deleted_by: str | None = None

    @classmethod
    def of(cls, model: Model) -> ModelPublic:
        return cls(id=model.id, name=model.name, slug=model.slug, description=model.description,
                   tags=model.tags, path=model.source_path, format=model.format,
                   architecture=model.architecture, base_model=model.base_model,
                   technique=model.technique, parameter_count=model.parameter_count,
                   size_bytes=model.size_bytes, context_length=model.context_length,
                   live_deployment_id=model.live_deployment_id, created_at=model.created_at,
                   deleted_at=model.deleted_at, deleted_by=model.deleted_by)


class ModelList(BaseModel):
    items: list[ModelPublic]


class DeploymentCreate(_Request):
    description: str = Field(default="", max_length=4000)
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)
    scaling: Scaling = Field(default_factory=Scaling)
    hardware: Hardware = Field(default_factory=Hardware)
    optimization: Optimization = Field(default_factory=Optimization)

    def parameters(self) -> DeploymentParameters:
        return DeploymentParameters(generation=self.generation, scaling=self.scaling,
                                    hardware=self.hardware, optimization=self.optimization)


class DeploymentSummary(BaseModel):
    id: int
    model_id: int
    name: str
    version: int
    status: str
    live: bool
    failure_reason: str | None
    deployed_by: str
    started_at: datetime
    ended_at: datetime | None
    duration_seconds: float | None
    undeployed: bool
    undeploy_reason: str | None

    @classmethod
    def of(cls, deployment: Deployment, live_deployment_id: int | None) -> DeploymentSummary:
        return cls(id=deployment.id, model_id=deployment.model_id, name=deployment.name,
                   version=deployment.version, status=deployment.status,
                   live=deployment.id == live_deployment_id, failure_reason=deployment.failure_reason,
                   deployed_by=deployment.deployed_by, started_at=deployment.started_at,
                   ended_at=deployment.ended_at,
                   duration_seconds=duration_seconds(deployment.started_at, deployment.ended_at),
                   undeployed=deployment.undeploy_started_at is not None,
                   undeploy_reason=deployment.undeploy_reason)


class DeploymentPage(BaseModel):
    items: list[DeploymentSummary]
    next_cursor: str | None


class FieldChangePublic(BaseModel):
    field: str
    before: Any
    after: Any

    @classmethod
    def of(cls, change: FieldChange) -> FieldChangePublic:
        return cls(field=change.field, before=change.before, after=change.after)


class DeploymentGeneral(BaseModel):
    name: str
    model: str
    version: int
    description: str
    tags: list[str]
    technique: str | None
    optimization: dict[str, Any]
    engine_version: str | None
    files_hash: str | None
    parameters: dict[str, Any]
    hardware: dict[str, Any]
    duration_seconds: float | None
    redeploy_of: str | None = Field(description="The version whose parameters this one copied, if any.")
    compared_with: str | None = Field(description="The previous version, which `changes` compares against.")
    changes: list[FieldChangePublic]


class DeploymentSection(BaseModel):
    deployed_by: str
    started_at: datetime
    ended_at: datetime | None
    duration_seconds: float | None
    status: str
    live: bool
    failure_reason: str | None
    replica_failures: int = Field(description="Replica processes that crashed or failed to start, restarts "
                                              "included.")
    replicas: list[ReplicaPublic]


class ReplicaPublic(BaseModel):
    """One model-server process that the deployment started, a restarted one included."""

    index: int
    status: str = Field(description="starting, ready, stopped, or failed (it crashed or did not start).")
    pid: int | None
    started_at: datetime
    stopped_at: datetime | None


class UndeploymentSection(BaseModel):
    undeployed_by: str
    reason: str
    started_at: datetime
    ended_at: datetime | None


class UsagePublic(BaseModel):
    """Inference through the gateway since the server process started."""

    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    mean_latency_seconds: float | None
    latency_histogram: dict[str, int] = Field(description="Requests per latency bucket, `le_<seconds>`.")

    @classmethod
    def of(cls, usage: DeploymentUsage) -> UsagePublic:
        mean = usage.latency_seconds_total / usage.requests if usage.requests else None
        return cls(requests=usage.requests, errors=usage.errors, prompt_tokens=usage.prompt_tokens,
                   completion_tokens=usage.completion_tokens, mean_latency_seconds=mean,
                   latency_histogram=usage.ordered_latency_buckets())


class DeploymentDetail(BaseModel):
    id: int
    general: DeploymentGeneral
    deployment: DeploymentSection
    undeployment: UndeploymentSection | None
    usage: UsagePublic | None = None

    @classmethod
    def of(cls, record: DeploymentRecord) -> DeploymentDetail:
        deployment, model, previous = record.deployment, record.model, record.previous
        duration = duration_seconds(deployment.started_at, deployment.ended_at)
        changes = changes_between(previous, deployment) if previous is not None else []
        general = DeploymentGeneral(
            name=deployment.name, model=model.slug, version=deployment.version,
            description=deployment.description, tags=model.tags, technique=model.technique,
            optimization=deployment.parameters.get("optimization", {}),
            engine_version=deployment.engine_version, files_hash=deployment.files_hash,
            parameters=deployment.parameters, hardware=deployment.parameters.get("hardware", {}),
            duration_seconds=duration,
            redeploy_of=record.origin.name if record.origin is not None else None,
            compared_with=previous.name if previous is not None else None,
            changes=[FieldChangePublic.of(change) for change in changes],
        )
        section = DeploymentSection(
            deployed_by=deployment.deployed_by, started_at=deployment.started_at,
            ended_at=deployment.ended_at, duration_seconds=duration, status=deployment.status,
            live=model.live_deployment_id == deployment.id, failure_reason=deployment.failure_reason,
            replica_failures=sum(1 for replica in record.replicas if replica.status == "failed"),
            replicas=[ReplicaPublic(index=replica.index, status=replica.status, pid=replica.pid,
                                    started_at=replica.started_at, stopped_at=replica.stopped_at)
                      for replica in record.replicas],
        )
        undeployment = None
        if deployment.undeploy_started_at is not None:
            undeployment = UndeploymentSection(
                undeployed_by=deployment.undeployed_by or "", reason=deployment.undeploy_reason or "",
                started_at=deployment.undeploy_started_at, ended_at=deployment.undeploy_ended_at,
            )
        return cls(id=deployment.id, general=general, deployment=section, undeployment=undeployment)


class DeploymentRef(BaseModel):
    id: int
    name: str
    version: int


class DeploymentDiff(BaseModel):
    model: str
    a: DeploymentRef
    b: DeploymentRef
    changes: list[FieldChangePublic] = Field(description="Fields that differ; `before` is a's value.")
    unchanged: list[str]


class RedeployRequest(_Request):
    description: str | None = Field(default=None, max_length=4000)
    allow_changed_files: bool = Field(
        default=False, description="Redeploy even if the model files changed since that version ran.")


class JobEventPublic(BaseModel):
    sequence: int
    stage: str
    message: str
    created_at: datetime

    @classmethod
    def of(cls, event: JobEvent) -> JobEventPublic:
        return cls(sequence=event.sequence, stage=event.stage, message=event.message,
                   created_at=event.created_at)


class JobPublic(BaseModel):
    id: int
    deployment_id: int
    action: str
    status: str
    error: str | None
    created_by: str
    cancel_requested_by: str | None
    created_at: datetime
    finished_at: datetime | None
    events: list[JobEventPublic]

    @classmethod
    def of(cls, job: Job, events: list[JobEvent]) -> JobPublic:
        return cls(id=job.id, deployment_id=job.deployment_id, action=job.action, status=job.status,
                   error=job.error, created_by=job.created_by, cancel_requested_by=job.cancel_requested_by,
                   created_at=job.created_at, finished_at=job.finished_at,
                   events=[JobEventPublic.of(event) for event in events])


class DeploymentAccepted(BaseModel):
    deployment: DeploymentSummary
    job: JobPublic


class Snippets(BaseModel):
    curl: str
    python: str
    javascript: str


class SnippetKey(_Request):
    api_key: str = Field(min_length=1, max_length=256, description="One of your API keys, written into the snippets.")


class EndpointPublic(BaseModel):
    url: str
    model: str
    live_deployment: str | None
    snippets: Snippets


class LoginRequest(_Request):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class TokenPublic(BaseModel):
    token: str


class ApiKeyCreate(_Request):
    name: str = Field(min_length=1, max_length=128)
    scopes: list[str] = Field(default_factory=lambda: ["inference"])
    models: list[str] | None = Field(default=None, description="Model slugs the key may call; all when omitted.")
    expires_at: datetime | None = Field(default=None, description="When the key stops working; a time without "
                                        "an offset is read as UTC. Must be in the future.")
    user: str | None = Field(default=None, description="Owner of the key, if not the caller (admins only).")

    @field_validator("expires_at")
    @classmethod
    def _future_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        try:
            value = value.astimezone(timezone.utc)
        except (OverflowError, ValueError) as exc:
            raise ValueError("is out of range; give a date such as 2027-01-31T00:00:00Z") from exc
        if value <= datetime.now(timezone.utc):
            raise ValueError("is in the past; a key must expire after it is created")
        return value


class ApiKeyPublic(BaseModel):
    id: int
    name: str
    prefix: str
    owner: str
    scopes: list[str]
    models: list[str] | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey, owner: str) -> ApiKeyPublic:
        return cls(id=key.id, name=key.name, prefix=key.prefix, owner=owner, scopes=key.scopes, models=key.models,
                   created_at=key.created_at, last_used_at=key.last_used_at, expires_at=key.expires_at,
                   revoked_at=key.revoked_at)


class ApiKeyIssued(BaseModel):
    id: int
    name: str
    prefix: str
    scopes: list[str]
    key: str = Field(description="The secret; shown only in this response.")


class UserCreate(_Request):
    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    email: str = Field(min_length=3, max_length=254)
    password: str = Field(min_length=1, max_length=1024)
    role: str = "developer"


class UserPublic(BaseModel):
    id: int
    username: str
    display_name: str
    email: str
    role: str
    disabled: bool
    notify: bool
    created_at: datetime
    last_login_at: datetime | None

    @classmethod
    def of(cls, user: User) -> UserPublic:
        return cls(id=user.id, username=user.username, display_name=user.display_name, email=user.email,
                   role=user.role, disabled=user.disabled, notify=user.notify, created_at=user.created_at,
                   last_login_at=user.last_login_at)


class UserUpdate(_Request):
    role: Literal["viewer", "developer", "admin"] | None = None
    disabled: bool | None = None


class PasswordReset(_Request):
    password: str | None = Field(default=None, min_length=1, max_length=1024,
                                 description="The new password; generated when omitted.")


class PasswordResetDone(BaseModel):
    username: str
    password: str | None = Field(description="The generated password, shown once; null when one was given.")


class AuditEventPublic(BaseModel):
    id: int
    created_at: datetime
    actor: str
    user_id: int | None
    key_prefix: str | None
    action: str
    target: str
    outcome: str
    status_code: int | None
    detail: str | None
    client_address: str | None

    @classmethod
    def of(cls, event: AuditEvent) -> AuditEventPublic:
        return cls(id=event.id, created_at=event.created_at, actor=event.actor, user_id=event.user_id,
                   key_prefix=event.key_prefix, action=event.action, target=event.target, outcome=event.outcome,
                   status_code=event.status_code, detail=event.detail, client_address=event.client_address)


class AuditPage(BaseModel):
    items: list[AuditEventPublic]
    next_cursor: int | None


class UserCreated(BaseModel):
    id: int
    username: str
    role: str
