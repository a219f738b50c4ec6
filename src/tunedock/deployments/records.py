"""Store operations of the deployment manager, one transaction each.

Every state change is written here before the manager acts on it, so that after a crash
the store records what was in progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tunedock.accounts.identity import SYSTEM
from tunedock.catalog.inspection import is_adapter_directory
from tunedock.catalog.registration import find_model
from tunedock.errors import Conflict, NotFound
from tunedock.notifier.outbox import Outbox
from tunedock.store.database import Database
from tunedock.store.tables import Deployment, Job, JobEvent, Model, Replica, utc_now


@dataclass(frozen=True)
class NewDeployment:
    model: Model
    deployment: Deployment
    job: Job


@dataclass(frozen=True)
class Allocation:
    """The fields of a new deployment row besides its model and number."""

    parameters: dict[str, Any]
    description: str
    user_id: int | None
    username: str
    engine_version: str | None
    files_hash: str | None = None
    origin: Deployment | None = None


def allocate_deployment(database: Database, model_reference: str, allocation: Allocation) -> NewDeployment:
    """Write a new deployment version and its deploy job in one transaction."""
    with database.session() as session:
        model = find_model(session, model_reference)
        # One UPDATE ... RETURNING: two concurrent deploys can never get the same number,
        # and the unique (model_id, version) constraint backs it up.
        version = session.execute(
            update(Model).where(Model.id == model.id)
            .values(last_version=Model.last_version + 1).returning(Model.last_version)
        ).scalar_one()
        origin = allocation.origin
        deployment = Deployment(
            model_id=model.id, version=version, name=f"{model.name}_v{version}",
            description=allocation.description, parameters=allocation.parameters, status="deploying",
            deployed_by_id=allocation.user_id, deployed_by=allocation.username,
            engine_version=allocation.engine_version, files_hash=allocation.files_hash,
            origin_deployment_id=origin.id if origin is not None else None,
        )
        session.add(deployment)
        session.flush()
        job = Job(deployment_id=deployment.id, action="deploy", status="in_progress",
                  created_by=allocation.username)
        session.add(job)
        session.flush()
        requested = f"Deploy of {deployment.name} requested by {allocation.username}"
        if origin is not None:
            requested += f" with the parameters of {origin.name}"
        _add_event(session, job.id, "queued", requested)
        session.refresh(model)
        return NewDeployment(model=model, deployment=deployment, job=job)


def create_undeploy_job(database: Database, deployment_id: int, username: str, reason: str) -> Job:
    with database.session() as session:
        deployment = _get_deployment(session, deployment_id)
        _record_undeploy_start(deployment, username, reason)
        job = Job(deployment_id=deployment.id, action="undeploy", status="in_progress", created_by=username)
        session.add(job)
        session.flush()
        _add_event(session, job.id, "queued", f"Un-deploy of {deployment.name} requested by {username} ({reason})")
        return job


def add_event(database: Database, job_id: int, stage: str, message: str) -> None:
    with database.session() as session:
        _add_event(session, job_id, stage, message)


def _add_event(session: Session, job_id: int, stage: str, message: str) -> None:
    # Write to the job's row first, so two writers (the deploy task and a cancel request, say)
    # cannot read the same last sequence number. The write locks the row on PostgreSQL and
    # takes SQLite's write lock, which FOR UPDATE would not.
    session.execute(update(Job).where(Job.id == job_id).values(cancel_requested_by=Job.cancel_requested_by))
    last = session.scalar(select(func.max(JobEvent.sequence)).where(JobEvent.job_id == job_id))
    session.add(JobEvent(job_id=job_id, sequence=(last or 0) + 1, stage=stage, message=message))


def finish_job(database: Database, job_id: int, error: str | None = None) -> None:
    with database.session() as session:
        job = session.get_one(Job, job_id)
        job.status = "failed" if error else "success"
        job.error = error
        job.finished_at = utc_now()
        _add_event(session, job_id, "failed" if error else "done", error or "Finished")


def mark_deploy_failed(database: Database, deployment_id: int, reason: str, job_id: int,
                       outbox: Outbox | None = None) -> None:
    with database.session() as session:
        deployment = session.get_one(Deployment, deployment_id)
        deployment.status = "failed"
        deployment.failure_reason = reason
        deployment.ended_at = utc_now()
        if outbox is not None:
            outbox.deployment_failed(session, deployment, session.get_one(Model, deployment.model_id), job_id, reason)


def make_live(database: Database, deployment_id: int, outbox: Outbox | None = None) -> int | None:
    """Mark a deployment successful and live; return the deployment it replaces, if any."""
    with database.session() as session:
        deployment = session.get_one(Deployment, deployment_id)
        model = session.get_one(Model, deployment.model_id)
        previous = model.live_deployment_id
        deployment.status = "success"
        deployment.ended_at = utc_now()
        model.live_deployment_id = deployment.id
        if outbox is not None:
            outbox.deployment_succeeded(session, deployment, model)
        return previous


def clear_live(database: Database, deployment_id: int) -> None:
    with database.session() as session:
        session.execute(update(Model).where(Model.live_deployment_id == deployment_id)
                        .values(live_deployment_id=None))


def mark_undeployed(database: Database, deployment_id: int, outbox: Outbox | None = None) -> None:
    with database.session() as session:
        deployment = session.get_one(Deployment, deployment_id)
        deployment.undeploy_ended_at = utc_now()
        if outbox is not None and deployment.undeployed_by == SYSTEM:
            outbox.undeployed_by_system(session, deployment, session.get_one(Model, deployment.model_id))


def queue_idle_warning(database: Database, deployment_id: int, minutes_left: int, outbox: Outbox) -> None:
    with database.session() as session:
        deployment = session.get_one(Deployment, deployment_id)
        outbox.idle_warning(session, deployment, session.get_one(Model, deployment.model_id), minutes_left)


def start_undeploy(database: Database, deployment_id: int, username: str, reason: str) -> None:
    """Record who takes a deployment down and why, before its replicas stop."""
    with database.session() as session:
        _record_undeploy_start(session.get_one(Deployment, deployment_id), username, reason)


def _record_undeploy_start(deployment: Deployment, username: str, reason: str) -> None:
    deployment.undeployed_by = username
    deployment.undeploy_reason = reason
    deployment.undeploy_started_at = utc_now()


def add_replica(database: Database, deployment_id: int, index: int, pid: int, log_path: str) -> int:
    with database.session() as session:
        replica = Replica(deployment_id=deployment_id, index=index, status="starting", pid=pid,
                          log_path=log_path)
        session.add(replica)
        session.flush()
        return replica.id


def set_replica_state(database: Database, replica_id: int, status: str, port: int | None = None) -> None:
    with database.session() as session:
        replica = session.get_one(Replica, replica_id)
        replica.status = status
        if port is not None:
            replica.port = port
        if status in ("stopped", "failed"):
            replica.stopped_at = utc_now()


def active_replicas(database: Database, deployment_id: int | None = None) -> list[Replica]:
    """Replica rows whose processes may still be running."""
    with database.session() as session:
        query = select(Replica).where(Replica.status.in_(("starting", "ready")))
        if deployment_id is not None:
            query = query.where(Replica.deployment_id == deployment_id)
        return list(session.scalars(query))


def interrupted_jobs(database: Database) -> list[Job]:
    with database.session() as session:
        return list(session.scalars(select(Job).where(Job.status == "in_progress")))


def live_deployments(database: Database) -> list[tuple[Model, Deployment]]:
    with database.session() as session:
        query = (select(Model, Deployment).join(Deployment, Deployment.id == Model.live_deployment_id)
                 .where(Model.deleted_at.is_(None)))
        return [(model, deployment) for model, deployment in session.execute(query).all()]


def find_live_model(database: Database, model_reference: str) -> Model:
    """Find a model that is not deleted."""
    with database.session() as session:
        return find_model(session, model_reference)


def get_deployment(database: Database, deployment_id: int) -> Deployment:
    with database.session() as session:
        return _get_deployment(session, deployment_id)


def get_model_of(database: Database, deployment: Deployment) -> Model:
    with database.session() as session:
        return session.get_one(Model, deployment.model_id)


def adapter_base_path(database: Database, model: Model) -> str | None:
    """Return the base model directory of an adapter model, or None when the model is a full one.

    The base_model of an adapter is a model slug or an absolute directory path, as
    registration stores it. A deleted base model still lends its files.
    """
    if not is_adapter_directory(model.source_path):
        return None
    reference = model.base_model or ""
    if Path(reference).is_absolute():
        return reference
    with database.session() as session:
        try:
            return find_model(session, reference, include_deleted=True).source_path
        except NotFound as exc:
            raise NotFound(f"Base model {reference!r} of adapter model {model.name!r} is not registered. "
                           "Register the base model again under that name, then redeploy.",
                           code="base_model_not_found") from exc


def _get_deployment(session: Session, deployment_id: int) -> Deployment:
    deployment = session.get(Deployment, deployment_id)
    if deployment is None:
        raise NotFound(f"Deployment {deployment_id} not found; `tunedock history MODEL` lists a model's "
                       "deployments with their ids.", code="deployment_not_found")
    return deployment


def get_job(database: Database, job_id: int) -> tuple[Job, list[JobEvent]]:
    with database.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"Job {job_id} not found; check the id returned by the deploy or un-deploy call.",
                           code="job_not_found")
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)
                                 .order_by(JobEvent.sequence))
        return job, list(events)


def history(database: Database, model_reference: str, before_version: int | None,
            limit: int, status: str | None = None) -> tuple[Model, list[Deployment]]:
    """Return a model, deleted or not, and one page of its deployments, newest first."""
    with database.session() as session:
        model = find_model(session, model_reference, include_deleted=True)
        query = select(Deployment).where(Deployment.model_id == model.id)
        if status is not None:
            query = query.where(Deployment.status == status)
        if before_version is not None:
            query = query.where(Deployment.version < before_version)
        query = query.order_by(Deployment.version.desc()).limit(limit)
        return model, list(session.scalars(query))


@dataclass(frozen=True)
class DeploymentRecord:
    """One deployment with its model and the version before it, for the detail view."""

    deployment: Deployment
    model: Model
    previous: Deployment | None
    origin: Deployment | None
    replicas: list[Replica]


def deployment_record(database: Database, deployment_id: int) -> DeploymentRecord:
    with database.session() as session:
        deployment = _get_deployment(session, deployment_id)
        model = session.get_one(Model, deployment.model_id)
        previous = session.scalars(
            select(Deployment).where(Deployment.model_id == model.id, Deployment.version < deployment.version)
            .order_by(Deployment.version.desc()).limit(1)).first()
        origin = None
        if deployment.origin_deployment_id is not None:
            origin = session.get(Deployment, deployment.origin_deployment_id)
        replicas = list(session.scalars(select(Replica).where(Replica.deployment_id == deployment.id)
                                        .order_by(Replica.started_at, Replica.id)))
        return DeploymentRecord(deployment=deployment, model=model, previous=previous, origin=origin,
                                replicas=replicas)


def find_version(database: Database, model_reference: str, version: int) -> Deployment:
    with database.session() as session:
        model = find_model(session, model_reference, include_deleted=True)
        deployment = session.scalars(select(Deployment).where(
            Deployment.model_id == model.id, Deployment.version == version)).first()
        if deployment is None:
            raise NotFound(f"Model {model.name!r} has no version {version} (its versions run from 1 to "
                           f"{model.last_version}).", code="deployment_not_found")
        return deployment


def request_cancel(database: Database, job_id: int, username: str) -> Job:
    """Record who requested to cancel an in-progress deploy job, or raise why it cannot be cancelled."""
    with database.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"Job {job_id} not found; check the id returned by the deploy call.",
                           code="job_not_found")
        if job.action != "deploy":
            raise Conflict(f"Job {job_id} is an {job.action}; only deploy jobs can be cancelled.",
                           code="job_not_cancellable")
        if job.status != "in_progress":
            raise Conflict(f"Job {job_id} has already ended ({job.status}); there is nothing to cancel.",
                           code="job_finished")
        if job.cancel_requested_by is None:
            job.cancel_requested_by = username
            _add_event(session, job.id, "cancelling", f"Cancel requested by {username}")
        return job


def delete_model(database: Database, model_reference: str, username: str) -> Model:
    """Mark a model deleted; its deployments and jobs stay readable."""
    with database.session() as session:
        model = find_model(session, model_reference)
        if model.live_deployment_id is not None:
            live = session.get_one(Deployment, model.live_deployment_id)
            raise Conflict(f"Model {model.name!r} is live as {live.name}; un-deploy it first "
                           f"(`tunedock undeploy {model.slug}`).", code="model_live")
        deploying = session.scalars(select(Deployment).where(
            Deployment.model_id == model.id, Deployment.status == "deploying")).first()
        if deploying is not None:
            raise Conflict(f"Model {model.name!r} is deploying {deploying.name}; cancel its job or wait for it "
                           "to end, then delete the model.", code="deployment_in_progress")
        model.deleted_at = utc_now()
        model.deleted_by = username
        return model


def set_files_hash(database: Database, deployment_id: int, files_hash: str) -> None:
    with database.session() as session:
        session.get_one(Deployment, deployment_id).files_hash = files_hash


def cancel_requester(database: Database, job_id: int) -> str | None:
    with database.session() as session:
        return session.get_one(Job, job_id).cancel_requested_by


def duration_seconds(started_at: datetime, ended_at: datetime | None) -> float | None:
    if ended_at is None:
        return None
    return round((ended_at - started_at).total_seconds(), 3)
