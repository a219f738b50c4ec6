"""The management API through an in-process client: shapes, validation and errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_KEY, isolated_settings
from tunedock.app import create_app
from tunedock.demo.registry import minilm_model_path
from tunedock.deployments import records
from tunedock.settings import Settings

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return isolated_settings(tmp_path / "home", admin_api_key=ADMIN_KEY, admin_password="test-password-1",
                             port=18040)


@pytest.fixture()
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture()
def minilm(client: TestClient) -> dict[str, object]:
    response = client.post("/api/models", json={"name": "MiniLM", "path": str(minilm_model_path())}, headers=AUTH)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_healthz_needs_no_key(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_register_returns_slug(minilm: dict[str, object]) -> None:
    assert minilm["slug"] == "minilm"


def test_register_reads_format(minilm: dict[str, object]) -> None:
    assert minilm["format"] == "embedding"


def test_register_reads_parameter_count(minilm: dict[str, object]) -> None:
    assert minilm["parameter_count"] == 22_713_728


def test_register_duplicate_name_is_409(client: TestClient, minilm: dict[str, object]) -> None:
    response = client.post("/api/models", json={"name": "MiniLM", "path": str(minilm_model_path())}, headers=AUTH)
    assert response.status_code == 409


def test_register_missing_path_names_path(client: TestClient) -> None:
    response = client.post("/api/models", json={"name": "Ghost", "path": "/no/such/model"}, headers=AUTH)
    assert "/no/such/model" in response.json()["error"]["message"]


def test_register_missing_path_code(client: TestClient) -> None:
    response = client.post("/api/models", json={"name": "Ghost", "path": "/no/such/model"}, headers=AUTH)
    assert response.json()["error"]["code"] == "path_missing"


def test_register_unknown_field_is_422(client: TestClient) -> None:
    response = client.post("/api/models", json={"name": "X", "path": "/tmp", "colour": "red"}, headers=AUTH)
    assert response.status_code == 422


def test_model_found_by_name(client: TestClient, minilm: dict[str, object]) -> None:
    assert client.get("/api/models/MiniLM", headers=AUTH).json()["id"] == minilm["id"]


def test_model_found_by_id(client: TestClient, minilm: dict[str, object]) -> None:
    assert client.get(f"/api/models/{minilm['id']}", headers=AUTH).json()["slug"] == "minilm"


def test_unknown_model_is_404(client: TestClient) -> None:
    assert client.get("/api/models/nothing", headers=AUTH).status_code == 404


@pytest.mark.parametrize("path", ["/api/models", "/api/models/minilm", "/api/jobs/1", "/api/deployments/1"])
def test_management_route_without_key_is_401(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401


def test_wrong_key_is_401(client: TestClient) -> None:
    response = client.get("/api/models", headers={"Authorization": "Bearer tdk_wrong_key_000000000000"})
    assert response.status_code == 401


def test_error_body_shape(client: TestClient) -> None:
    assert set(client.get("/api/models/nothing", headers=AUTH).json()["error"]) == {"code", "message"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"generation": {"temperature": 2.5}}, "generation.temperature"),
        ({"generation": {"top_p": 0}}, "generation.top_p"),
        ({"generation": {"top_k": 101}}, "generation.top_k"),
        ({"generation": {"max_tokens": 0}}, "generation.max_tokens"),
        ({"generation": {"stop": ["a", "b", "c", "d", "e"]}}, "generation.stop"),
        ({"scaling": {"max_batch_size": 257}}, "scaling.max_batch_size"),
        ({"scaling": {"min_replicas": 0}}, "scaling.min_replicas"),
        ({"scaling": {"min_replicas": 3, "max_replicas": 2}}, "scaling.max_replicas"),
        ({"scaling": {"max_replicas": 51}}, "scaling.max_replicas"),
        ({"scaling": {"idle_undeploy_after": 0}}, "scaling.idle_undeploy_after"),
        ({"scaling": {"idle_undeploy_after": 10}}, "scaling.idle_undeploy_after"),
        ({"generation": {"max_tokens": 100_000}}, "generation.max_tokens"),
        ({"hardware": {"device": "cuda:3"}}, "hardware.device"),
        ({"hardware": {"threads": 0}}, "hardware.threads"),
        ({"optimization": {"quantization": "awq"}}, "optimization.quantization"),
        ({"hardware": {"device": "tpu"}}, "hardware.device"),
        ({"optimization": {"engine": "onnx"}}, "optimization.engine"),
        ({"optimization": {"engine": "vllm"}}, "optimization.engine"),
    ],
)
def test_invalid_parameter_is_422_naming_field(client: TestClient, minilm: dict[str, object],
                                                body: dict[str, object], field: str) -> None:
    response = client.post("/api/models/minilm/deployments", json=body, headers=AUTH)
    fields = [item["field"] for item in response.json()["error"]["details"]["fields"]]
    assert fields == [field]


def test_parameter_error_names_value_and_limit(client: TestClient, minilm: dict[str, object]) -> None:
    response = client.post("/api/models/minilm/deployments", json={"generation": {"max_tokens": 100_000}},
                           headers=AUTH)
    assert "100000 must be at most the context length of MiniLM (256)" in response.json()["error"]["message"]


def test_invalid_parameter_stores_nothing(client: TestClient, minilm: dict[str, object]) -> None:
    client.post("/api/models/minilm/deployments", json={"generation": {"temperature": 9}}, headers=AUTH)
    assert client.get("/api/models/minilm/deployments", headers=AUTH).json()["items"] == []


ALLOCATION = records.Allocation(parameters={}, description="", user_id=None, username="admin",
                                engine_version=None)


def test_history_pages_newest_first(client: TestClient, settings: Settings, minilm: dict[str, object]) -> None:
    database = client.app.state.services.database  # type: ignore[attr-defined]
    for _ in range(5):
        records.allocate_deployment(database, "minilm", ALLOCATION)
    first = client.get("/api/models/minilm/deployments?limit=3", headers=AUTH).json()
    second = client.get(f"/api/models/minilm/deployments?limit=3&cursor={first['next_cursor']}", headers=AUTH).json()
    versions = [item["version"] for item in first["items"] + second["items"]]
    assert versions == [5, 4, 3, 2, 1]


def test_history_last_page_has_no_cursor(client: TestClient, minilm: dict[str, object]) -> None:
    database = client.app.state.services.database  # type: ignore[attr-defined]
    records.allocate_deployment(database, "minilm", ALLOCATION)
    assert client.get("/api/models/minilm/deployments", headers=AUTH).json()["next_cursor"] is None


def test_history_bad_cursor_is_400(client: TestClient, minilm: dict[str, object]) -> None:
    assert client.get("/api/models/minilm/deployments?cursor=abc", headers=AUTH).status_code == 400


def test_endpoint_has_three_snippets(client: TestClient, minilm: dict[str, object]) -> None:
    snippets = client.get("/api/models/minilm/endpoint", headers=AUTH).json()["snippets"]
    assert sorted(snippets) == ["curl", "javascript", "python"]


def test_endpoint_url_uses_public_address(client: TestClient, minilm: dict[str, object]) -> None:
    assert client.get("/api/models/minilm/endpoint", headers=AUTH).json()["url"] == "http://127.0.0.1:18040/v1"


def test_login_returns_working_token(client: TestClient) -> None:
    token = client.post("/api/auth/login", json={"username": "admin", "password": "test-password-1"}).json()["token"]
    assert client.get("/api/models", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_login_wrong_password_is_401(client: TestClient) -> None:
    response = client.post("/api/auth/login", json={"username": "admin", "password": "wrong-password"})
    assert response.status_code == 401


def test_viewer_cannot_register(client: TestClient) -> None:
    client.post("/api/users", json={"username": "vera", "email": "vera@example.com", "password": "viewer-pass-1",
                                    "role": "viewer"}, headers=AUTH)
    token = client.post("/api/auth/login", json={"username": "vera", "password": "viewer-pass-1"}).json()["token"]
    response = client.post("/api/models", json={"name": "M", "path": str(minilm_model_path())},
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403


def test_client_config_is_private(client: TestClient, settings: Settings) -> None:
    assert settings.client_config_path.stat().st_mode & 0o777 == 0o600


def test_inference_without_key_is_openai_401(client: TestClient) -> None:
    body = client.post("/v1/completions", json={"model": "minilm", "prompt": "hi"}).json()
    assert body["error"]["type"] == "authentication_error"


def test_inference_malformed_json_is_400(client: TestClient) -> None:
    response = client.post("/v1/completions", content=b"{not json", headers=AUTH)
    assert response.status_code == 400


def test_inference_unknown_model_is_404(client: TestClient) -> None:
    response = client.post("/v1/completions", json={"model": "nothing", "prompt": "hi"}, headers=AUTH)
    assert response.status_code == 404


def test_inference_missing_model_names_param(client: TestClient) -> None:
    response = client.post("/v1/completions", json={"prompt": "hi"}, headers=AUTH)
    assert response.json()["error"]["param"] == "model"


def test_inference_never_deployed_is_503(client: TestClient, minilm: dict[str, object]) -> None:
    response = client.post("/v1/embeddings", json={"model": "minilm", "input": "hi"}, headers=AUTH)
    assert response.status_code == 503


def test_inference_body_over_limit_is_413(client: TestClient) -> None:
    response = client.post("/v1/completions", content=b"x" * (9 * 1024 * 1024), headers=AUTH)
    assert response.status_code == 413


def test_endpoint_fills_in_own_key(client: TestClient, minilm: dict[str, object]) -> None:
    response = client.post("/api/models/minilm/endpoint", json={"api_key": ADMIN_KEY}, headers=AUTH)
    assert f"Bearer {ADMIN_KEY}" in response.json()["snippets"]["curl"]


def test_endpoint_refuses_another_users_key(client: TestClient, minilm: dict[str, object]) -> None:
    client.post("/api/users", headers=AUTH, json={"username": "other", "email": "o@example.com",
                                                  "password": "other-password-1", "role": "developer"})
    issued = client.post("/api/keys", headers=AUTH, json={"name": "o", "scopes": ["inference"], "user": "other"})
    response = client.post("/api/models/minilm/endpoint", json={"api_key": issued.json()["key"]}, headers=AUTH)
    assert response.json()["error"]["code"] == "not_key_owner"


def test_endpoint_snippets_use_placeholder_by_default(client: TestClient, minilm: dict[str, object]) -> None:
    assert "$TUNEDOCK_API_KEY" in client.get("/api/models/minilm/endpoint", headers=AUTH).json()["snippets"]["curl"]


def test_nul_character_is_a_client_error(client: TestClient) -> None:
    # PostgreSQL cannot store or compare text with NUL; SQLite finds no such model.
    assert client.get("/api/models/a%00b", headers=AUTH).status_code < 500
