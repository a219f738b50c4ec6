"""What every page of a model shows: the model, its live version and its latest version."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tunedock.deployments import records
from tunedock.services import Services
from tunedock.store.tables import Deployment, Model

logger = logging.getLogger(__name__)

MAX_LISTED_FILES = 200


@dataclass(frozen=True)
class ModelSummary:
    model: Model
    live: Deployment | None
    latest: Deployment | None


@dataclass(frozen=True)
class ModelFile:
    path: str
    size_bytes: int


def model_summary(services: Services, reference: str) -> ModelSummary:
    """Find a model (deleted ones too, so their history stays readable) with its live and latest version."""
    model, latest = records.history(services.database, reference, None, 1)
    live = None
    if model.live_deployment_id is not None:
        live = records.get_deployment(services.database, model.live_deployment_id)
    return ModelSummary(model=model, live=live, latest=latest[0] if latest else None)


def model_summaries(services: Services) -> list[ModelSummary]:
    return [model_summary(services, str(model.id)) for model in services.registry.list()]


def model_files(model: Model) -> tuple[list[ModelFile], str | None]:
    """List the files of a model directory with their sizes, or return why they cannot be listed."""
    root = Path(model.source_path)
    try:
        paths = sorted(path for path in root.rglob("*") if path.is_file())
        files = [ModelFile(str(path.relative_to(root)), path.stat().st_size) for path in paths[:MAX_LISTED_FILES]]
    except OSError as exc:
        logger.warning("cannot list the files of model %s in %s: %s", model.slug, root, exc)
        return [], f"The files in {root} cannot be read ({exc.strerror or exc})."
    if len(paths) > MAX_LISTED_FILES:
        return files, f"Showing the first {MAX_LISTED_FILES} of {len(paths)} files."
    return files, None
