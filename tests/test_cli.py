"""The tunedock CLI against a real server: register, deploy, history, endpoint, un-deploy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_PASSWORD, ServerProcess, free_port
from tunedock.demo.registry import demo_models_root

pytestmark = pytest.mark.e2e

GPT2_DIR = demo_models_root() / "date-normalizer-gpt2"
MODEL_NAME = "Dates GPT-2 CLI"
CLI_TIMEOUT = 300


def tunedock(server: ServerProcess, *args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    environment = server.environment()
    if home is not None:
        environment["TUNEDOCK_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "tunedock", *args], capture_output=True, text=True,
                          env=environment, timeout=CLI_TIMEOUT)


def tunedock_json(server: ServerProcess, *args: str) -> Any:
    result = tunedock(server, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def registered(server: ServerProcess) -> dict[str, Any]:
    model: dict[str, Any] = tunedock_json(server, "models", "add", str(GPT2_DIR), "--name", MODEL_NAME,
                                          "--tag", "dates", "--description", "CLI test model")
    return model


@pytest.fixture(scope="module")
def deployed(server: ServerProcess, registered: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return tunedock(server, "deploy", MODEL_NAME, "--temperature", "0", "--max-tokens", "12", "--wait")


def test_models_add_detects_causal_format(registered: dict[str, Any]) -> None:
    assert registered["format"] == "causal-lm"


def test_models_list_json_contains_model(server: ServerProcess, registered: dict[str, Any]) -> None:
    slugs = [model["slug"] for model in tunedock_json(server, "models", "list")]
    assert registered["slug"] in slugs


def test_models_list_table_has_header(server: ServerProcess, registered: dict[str, Any]) -> None:
    assert tunedock(server, "models", "list").stdout.startswith("NAME")


def test_deploy_wait_exits_zero(deployed: subprocess.CompletedProcess[str]) -> None:
    assert deployed.returncode == 0, deployed.stderr


def test_deploy_wait_shows_progress(deployed: subprocess.CompletedProcess[str]) -> None:
    assert "passed its health check" in deployed.stdout


def test_history_table_marks_live_version(server: ServerProcess, deployed: subprocess.CompletedProcess[str]) -> None:
    assert f"* {MODEL_NAME}_v1" in tunedock(server, "history", MODEL_NAME).stdout


def test_history_json_has_items(server: ServerProcess, deployed: subprocess.CompletedProcess[str]) -> None:
    assert tunedock_json(server, "history", MODEL_NAME)["items"][0]["status"] == "success"


def test_endpoint_prints_three_formats(server: ServerProcess, deployed: subprocess.CompletedProcess[str]) -> None:
    output = tunedock(server, "endpoint", MODEL_NAME).stdout
    assert all(title in output for title in ("--- cURL ---", "--- Python ---", "--- JavaScript ---"))


def test_invalid_parameter_exits_one(server: ServerProcess, registered: dict[str, Any]) -> None:
    assert tunedock(server, "deploy", MODEL_NAME, "--temperature", "7").returncode == 1


def test_invalid_parameter_names_field(server: ServerProcess, registered: dict[str, Any]) -> None:
    assert "generation.temperature" in tunedock(server, "deploy", MODEL_NAME, "--temperature", "7").stderr


def test_unreachable_server_message(server: ServerProcess, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "tunedock", "models", "list", "--url", "http://127.0.0.1:9"],
                            capture_output=True, text=True, env=server.environment(), timeout=CLI_TIMEOUT)
    assert "Cannot reach the Tunedock server" in result.stderr


def test_undeploy_exits_zero(server: ServerProcess, deployed: subprocess.CompletedProcess[str]) -> None:
    result = tunedock(server, "undeploy", MODEL_NAME)
    assert result.returncode == 0, result.stderr


def test_undeploy_records_user(server: ServerProcess, deployed: subprocess.CompletedProcess[str]) -> None:
    tunedock(server, "undeploy", MODEL_NAME)
    newest = tunedock_json(server, "history", MODEL_NAME)["items"][0]
    with server.client() as client:
        undeployment = client.get(f"/api/deployments/{newest['id']}").json()["undeployment"]
    assert undeployment["undeployed_by"] == "admin"


def test_undeploy_without_live_deployment_fails(server: ServerProcess, deployed: subprocess.CompletedProcess[str]) -> None:
    tunedock(server, "undeploy", MODEL_NAME)
    assert "has no live deployment" in tunedock(server, "undeploy", MODEL_NAME).stderr


def test_second_server_on_same_home_is_refused(server: ServerProcess) -> None:
    result = subprocess.run([sys.executable, "-m", "tunedock", "serve", "--port", str(free_port())],
                            env=server.environment(), capture_output=True, text=True, timeout=60)
    assert "is in use by the Tunedock server at" in result.stderr


def test_server_on_taken_port_names_the_fix(server: ServerProcess, tmp_path: Path) -> None:
    port = server.url.rsplit(":", 1)[1]
    result = subprocess.run([sys.executable, "-m", "tunedock", "serve", "--port", port, "--home", str(tmp_path)],
                            env=server.environment(), capture_output=True, text=True, timeout=60)
    assert "--port or TUNEDOCK_PORT" in result.stderr


# Accounts: sign-in, users, keys and the audit trail ------------------------------------------


def test_login_writes_private_config(server: ServerProcess, tmp_path: Path) -> None:
    environment = {**server.environment(), "TUNEDOCK_HOME": str(tmp_path)}
    environment.pop("TUNEDOCK_TOKEN")
    subprocess.run([sys.executable, "-m", "tunedock", "login", "--username", "admin", "--password",
                    ADMIN_PASSWORD], env=environment, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=True)
    assert (tmp_path / "client.json").stat().st_mode & 0o777 == 0o600


def test_login_token_works(server: ServerProcess, tmp_path: Path) -> None:
    environment = {**server.environment(), "TUNEDOCK_HOME": str(tmp_path)}
    environment.pop("TUNEDOCK_TOKEN")
    subprocess.run([sys.executable, "-m", "tunedock", "login", "--username", "admin", "--password",
                    ADMIN_PASSWORD], env=environment, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=True)
    listed = subprocess.run([sys.executable, "-m", "tunedock", "models", "list"], env=environment,
                            capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert listed.returncode == 0, listed.stderr


def test_users_list_names_admin(server: ServerProcess) -> None:
    assert "admin" in [user["username"] for user in tunedock_json(server, "users", "list")]


def test_keys_create_then_revoke(server: ServerProcess) -> None:
    issued = tunedock_json(server, "keys", "create", "cli key", "--scope", "inference")
    tunedock(server, "keys", "revoke", str(issued["id"]))
    revoked = [key for key in tunedock_json(server, "keys", "list") if key["id"] == issued["id"]]
    assert revoked[0]["revoked_at"] is not None


def test_audit_shows_key_creation(server: ServerProcess) -> None:
    tunedock_json(server, "keys", "create", "audited key")
    assert tunedock_json(server, "audit", "--action", "key.create")[0]["actor"] == "admin"
