"""Every management route checked with every role, and every route refused without a key."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_KEY, isolated_settings
from tunedock.app import create_app

ROLES = ("viewer", "developer", "admin")
RANK = {role: rank for rank, role in enumerate(ROLES)}
PUBLIC = {("POST", "/api/auth/login"), ("GET", "/healthz"), ("GET", "/metrics")}

# The least role each management route needs. A route missing here fails the completeness test.
LEAST_ROLE = {
    ("GET", "/api/models"): "viewer",
    ("POST", "/api/models"): "developer",
    ("GET", "/api/models/{model}"): "viewer",
    ("DELETE", "/api/models/{model}"): "developer",
    ("GET", "/api/models/{model}/endpoint"): "viewer",
    ("POST", "/api/models/{model}/endpoint"): "viewer",
    ("POST", "/api/models/{model}/deployments"): "developer",
    ("GET", "/api/models/{model}/deployments"): "viewer",
    ("GET", "/api/models/{model}/deployments/{version}"): "viewer",
    ("GET", "/api/deployments/{deployment_id}"): "viewer",
    ("GET", "/api/deployments/{a}/diff/{b}"): "viewer",
    ("POST", "/api/deployments/{deployment_id}/redeploy"): "developer",
    ("POST", "/api/deployments/{deployment_id}/undeploy"): "developer",
    ("POST", "/api/deployments/{deployment_id}/keep-alive"): "viewer",
    ("GET", "/api/jobs/{job_id}"): "viewer",
    ("GET", "/api/jobs/{job_id}/events"): "viewer",
    ("POST", "/api/jobs/{job_id}/cancel"): "developer",
    ("GET", "/api/users/me"): "viewer",
    ("POST", "/api/keys"): "developer",
    ("GET", "/api/keys"): "viewer",
    ("DELETE", "/api/keys/{key_id}"): "developer",
    ("POST", "/api/users"): "admin",
    ("GET", "/api/users"): "admin",
    ("PATCH", "/api/users/{username}"): "admin",
    ("POST", "/api/users/{username}/reset-password"): "admin",
    ("GET", "/api/audit"): "admin",
    ("GET", "/api/notifications"): "viewer",
    ("PUT", "/api/models/{model}/watch"): "viewer",
    ("DELETE", "/api/models/{model}/watch"): "viewer",
    ("PUT", "/api/users/me/notifications"): "viewer",
    ("POST", "/api/models/{model}/webhooks"): "developer",
    ("GET", "/api/models/{model}/webhooks"): "viewer",
    ("DELETE", "/api/webhooks/{webhook_id}"): "developer",
}
SAMPLE_PARAMETERS = {"model": "no-such-model", "username": "nobody", "version": "1"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = isolated_settings(tmp_path_factory.mktemp("roles-home"), admin_api_key=ADMIN_KEY,
                        admin_password="test-password-1", port=18041)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def keys(client: TestClient) -> dict[str, str]:
    """A management key for a user of each role."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    found = {"admin": ADMIN_KEY}
    for role in ("viewer", "developer"):
        created = client.post("/api/users", headers=admin, json={
            "username": f"a-{role}", "email": f"{role}@example.com", "password": "role-password-1", "role": role})
        assert created.status_code == 201, created.text
        issued = client.post("/api/keys", headers=admin, json={
            "name": role, "scopes": ["inference", "management"], "user": f"a-{role}"})
        assert issued.status_code == 201, issued.text
        found[role] = issued.json()["key"]
    return found


def management_routes(client: TestClient) -> list[tuple[str, str]]:
    routes = []
    for route in client.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, APIRoute) and route.path.startswith("/api/"):
            routes.extend((method, route.path) for method in sorted(route.methods) if method != "HEAD")
    return routes


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda match: SAMPLE_PARAMETERS.get(match.group(1), "999999"), path)


def test_every_management_route_has_a_role(client: TestClient) -> None:
    unlisted = [route for route in management_routes(client) if route not in LEAST_ROLE and route not in PUBLIC]
    assert unlisted == []


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "path"), sorted(LEAST_ROLE))
def test_route_allows_or_forbids_role(client: TestClient, keys: dict[str, str], role: str, method: str,
                                      path: str) -> None:
    response = client.request(method, concrete(path), headers={"Authorization": f"Bearer {keys[role]}"})
    allowed = RANK[role] >= RANK[LEAST_ROLE[(method, path)]]
    # Allowed callers pass the role check; they may still get 404 or 422 for the sample ids.
    assert (response.status_code != 403) == allowed, response.text


def test_every_route_needs_credentials(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    refused = []
    for path, operations in schema["paths"].items():
        for method in operations:
            if (method.upper(), path) in PUBLIC:
                continue
            status = client.request(method.upper(), concrete(path), json={}).status_code
            refused.append((method.upper(), path, status))
    assert [entry for entry in refused if entry[2] != 401] == []
