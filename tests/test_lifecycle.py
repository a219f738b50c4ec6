"""Versions, rollbacks, diffs, cancellation and serving through a redeploy, on real processes."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, ServerProcess, deploy_and_wait, model_server_pids, wait_for_job
from tunedock.demo.registry import demo_models_root

pytestmark = pytest.mark.e2e

CONCURRENT_DEPLOYS = 20
T5_PROMPT = {"prompt": "March 5, 2021", "max_tokens": 12, "temperature": 0}


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def register_copy(api: httpx.Client, server: ServerProcess, name: str, folder: str) -> dict[str, Any]:
    """Register a private copy of the T5 demo model, so a test may change its files."""
    target = server.home / "models" / folder
    shutil.copytree(demo_models_root() / "date-normalizer-t5", target)
    response = api.post("/api/models", json={"name": name, "path": str(target)})
    assert response.status_code == 201, response.text
    model: dict[str, Any] = response.json()
    return model


# Concurrent deploys and cancellation -------------------------------------------------------


@pytest.fixture(scope="module")
def burst(api: httpx.Client, server: ServerProcess) -> dict[str, Any]:
    """Twenty deploy requests for one model at the same moment, then every job cancelled."""
    model = register_copy(api, server, "Burst T5", "burst-t5")
    barrier = threading.Barrier(CONCURRENT_DEPLOYS)

    def deploy(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
            barrier.wait()
            return client.post(f"/api/models/{model['slug']}/deployments", json={})

    with ThreadPoolExecutor(CONCURRENT_DEPLOYS) as pool:
        responses = list(pool.map(deploy, range(CONCURRENT_DEPLOYS)))
    cancels = [api.post(f"/api/jobs/{response.json()['job']['id']}/cancel") for response in responses]
    jobs = [wait_for_job(api, response.json()["job"]["id"]) for response in responses]
    return {"model": model, "responses": responses, "cancels": cancels, "jobs": jobs}


def test_concurrent_deploys_are_all_accepted(burst: dict[str, Any]) -> None:
    assert [response.status_code for response in burst["responses"]] == [202] * CONCURRENT_DEPLOYS


def test_concurrent_deploys_get_versions_one_to_twenty(burst: dict[str, Any]) -> None:
    names = sorted((response.json()["deployment"]["name"] for response in burst["responses"]),
                   key=lambda name: int(name.rsplit("_v", 1)[1]))
    assert names == [f"Burst T5_v{number}" for number in range(1, CONCURRENT_DEPLOYS + 1)]


def test_cancelled_jobs_fail(burst: dict[str, Any]) -> None:
    assert {job["status"] for job in burst["jobs"]} == {"failed"}


def test_cancelled_job_names_who_cancelled(burst: dict[str, Any]) -> None:
    assert {job["error"] for job in burst["jobs"]} == {"cancelled by admin"}


def test_cancelled_deployment_records_reason(burst: dict[str, Any], api: httpx.Client) -> None:
    items = api.get(f"/api/models/{burst['model']['slug']}/deployments?limit=200").json()["items"]
    assert {item["failure_reason"] for item in items} == {"cancelled by admin"}


def test_cancel_leaves_no_process(burst: dict[str, Any]) -> None:
    assert model_server_pids(Path(burst["model"]["path"])) == []


def test_cancel_of_finished_job_is_409(burst: dict[str, Any], api: httpx.Client) -> None:
    assert api.post(f"/api/jobs/{burst['jobs'][0]['id']}/cancel").status_code == 409


def test_next_deploy_after_burst_is_version_21(burst: dict[str, Any], api: httpx.Client) -> None:
    response = api.post(f"/api/models/{burst['model']['slug']}/deployments", json={})
    api.post(f"/api/jobs/{response.json()['job']['id']}/cancel")
    assert response.json()["deployment"]["version"] == CONCURRENT_DEPLOYS + 1


# Redeploy, rollback and diff -----------------------------------------------------------------


class Traffic:
    """Sends completion requests in a loop and keeps every status code."""

    def __init__(self, url: str, slug: str) -> None:
        self.url = url
        self.body = {**T5_PROMPT, "model": slug}
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=60) as client:
            while not self._stop.is_set():
                self.statuses.append(client.post("/v1/completions", json=self.body).status_code)


@pytest.fixture(scope="module")
def versions(api: httpx.Client, server: ServerProcess) -> dict[str, Any]:
    """v1 greedy, v2 with other defaults under continuous traffic, v3 a rollback to v1."""
    model = register_copy(api, server, "Rollback T5", "rollback-t5")
    slug = model["slug"]
    first = deploy_and_wait(api, slug, {"generation": {"temperature": 0, "max_tokens": 16}})
    with Traffic(server.url, slug) as traffic:
        time.sleep(0.5)
        second = deploy_and_wait(api, slug, {"generation": {"temperature": 0.5, "max_tokens": 20}})
        time.sleep(0.5)
    rollback = api.post(f"/api/deployments/{first['deployment_id']}/redeploy", json={})
    assert rollback.status_code == 202, rollback.text
    third = wait_for_job(api, rollback.json()["job"]["id"])
    return {"model": model, "jobs": [first, second, third], "traffic": traffic.statuses}


def detail(api: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = api.get(f"/api/deployments/{job['deployment_id']}").json()
    return found


def test_all_versions_deploy(versions: dict[str, Any]) -> None:
    assert [job["status"] for job in versions["jobs"]] == ["success"] * 3


def test_traffic_ran_during_redeploy(versions: dict[str, Any]) -> None:
    assert len(versions["traffic"]) > 10


def test_no_request_failed_during_redeploy(versions: dict[str, Any]) -> None:
    assert set(versions["traffic"]) == {200}


def test_redeploy_events_switch_then_drain(versions: dict[str, Any]) -> None:
    stages = [event["stage"] for event in versions["jobs"][1]["events"]]
    assert stages.index("switching_traffic") < stages.index("draining_previous")


def test_superseded_version_names_successor(versions: dict[str, Any], api: httpx.Client) -> None:
    undeployment = detail(api, versions["jobs"][0])["undeployment"]
    assert undeployment["reason"] == "superseded by Rollback T5_v2"


def test_rollback_records_its_origin(versions: dict[str, Any], api: httpx.Client) -> None:
    assert detail(api, versions["jobs"][2])["general"]["redeploy_of"] == "Rollback T5_v1"


def test_rollback_copies_parameters(versions: dict[str, Any], api: httpx.Client) -> None:
    parameters = [detail(api, versions["jobs"][index])["general"]["parameters"] for index in (0, 2)]
    assert parameters[0] == parameters[1]


def test_detail_lists_changes_from_previous(versions: dict[str, Any], api: httpx.Client) -> None:
    changes = detail(api, versions["jobs"][1])["general"]["changes"]
    assert {change["field"] for change in changes} == {"generation.temperature", "generation.max_tokens"}


def test_detail_records_files_hash(versions: dict[str, Any], api: httpx.Client) -> None:
    assert detail(api, versions["jobs"][0])["general"]["files_hash"].startswith("sha256:")


def test_detail_records_engine_version(versions: dict[str, Any], api: httpx.Client) -> None:
    assert detail(api, versions["jobs"][0])["general"]["engine_version"]


def test_diff_names_changed_field(versions: dict[str, Any], api: httpx.Client) -> None:
    first, second = (job["deployment_id"] for job in versions["jobs"][:2])
    changes = api.get(f"/api/deployments/{first}/diff/{second}").json()["changes"]
    assert {"field": "generation.temperature", "before": 0.0, "after": 0.5} in changes


def test_diff_of_rollback_and_origin_is_empty(versions: dict[str, Any], api: httpx.Client) -> None:
    first, third = versions["jobs"][0]["deployment_id"], versions["jobs"][2]["deployment_id"]
    assert api.get(f"/api/deployments/{first}/diff/{third}").json()["changes"] == []


def test_history_filters_by_status(versions: dict[str, Any], api: httpx.Client) -> None:
    page = api.get(f"/api/models/{versions['model']['slug']}/deployments?status=failed").json()
    assert page["items"] == []


def test_version_lookup_by_number(versions: dict[str, Any], api: httpx.Client) -> None:
    found = api.get(f"/api/models/{versions['model']['slug']}/deployments/2").json()
    assert found["general"]["name"] == "Rollback T5_v2"


def test_redeploy_of_changed_files_is_refused(versions: dict[str, Any], api: httpx.Client) -> None:
    (Path(versions["model"]["path"]) / "NOTES.md").write_text("retrained on more dates\n")
    response = api.post(f"/api/deployments/{versions['jobs'][0]['deployment_id']}/redeploy", json={})
    assert response.json()["error"]["code"] == "model_files_changed"


def test_redeploy_of_changed_files_proceeds_when_allowed(versions: dict[str, Any], api: httpx.Client) -> None:
    (Path(versions["model"]["path"]) / "NOTES.md").write_text("retrained on more dates, take two\n")
    response = api.post(f"/api/deployments/{versions['jobs'][0]['deployment_id']}/redeploy",
                        json={"allow_changed_files": True})
    job = wait_for_job(api, response.json()["job"]["id"])
    assert job["status"] == "success"


def test_job_events_stream_ends_with_job(versions: dict[str, Any], api: httpx.Client) -> None:
    stream = api.get(f"/api/jobs/{versions['jobs'][0]['id']}/events").text
    assert stream.rstrip().splitlines()[-2] == "event: end"


def test_job_events_stream_resumes_after_last_id(versions: dict[str, Any], api: httpx.Client) -> None:
    stream = api.get(f"/api/jobs/{versions['jobs'][0]['id']}/events", headers={"Last-Event-ID": "2"}).text
    assert stream.startswith("id: 3\n")


# Un-deploy and soft delete -------------------------------------------------------------------


@pytest.fixture(scope="module")
def retired(api: httpx.Client, server: ServerProcess) -> dict[str, Any]:
    """A model deployed, un-deployed by hand and then deleted."""
    model = register_copy(api, server, "Retired T5", "retired-t5")
    deployed = deploy_and_wait(api, model["slug"])
    undeploy = api.post(f"/api/deployments/{deployed['deployment_id']}/undeploy")
    wait_for_job(api, undeploy.json()["id"])
    inference = api.post("/v1/completions", json={**T5_PROMPT, "model": model["slug"]})
    deleted = api.delete(f"/api/models/{model['slug']}")
    return {"model": model, "deployed": deployed, "inference": inference, "deleted": deleted}


def test_request_after_undeploy_is_503(retired: dict[str, Any]) -> None:
    assert retired["inference"].status_code == 503


def test_request_after_undeploy_names_model(retired: dict[str, Any]) -> None:
    assert "retired-t5" in retired["inference"].json()["error"]["message"]


def test_manual_undeploy_records_user(retired: dict[str, Any], api: httpx.Client) -> None:
    assert detail(api, retired["deployed"])["undeployment"]["undeployed_by"] == "admin"


def test_delete_model_succeeds(retired: dict[str, Any]) -> None:
    assert retired["deleted"].status_code == 200


def test_deleted_model_is_not_listed(retired: dict[str, Any], api: httpx.Client) -> None:
    slugs = [model["slug"] for model in api.get("/api/models").json()["items"]]
    assert "retired-t5" not in slugs


def test_deleted_model_history_stays_readable(retired: dict[str, Any], api: httpx.Client) -> None:
    page = api.get("/api/models/retired-t5/deployments").json()
    assert [item["name"] for item in page["items"]] == ["Retired T5_v1"]


def test_deleted_model_cannot_deploy(retired: dict[str, Any], api: httpx.Client) -> None:
    assert api.post("/api/models/retired-t5/deployments", json={}).status_code == 404


def test_live_model_cannot_be_deleted(versions: dict[str, Any], api: httpx.Client) -> None:
    assert api.delete(f"/api/models/{versions['model']['slug']}").json()["error"]["code"] == "model_live"


def test_replica_refuses_calls_without_gateway_token(versions: dict[str, Any], api: httpx.Client,
                                                     server: ServerProcess) -> None:
    live_id = api.get(f"/api/models/{versions['model']['slug']}").json()["live_deployment_id"]
    port = (server.home / "logs" / "replicas" / f"deployment-{live_id}-replica-0.port").read_text().strip()
    response = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=T5_PROMPT, timeout=30)
    assert response.status_code == 401
