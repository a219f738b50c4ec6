"""Users, API keys, sign-in limits and the audit trail through an in-process client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_KEY, isolated_settings
from tunedock.app import create_app
from tunedock.demo.registry import minilm_model_path

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PASSWORD = "member-password-1"


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = isolated_settings(tmp_path / "home", admin_api_key=ADMIN_KEY, admin_password="test-password-1",
                             port=18042, sign_in_attempts=3)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def add_user(client: TestClient, username: str, role: str = "developer") -> dict[str, Any]:
    response = client.post("/api/users", headers=ADMIN, json={
        "username": username, "email": f"{username}@example.com", "password": PASSWORD, "role": role})
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


def key_for(client: TestClient, username: str) -> dict[str, str]:
    issued = client.post("/api/keys", headers=ADMIN, json={"name": "k", "scopes": ["management"], "user": username})
    return {"Authorization": f"Bearer {issued.json()['key']}"}


def test_disabled_user_key_stops_at_once(client: TestClient) -> None:
    add_user(client, "dana")
    headers = key_for(client, "dana")
    client.patch("/api/users/dana", headers=ADMIN, json={"disabled": True})
    assert client.get("/api/models", headers=headers).status_code == 401


def test_revoked_key_stops_at_once(client: TestClient) -> None:
    add_user(client, "rory")
    headers = key_for(client, "rory")
    key_id = client.get("/api/keys", headers=headers).json()[0]["id"]
    client.delete(f"/api/keys/{key_id}", headers=headers)
    assert client.get("/api/models", headers=headers).status_code == 401


def test_key_list_shows_prefix_not_secret(client: TestClient) -> None:
    add_user(client, "kim")
    headers = key_for(client, "kim")
    listed = client.get("/api/keys", headers=headers).json()[0]
    assert "key" not in listed
    assert listed["prefix"]


def test_user_cannot_revoke_another_users_key(client: TestClient) -> None:
    add_user(client, "ann")
    add_user(client, "bob")
    ann_key = client.get("/api/keys", headers=key_for(client, "ann")).json()[0]["id"]
    assert client.delete(f"/api/keys/{ann_key}", headers=key_for(client, "bob")).status_code == 403


def test_last_admin_cannot_be_disabled(client: TestClient) -> None:
    response = client.patch("/api/users/admin", headers=ADMIN, json={"disabled": True})
    assert response.json()["error"]["code"] == "last_admin"


def test_last_admin_cannot_be_demoted(client: TestClient) -> None:
    response = client.patch("/api/users/admin", headers=ADMIN, json={"role": "developer"})
    assert response.json()["error"]["code"] == "last_admin"


def test_admin_can_be_demoted_when_another_exists(client: TestClient) -> None:
    add_user(client, "second", role="admin")
    assert client.patch("/api/users/admin", headers=ADMIN, json={"role": "developer"}).status_code == 200


def test_developer_cannot_change_roles(client: TestClient) -> None:
    add_user(client, "dev")
    response = client.patch("/api/users/dev", headers=key_for(client, "dev"), json={"role": "admin"})
    assert response.status_code == 403


def test_short_password_is_refused(client: TestClient) -> None:
    response = client.post("/api/users", headers=ADMIN, json={
        "username": "short", "email": "s@example.com", "password": "abc", "role": "viewer"})
    assert response.json()["error"]["param"] == "password"


def test_sign_in_limit_gives_429(client: TestClient) -> None:
    add_user(client, "guess")
    for _ in range(3):
        client.post("/api/auth/login", json={"username": "guess", "password": "wrong-password"})
    response = client.post("/api/auth/login", json={"username": "guess", "password": PASSWORD})
    assert response.status_code == 429


def test_sign_in_limit_says_when_to_retry(client: TestClient) -> None:
    for _ in range(3):
        client.post("/api/auth/login", json={"username": "nobody", "password": "wrong-password"})
    response = client.post("/api/auth/login", json={"username": "nobody", "password": "wrong-password"})
    assert int(response.headers["Retry-After"]) > 0


def test_password_reset_ends_sign_ins(client: TestClient) -> None:
    add_user(client, "reset")
    token = client.post("/api/auth/login", json={"username": "reset", "password": PASSWORD}).json()["token"]
    client.post("/api/users/reset/reset-password", headers=ADMIN, json={"password": "another-password-2"})
    assert client.get("/api/models", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_me_names_the_caller(client: TestClient) -> None:
    assert client.get("/api/users/me", headers=ADMIN).json()["username"] == "admin"


# The audit trail --------------------------------------------------------------------------------


def audit(client: TestClient, **filters: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get("/api/audit", headers=ADMIN, params=filters).json()["items"]
    return items


def test_register_is_audited(client: TestClient) -> None:
    client.post("/api/models", headers=ADMIN, json={"name": "MiniLM", "path": str(minilm_model_path())})
    assert audit(client, action="model.register")[0]["target"].startswith("MiniLM from ")


def test_refused_action_is_audited_as_denied(client: TestClient) -> None:
    add_user(client, "viewer", role="viewer")
    client.post("/api/models", headers=key_for(client, "viewer"), json={"name": "X", "path": "/tmp"})
    assert audit(client, user="viewer")[0]["outcome"] == "denied"


def test_failed_sign_in_is_audited(client: TestClient) -> None:
    client.post("/api/auth/login", json={"username": "mallory", "password": "wrong-password"})
    assert audit(client, action="auth.sign_in", user="mallory")[0]["outcome"] == "denied"


def test_audit_records_key_prefix(client: TestClient) -> None:
    add_user(client, "pat")
    key_for(client, "pat")
    assert audit(client, action="key.create")[0]["key_prefix"] == ADMIN_KEY[:12]


def test_audit_records_client_address(client: TestClient) -> None:
    add_user(client, "addr")
    assert audit(client, action="user.create")[0]["client_address"] == "testclient"


def test_audit_filters_by_time(client: TestClient) -> None:
    add_user(client, "late")
    assert audit(client, since="2999-01-01T00:00:00Z") == []


def test_audit_rows_cannot_be_changed(client: TestClient) -> None:
    add_user(client, "fixed")
    engine = client.app.state.services.database.engine  # type: ignore[attr-defined]
    with pytest.raises(sqlalchemy.exc.DatabaseError), engine.begin() as connection:
        connection.execute(sqlalchemy.text("UPDATE audit_events SET actor = 'someone else'"))


def test_audit_cursor_out_of_range_is_422(client: TestClient) -> None:
    assert client.get("/api/audit?cursor=-64287161130322771968", headers=ADMIN).status_code == 422


def test_audit_time_out_of_range_is_400(client: TestClient) -> None:
    assert client.get("/api/audit?until=9999-12-31T23:59:59-14:00", headers=ADMIN).status_code == 400


def test_key_expiry_without_offset_is_utc(client: TestClient) -> None:
    response = client.post("/api/keys", headers=ADMIN, json={"name": "k", "expires_at": "2999-01-01T00:00:00"})
    assert response.status_code == 201


def test_key_expiry_in_the_past_is_refused(client: TestClient) -> None:
    response = client.post("/api/keys", headers=ADMIN, json={"name": "k", "expires_at": "2020-01-01T00:00:00Z"})
    assert response.json()["error"]["details"]["fields"][0]["field"] == "expires_at"
