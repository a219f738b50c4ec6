"""Registering models in the store and finding them again by id, slug or name."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tunedock.accounts.identity import Principal
from tunedock.catalog.adapters import inspect_adapter_directory
from tunedock.catalog.inspection import (
    ModelInspection,
    inspect_model_directory,
    is_adapter_directory,
    resolve_model_directory,
)
from tunedock.catalog.slugs import slugify
from tunedock.errors import Conflict, InvalidInput, InvalidModelDirectory, NotFound
from tunedock.record_ids import is_record_id
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
        if is_adapter_directory(resolve_model_directory(path, self.allowed_roots)):
            inspection, base_model = self._inspect_adapter(path, base_model)
            technique = technique or "lora"
        else:
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

    def _inspect_adapter(self, path: str, base_model: str | None) -> tuple[ModelInspection, str]:
        """Inspect an adapter on its base, and return it with the base_model value to store.

        That value is the base's slug when the base is registered, or else the resolved path
        of the base directory.
        """
        reference = (base_model or "").strip()
        if not reference:
            raise InvalidInput(
                f"Model directory {path} is a LoRA adapter, which needs its base model. Set base_model "
                "to the name, slug or id of the registered base model, or to the base model's directory.",
                code="base_model_missing", param="base_model",
            )
        base_path, stored_reference = self._find_base(reference)
        if is_adapter_directory(base_path):
            raise InvalidInput(
                f"Base model {reference!r} is itself an adapter. Set base_model to the full model "
                "that the adapter was trained on.",
                code="base_model_incompatible", param="base_model",
            )
        try:
            base = inspect_model_directory(base_path, self.allowed_roots)
        except InvalidModelDirectory as exc:
            raise InvalidModelDirectory(f"Base model {reference!r} cannot be used: {exc.message}",
                                        code=exc.code, param="base_model") from exc
        inspection = inspect_adapter_directory(path, self.allowed_roots, base, repr(reference))
        return inspection, stored_reference or str(base.path)

    def _find_base(self, reference: str) -> tuple[Path, str | None]:
        """Return the base directory and its model slug, or None for a directory given by path."""
        with self.database.session() as session:
            try:
                base = find_model(session, reference)
            except NotFound:
                base = None
            if base is not None:
                return Path(base.source_path), base.slug
        if Path(reference).expanduser().is_dir():
            return Path(reference).expanduser(), None
        raise InvalidInput(
            f"Base model {reference!r} is neither a registered model (by name, slug or id) nor a "
            "directory. Register the base model first, or set base_model to its directory's path.",
            code="base_model_not_found", param="base_model",
        )

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
    if is_record_id(reference):
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
