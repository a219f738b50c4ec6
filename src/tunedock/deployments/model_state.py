"""Reasons a model cannot serve requests right now, in words a caller can act on."""

from __future__ import annotations

from sqlalchemy import select

from tunedock.errors import ModelNotLive, NotFound, TunedockError
from tunedock.store.database import Database
from tunedock.store.tables import Deployment, Model

# Seconds a client should wait before retrying a model whose replicas are being started.
STARTING_RETRY_AFTER_SECONDS = 2
REASON_SUMMARY_CHARS = 200


def describe_unavailable_model(database: Database, slug: str) -> TunedockError:
    """Return the error for a model slug that has no live replicas."""
    with database.session() as session:
        model = session.scalars(select(Model).where(Model.slug == slug, Model.deleted_at.is_(None))).first()
        if model is None:
            return NotFound(f"Model {slug!r} not found; GET /v1/models lists the deployed models.",
                            code="model_not_found", param="model")
        latest = session.scalars(select(Deployment).where(Deployment.model_id == model.id)
                                 .order_by(Deployment.version.desc()).limit(1)).first()
    if latest is None:
        return ModelNotLive(f"Model {slug!r} has never been deployed; deploy it with `tunedock deploy`.")
    if latest.status == "deploying":
        return ModelNotLive(f"Model {slug!r} is deploying ({latest.name}); retry when its job has finished.",
                            retry_after=STARTING_RETRY_AFTER_SECONDS)
    if latest.status == "failed":
        # The stored reason may quote server paths and log lines, which inference callers need not see.
        return ModelNotLive(f"Model {slug!r} is not live: its latest deployment {latest.name} failed; "
                            f"`tunedock history {slug}` shows why.")
    if latest.undeploy_started_at is not None:
        return ModelNotLive(f"Model {slug!r} is not live: {latest.name} was un-deployed by "
                            f"{latest.undeployed_by} ({_first_clause(latest.undeploy_reason or '')}); "
                            f"`tunedock history {slug}` shows the details.")
    return ModelNotLive(f"Model {slug!r} is live as {latest.name} but its replicas are starting; retry shortly.",
                        retry_after=STARTING_RETRY_AFTER_SECONDS)


def _first_clause(reason: str) -> str:
    """Return a stored reason up to its first semicolon: later clauses may quote server paths and logs."""
    return reason.split(";", 1)[0].strip()[:REASON_SUMMARY_CHARS]
