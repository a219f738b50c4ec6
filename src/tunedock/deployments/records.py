"""Store operations of the deployment manager, one transaction each.

Every state change is written here before the manager acts on it, so that after a crash
the store records what was in progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tunedock.catalog.registration import find_model
from tunedock.errors import NotFound
from tunedock.store.database import Database
from tunedock.store.tables import Deployment, Job, JobEvent, Model, Replica, utc_now


@dataclass(frozen=True)
class NewDeployment:
    model: Model
    deployment: Deployment
    job: Job


def allocate_deployment(database: Database, model_reference: str, parameters: dict[str, Any],
                        description: str, user_id: int | None, username: str) -> NewDeployment:
    """Write a new deployment version and its deploy job in one transaction."""
    with database.session() as session:
        model = find_model(session, model_reference)
        # One UPDATE ... RETURNING: two concurrent deploys can never get the same number,
        # and the unique (model_id, version) constraint backs it up.
        version = session.execute(
            update(Model).where(Model.id == model.id)
            .values(last_version=Model.last_version + 1).returning(Model.last_version)
        ).scalar_one()
        deployment = Deployment(
            model_id=model.id, version=version, name=f"{model.name}_v{version}", description=description,
            parameters=parameters, status="deploying", deployed_by_id=user_id, deployed_by=username,
        )
        session.add(deployment)
        session.flush()
        job = Job(deployment_id=deployment.id, action="deploy", status="in_progress", created_by=username)
        session.add(job)
        session.flush()
        _add_event(session, job.id, "queued", f"Deploy of {deployment.name} requested by {username}")
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
    last = session.scalar(select(func.max(JobEvent.sequence)).where(JobEvent.job_id == job_id))
    session.add(JobEvent(job_id=job_id, sequence=(last or 0) + 1, stage=stage, message=message))


def finish_job(database: Database, job_id: int, error: str | None = None) -> None:
    with database.session() as session:
        job = session.get_one(Job, job_id)
        job.status = "failed" if error else "success"
        job.error = error
        job.finished_at = utc_now()
        _add_event(session, job_id, "failed" if error else "done", error or "Finished")


def mark_deploy_failed(database: Database, deployment_id: int, reason: str) -> None:
    with database.session() as session:
        deployment = session.get_one(Deployment, deployment_id)
        deployment.status = "failed"
        deployment.failure_reason = reason
        deployment.ended_at = utc_now()


def make_live(database: Database, deployment_id: int) -> int | None:
    """Mark a deployment successful and live; return the deployment it replaces, if any."""
    with database.session() as session:
        deployment = session.get_one(Deployment, deployment_id)
        model = session.get_one(Model, deployment.model_id)
        previous = model.live_deployment_id
        deployment.status = "success"
        deployment.ended_at = utc_now()
        model.live_deployment_id = deployment.id
        return previous


def clear_live(database: Database, deployment_id: int) -> None:
    with database.session() as session:
        session.execute(update(Model).where(Model.live_deployment_id == deployment_id)
                        .values(live_deployment_id=None))


def mark_undeployed(database: Database, deployment_id: int) -> None:
    with database.session() as session:
        deployment = session.get_one(Deployment, deployment_id)
        deployment.undeploy_ended_at = utc_now()


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


def get_deployment(database: Database, deployment_id: int) -> Deployment:
    with database.session() as session:
        return _get_deployment(session, deployment_id)


def get_model_of(database: Database, deployment: Deployment) -> Model:
    with database.session() as session:
        return session.get_one(Model, deployment.model_id)


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
            limit: int) -> tuple[Model, list[Deployment]]:
    """Return a model and one page of its deployments, newest first."""
    with database.session() as session:
        model = find_model(session, model_reference)
        query = select(Deployment).where(Deployment.model_id == model.id)
        if before_version is not None:
            query = query.where(Deployment.version < before_version)
        query = query.order_by(Deployment.version.desc()).limit(limit)
        return model, list(session.scalars(query))


def duration_seconds(started_at: datetime, ended_at: datetime | None) -> float | None:
    if ended_at is None:
        return None
    return round((ended_at - started_at).total_seconds(), 3)
