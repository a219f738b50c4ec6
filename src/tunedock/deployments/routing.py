"""The in-memory map from a model's slug to the replicas of its live deployment.

The deployment manager writes it after the store marks a deployment live; the gateway
reads it on every request without touching the database.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field

from tunedock.replicas.backend import RunningReplica


@dataclass(eq=False)
class ReplicaTarget:
    replica: RunningReplica
    replica_id: int = 0  # the replica's row in the store
    index: int = 0
    outstanding: int = 0


@dataclass
class Route:
    model_id: int
    slug: str
    deployment_id: int
    deployment_name: str
    created: int  # Unix time the model was registered, as OpenAI's model objects give it
    targets: list[ReplicaTarget] = field(default_factory=list)
    last_request_at: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        """Note a request, for the idle clock of automatic un-deploys."""
        self.last_request_at = time.monotonic()

    def in_flight(self) -> int:
        return sum(target.outstanding for target in self.targets)

    def pick(self, exclude: Collection[ReplicaTarget] = ()) -> ReplicaTarget | None:
        """Return the replica with the fewest requests in flight, skipping ``exclude``."""
        candidates = [target for target in self.targets if target not in exclude]
        return min(candidates, key=lambda target: target.outstanding, default=None)


class RoutingTable:
    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def get(self, slug: str) -> Route | None:
        return self._routes.get(slug)

    def set(self, route: Route) -> None:
        self._routes[route.slug] = route

    def remove(self, slug: str, deployment_id: int) -> None:
        route = self._routes.get(slug)
        if route is not None and route.deployment_id == deployment_id:
            del self._routes[slug]

    def routes(self) -> list[Route]:
        return list(self._routes.values())
