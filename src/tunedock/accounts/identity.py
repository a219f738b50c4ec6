"""The authenticated caller of a request."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("viewer", "developer", "admin")
SCOPES = ("inference", "management")
SYSTEM = "system"


@dataclass(frozen=True)
class Principal:
    user_id: int
    username: str
    role: str
    key_prefix: str
    scopes: tuple[str, ...]
    models: tuple[str, ...] | None  # model slugs the key may call; None means all

    def may_call_model(self, slug: str) -> bool:
        return self.models is None or slug in self.models
