"""Least-outstanding-requests choice of a replica within a route."""

from __future__ import annotations

from pathlib import Path

from tunedock.deployments.routing import ReplicaTarget, Route, RoutingTable
from tunedock.replicas.backend import RunningReplica


def make_route(outstanding: list[int]) -> Route:
    targets = [ReplicaTarget(RunningReplica(pid=100 + index, port=9000 + index, log_path=Path("x.log")),
                             outstanding=count)
               for index, count in enumerate(outstanding)]
    return Route(model_id=1, slug="m", deployment_id=1, deployment_name="M_v1", created=0, targets=targets)


def test_pick_prefers_fewest_outstanding() -> None:
    route = make_route([3, 1, 2])
    assert route.pick() is route.targets[1]


def test_pick_skips_excluded() -> None:
    route = make_route([3, 1, 2])
    assert route.pick(exclude=[route.targets[1]]) is route.targets[2]


def test_pick_returns_none_when_all_excluded() -> None:
    route = make_route([0, 0])
    assert route.pick(exclude=route.targets) is None


def test_remove_ignores_other_deployment() -> None:
    table = RoutingTable()
    table.set(make_route([0]))
    table.remove("m", deployment_id=2)
    assert table.get("m") is not None


def test_remove_drops_matching_deployment() -> None:
    table = RoutingTable()
    table.set(make_route([0]))
    table.remove("m", deployment_id=1)
    assert table.get("m") is None
