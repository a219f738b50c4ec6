"""A deploy whose model cannot load ends failed, with a reason and no process left behind."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, deploy_and_wait, model_server_pids
from tunedock.demo.registry import demo_models_root

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def broken_model_dir(server: ServerProcess) -> Path:
    """A copy of the GPT-2 demo model inside the server's home, to be corrupted after registration."""
    target = server.home / "models" / "broken-gpt2"
    shutil.copytree(demo_models_root() / "date-normalizer-gpt2", target)
    return target


@pytest.fixture(scope="module")
def failed_job(api: httpx.Client, broken_model_dir: Path) -> dict[str, Any]:
    registered = api.post("/api/models", json={"name": "Broken GPT-2", "path": str(broken_model_dir)})
    assert registered.status_code == 201, registered.text
    weights = broken_model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return deploy_and_wait(api, "broken-gpt-2")


def test_failed_load_fails_job(failed_job: dict[str, Any]) -> None:
    assert failed_job["status"] == "failed"


def test_failed_load_reason_quotes_replica(failed_job: dict[str, Any], api: httpx.Client) -> None:
    detail = api.get(f"/api/deployments/{failed_job['deployment_id']}").json()
    assert "model load failed" in detail["deployment"]["failure_reason"]


def test_failed_load_history_status(failed_job: dict[str, Any], api: httpx.Client) -> None:
    assert api.get("/api/models/broken-gpt-2/deployments").json()["items"][0]["status"] == "failed"


def test_failed_load_leaves_no_process(failed_job: dict[str, Any], broken_model_dir: Path) -> None:
    assert model_server_pids(broken_model_dir) == []


def test_failed_model_gets_503_with_reason(failed_job: dict[str, Any], api: httpx.Client) -> None:
    response = api.post("/v1/completions", json={"model": "broken-gpt-2", "prompt": "March 5, 2021 => "})
    assert "failed" in response.json()["error"]["message"]


def test_failed_deployment_cannot_be_undeployed(failed_job: dict[str, Any], api: httpx.Client) -> None:
    assert api.post(f"/api/deployments/{failed_job['deployment_id']}/undeploy").status_code == 409
