"""Field-by-field comparison of two deployment versions of one model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunedock.store.tables import Deployment


@dataclass(frozen=True)
class FieldChange:
    field: str
    before: Any
    after: Any


def compared_fields(deployment: Deployment) -> dict[str, Any]:
    """Return what defines a version's behaviour, keyed by dotted field name."""
    fields = _flatten(deployment.parameters)
    fields["optimization.engine_version"] = deployment.engine_version
    fields["model.files_hash"] = deployment.files_hash
    return fields


def changes_between(before: Deployment, after: Deployment) -> list[FieldChange]:
    """Return the fields whose values differ, in a stable order."""
    old, new = compared_fields(before), compared_fields(after)
    names = sorted(set(old) | set(new))
    return [FieldChange(name, old.get(name), new.get(name)) for name in names if old.get(name) != new.get(name)]


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
