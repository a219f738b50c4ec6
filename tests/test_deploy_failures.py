"""A deploy whose model cannot load ends failed, with a reason and no process left behind."""

from __future__ import annotations

import json
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


# More ways a model can fail to load, each ending failed with the model server's reason ----------


def break_by_removing_weights(directory: Path) -> None:
    (directory / "model.safetensors").unlink()


def break_model_code(directory: Path) -> None:
    # 128 embedding dimensions cannot split into 7 heads: building the model raises.
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "n_head": 7}))


@pytest.fixture(scope="module", params=[break_by_removing_weights, break_model_code],
                ids=["missing-weights", "exception-in-model-code"])
def other_failure(request: pytest.FixtureRequest, api: httpx.Client, server: ServerProcess) -> dict[str, Any]:
    name = f"Broken {request.param.__name__}"
    target = server.home / "models" / request.param.__name__
    shutil.copytree(demo_models_root() / "date-normalizer-gpt2", target)
    registered = api.post("/api/models", json={"name": name, "path": str(target)})
    assert registered.status_code == 201, registered.text
    request.param(target)
    job = deploy_and_wait(api, registered.json()["slug"])
    return {"job": job, "path": target}


def test_other_failure_fails_job(other_failure: dict[str, Any]) -> None:
    assert other_failure["job"]["status"] == "failed"


def test_other_failure_reason_is_from_model_server(other_failure: dict[str, Any]) -> None:
    assert "model load failed" in other_failure["job"]["error"]


def test_other_failure_leaves_no_process(other_failure: dict[str, Any]) -> None:
    assert model_server_pids(other_failure["path"]) == []


# A failed redeploy leaves the previous version serving ------------------------------------------


@pytest.fixture(scope="module")
def failed_redeploy(api: httpx.Client, server: ServerProcess) -> dict[str, Any]:
    target = server.home / "models" / "steady-t5"
    shutil.copytree(demo_models_root() / "date-normalizer-t5", target)
    registered = api.post("/api/models", json={"name": "Steady T5", "path": str(target)})
    assert registered.status_code == 201, registered.text
    first = deploy_and_wait(api, "steady-t5")
    weights = target / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:1000])
    second = deploy_and_wait(api, "steady-t5")
    weights.write_bytes(intact)
    answer = api.post("/v1/completions", json={"model": "steady-t5", "prompt": "March 5, 2021", "temperature": 0})
    page = api.get("/api/models/steady-t5/deployments").json()
    return {"first": first, "second": second, "answer": answer, "page": page}


def test_failed_redeploy_fails(failed_redeploy: dict[str, Any]) -> None:
    assert failed_redeploy["second"]["status"] == "failed"


def test_previous_version_keeps_serving(failed_redeploy: dict[str, Any]) -> None:
    assert failed_redeploy["answer"].json()["choices"][0]["text"] == "2021-03-05"


def test_previous_version_stays_live(failed_redeploy: dict[str, Any]) -> None:
    assert [item["name"] for item in failed_redeploy["page"]["items"] if item["live"]] == ["Steady T5_v1"]


def test_history_shows_the_failed_redeploy(failed_redeploy: dict[str, Any]) -> None:
    assert failed_redeploy["page"]["items"][0]["status"] == "failed"
