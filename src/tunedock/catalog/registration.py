"""Registering models in the store and finding them again by id, slug or name."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tunedock.accounts.identity import Principal
from tunedock.catalog.inspection import inspect_model_directory
from tunedock.catalog.slugs import slugify
from tunedock.errors import Conflict, InvalidInput, NotFound
from tunedock.store.database import Database
from tunedock.store.tables import Model

logger = logging.getLogger(__name__)

MAX_NAME_LENGTH = 128
MAX_TAGS = 32


class ModelRegistry:
    def __init__(self, database: Database, allowed_roots: Sequence[Path]) -> None:
        self.database = database
        self.allowed_roots = list(allowed_roots)

    def register(self, principal: Principal, name: str, path: str, description: str = "",
                 tags: Sequence[str] = (), base_model: str | None = None,
                 technique: str | None = None) -> Model:
        name = _checked_name(name)
        tags = _checked_tags(tags)
        slug = slugify(name)
        inspection = inspect_model_directory(path, self.allowed_roots)
        with self.database.session() as session:
            _reject_duplicate(session, name, slug)
            model = Model(
                name=name, slug=slug, description=description, tags=tags,
                source_path=str(inspection.path), format=inspection.format,
                architecture=inspection.architecture, base_model=base_model, technique=technique,
                parameter_count=inspection.parameter_count, size_bytes=inspection.size_bytes,
                context_length=inspection.context_length, created_by=principal.user_id,
            )
            session.add(model)
        logger.info("model %s (%s) registered from %s by %s", model.id, slug, inspection.path, principal.username)
        return model

    def list(self) -> list[Model]:
        with self.database.session() as session:
            query = select(Model).where(Model.deleted_at.is_(None)).order_by(Model.id)
            return list(session.scalars(query))

    def get(self, reference: str) -> Model:
        with self.database.session() as session:
            return find_model(session, reference)


def find_model(session: Session, reference: str, include_deleted: bool = False) -> Model:
    """Find a model by its id, slug or exact name; deleted ones only when asked for."""
    conditions = [Model.slug == reference, Model.name == reference]
    if reference.isdigit():
        conditions.append(Model.id == int(reference))
    query = select(Model).where(or_(*conditions))
    if not include_deleted:
        query = query.where(Model.deleted_at.is_(None))
    model = session.scalars(query).first()
    if model is None:
        raise NotFound(f"Model {reference!r} not found; `tunedock models list` shows the registered models.",
                       code="model_not_found")
    return model


def _reject_duplicate(session: Session, name: str, slug: str) -> None:
    existing = session.scalars(select(Model).where(or_(Model.name == name, Model.slug == slug))).first()
    if existing is not None and existing.deleted_at is not None:
        raise Conflict(f"The name {existing.name!r} (slug {existing.slug!r}) belongs to a deleted model whose "
                       "history is kept; choose another name.", code="model_exists")
    if existing is not None:
        raise Conflict(f"A model named {existing.name!r} (slug {existing.slug!r}) is already registered; "
                       "choose another name.", code="model_exists")


def _checked_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"Invalid model name {name!r}; use 1 to {MAX_NAME_LENGTH} characters.", param="name")
    return name


def _checked_tags(tags: Sequence[str]) -> list[str]:
    cleaned = [tag.strip() for tag in tags]
    if len(cleaned) > MAX_TAGS or any(not tag or len(tag) > 64 for tag in cleaned):
        raise InvalidInput(f"Invalid tags {list(tags)!r}; use up to {MAX_TAGS} non-empty tags of at most "
                           "64 characters.", param="tags")
    return cleaned
