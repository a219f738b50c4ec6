"""Crashes of replicas and of the server itself, with real processes and signals.

Each scenario runs its own server with a short supervision interval, so that restarts,
crash limits and idle un-deploys happen within seconds.
"""

from __future__ import annotations

import os
import shutil
from email import policy
from email.parser import BytesParser
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import (
    ServerProcess,
    deploy_and_wait,
    free_port,
    model_server_pids,
    start_server,
    stop_server,
    wait_for_job,
)
from tunedock.demo.registry import demo_models_root, minilm_model_path

pytestmark = pytest.mark.e2e

FAST_SUPERVISION = {"TUNEDOCK_SUPERVISE_INTERVAL": "0.3", "TUNEDOCK_CRASH_LIMIT": "3",
                    "TUNEDOCK_CRASH_WINDOW": "120", "TUNEDOCK_MIN_IDLE_UNDEPLOY_AFTER": "1"}
WAIT_SECONDS = 90.0
T5_PROMPT = {"prompt": "March 5, 2021", "max_tokens": 12, "temperature": 0}


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def copy_t5(home: Path, folder: str) -> Path:
    target = home / "models" / folder
    shutil.copytree(demo_models_root() / "date-normalizer-t5", target)
    return target


def register(client: httpx.Client, name: str, path: Path) -> dict[str, Any]:
    response = client.post("/api/models", json={"name": name, "path": str(path)})
    assert response.status_code == 201, response.text
    model: dict[str, Any] = response.json()
    return model


@pytest.fixture(scope="module")
def fast_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_server(tmp_path_factory.mktemp("fast-home"), free_port(), extra_env=FAST_SUPERVISION)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def fast_api(fast_server: ServerProcess) -> Iterator[httpx.Client]:
    with fast_server.client() as client:
        yield client


# A replica that dies is restarted; one that keeps dying takes its deployment down -----------


@pytest.fixture(scope="module")
def crashing(fast_api: httpx.Client, fast_server: ServerProcess) -> dict[str, Any]:
    path = copy_t5(fast_server.home, "crash-t5")
    model = register(fast_api, "Crash T5", path)
    job = deploy_and_wait(fast_api, model["slug"])
    first_pid = wait_until(lambda: model_server_pids(path), "the replica process")[0]
    os.kill(first_pid, signal.SIGKILL)
    restarted_pid = wait_until(lambda: [pid for pid in model_server_pids(path) if pid != first_pid],
                               "a restarted replica")[0]
    answer = wait_until(lambda: _complete(fast_api, model["slug"]), "an answer from the restarted replica")
    # Crash limit 3: the first kill above was one crash, two more take the deployment down.
    for _ in range(2):
        pids = wait_until(lambda: model_server_pids(path), "a replica to kill")
        os.kill(pids[0], signal.SIGKILL)
        wait_until(lambda: pids[0] not in model_server_pids(path), "the killed replica to vanish")
    record = wait_until(lambda: _undeployment(fast_api, job["deployment_id"]), "the crash un-deploy")
    after = fast_api.post("/v1/completions", json={**T5_PROMPT, "model": model["slug"]})
    detail = fast_api.get(f"/api/deployments/{job['deployment_id']}").json()
    return {"path": path, "first_pid": first_pid, "restarted_pid": restarted_pid, "answer": answer,
            "undeployment": record, "after": after, "home": fast_server.home, "detail": detail}


def _complete(client: httpx.Client, slug: str) -> httpx.Response | None:
    response = client.post("/v1/completions", json={**T5_PROMPT, "model": slug})
    return response if response.status_code == 200 else None


def _undeployment(client: httpx.Client, deployment_id: int) -> dict[str, Any] | None:
    section: dict[str, Any] | None = client.get(f"/api/deployments/{deployment_id}").json()["undeployment"]
    return section if section and section["ended_at"] else None


def test_killed_replica_is_replaced(crashing: dict[str, Any]) -> None:
    assert crashing["restarted_pid"] != crashing["first_pid"]


def test_restarted_replica_answers(crashing: dict[str, Any]) -> None:
    assert crashing["answer"].json()["choices"][0]["text"] == "2021-03-05"


def test_repeated_crashes_undeploy_by_system(crashing: dict[str, Any]) -> None:
    assert crashing["undeployment"]["undeployed_by"] == "system"


def test_crash_undeploy_reason_says_crashed(crashing: dict[str, Any]) -> None:
    assert crashing["undeployment"]["reason"].startswith("crashed:")


def test_crash_reason_names_the_signal(crashing: dict[str, Any]) -> None:
    assert "SIGKILL" in crashing["undeployment"]["reason"]


def test_detail_counts_replica_failures(crashing: dict[str, Any]) -> None:
    # Three kills; a restart that failed to start would add one more.
    assert crashing["detail"]["deployment"]["replica_failures"] >= 3


def test_detail_lists_restarted_replicas(crashing: dict[str, Any]) -> None:
    assert len({replica["pid"] for replica in crashing["detail"]["deployment"]["replicas"]}) >= 3


def test_request_after_crash_undeploy_is_503(crashing: dict[str, Any]) -> None:
    assert crashing["after"].status_code == 503


def test_crash_503_says_crashed(crashing: dict[str, Any]) -> None:
    assert "was un-deployed by system (crashed: " in crashing["after"].json()["error"]["message"]


def test_crash_503_hides_server_paths(crashing: dict[str, Any]) -> None:
    assert str(crashing["home"]) not in crashing["after"].json()["error"]["message"]


def test_crash_undeploy_leaves_no_process(crashing: dict[str, Any]) -> None:
    assert wait_until(lambda: model_server_pids(crashing["path"]) == [], "no process left", timeout=30)


# Idle deployments are taken down ---------------------------------------------------------------


@pytest.fixture(scope="module")
def idle(fast_api: httpx.Client, fast_server: ServerProcess) -> dict[str, Any]:
    path = copy_t5(fast_server.home, "idle-t5")
    model = register(fast_api, "Idle T5", path)
    job = deploy_and_wait(fast_api, model["slug"], {"scaling": {"idle_undeploy_after": 2}})
    record = wait_until(lambda: _undeployment(fast_api, job["deployment_id"]), "the idle un-deploy")
    subjects = wait_until(lambda: _outbox_subjects(fast_server.home, "Idle T5_v1"), "the idle emails")
    audited = fast_api.get("/api/audit", params={"user": "system", "target": "Idle T5_v1"}).json()["items"]
    return {"path": path, "undeployment": record, "subjects": subjects, "audited": audited}


def _outbox_subjects(home: Path, fragment: str) -> list[str] | None:
    """Subjects of the .eml files written for a deployment, once its un-deploy email is there."""
    subjects = []
    for path in (home / "outbox").glob("*.eml"):
        subject = BytesParser(policy=policy.default).parsebytes(path.read_bytes())["Subject"]
        if fragment in subject:
            subjects.append(subject)
    return sorted(subjects) if any("was un-deployed" in subject for subject in subjects) else None


def test_idle_deployment_undeployed_by_system(idle: dict[str, Any]) -> None:
    assert idle["undeployment"]["undeployed_by"] == "system"


def test_idle_undeploy_reason(idle: dict[str, Any]) -> None:
    assert idle["undeployment"]["reason"] == "idle: no request for 2 s"


def test_system_undeploy_is_audited(idle: dict[str, Any]) -> None:
    assert [event["action"] for event in idle["audited"]] == ["deployment.undeploy"]


def test_idle_warning_email_precedes_undeploy(idle: dict[str, Any]) -> None:
    assert "[Tunedock] Idle T5_v1 will be un-deployed in 1 minute" in idle["subjects"]


def test_idle_undeploy_email_names_reason(idle: dict[str, Any]) -> None:
    assert "[Tunedock] Idle T5_v1 was un-deployed (idle)" in idle["subjects"]


# The server killed during a deploy, then started again -----------------------------------------


@pytest.fixture(scope="module")
def killed_mid_deploy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("killed-home")
    port = free_port()
    server = start_server(home, port)
    with server.client() as client:
        live_path = copy_t5(home, "live-t5")
        live_model = register(client, "Live T5", live_path)
        deploy_and_wait(client, live_model["slug"])
        live_pid = model_server_pids(live_path)[0]
        loading_path = copy_t5(home, "loading-t5")
        loading = register(client, "Loading T5", loading_path)
        accepted = client.post(f"/api/models/{loading['slug']}/deployments", json={}).json()
        wait_until(lambda: model_server_pids(loading_path), "the replica process to spawn")
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    restarted = start_server(home, port)
    try:
        with restarted.client() as client:
            job = wait_for_job(client, accepted["job"]["id"])
            wait_until(lambda: client.get(f"/api/models/{live_model['slug']}/endpoint").json()["live_deployment"],
                       "the live deployment to be restored")
            answer = client.post("/v1/completions", json={**T5_PROMPT, "model": live_model["slug"]})
            undeploy = client.post(f"/api/deployments/{accepted['deployment']['id']}/undeploy")
            yield {"job": job, "loading_path": loading_path, "live_path": live_path, "live_pid": live_pid,
                   "answer": answer, "undeploy": undeploy}
    finally:
        stop_server(restarted)


def test_interrupted_deploy_fails_with_reason(killed_mid_deploy: dict[str, Any]) -> None:
    assert killed_mid_deploy["job"]["error"] == "interrupted: server restarted"


def test_interrupted_deploy_leaves_no_process(killed_mid_deploy: dict[str, Any]) -> None:
    assert model_server_pids(killed_mid_deploy["loading_path"]) == []


def test_interrupted_deployment_is_not_undeployable(killed_mid_deploy: dict[str, Any]) -> None:
    assert killed_mid_deploy["undeploy"].json()["error"]["code"] == "deployment_failed"


def test_live_deployment_serves_after_restart(killed_mid_deploy: dict[str, Any]) -> None:
    assert killed_mid_deploy["answer"].status_code == 200


def test_healthy_replica_is_adopted_not_replaced(killed_mid_deploy: dict[str, Any]) -> None:
    assert model_server_pids(killed_mid_deploy["live_path"]) == [killed_mid_deploy["live_pid"]]


# SIGTERM lets in-flight requests finish, then stops replicas ------------------------------------


@pytest.fixture(scope="module")
def terminated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("terminated-home")
    server = start_server(home, free_port())
    with server.client() as client:
        model = register(client, "MiniLM", minilm_model_path())
        deploy_and_wait(client, model["slug"])
        outcome: dict[str, Any] = {}

        def slow_request() -> None:
            # Two thousand sentences keep the replica busy for a few seconds.
            body = {"model": model["slug"], "input": [f"sentence number {n} about dates" for n in range(2000)]}
            outcome["response"] = client.post("/v1/embeddings", json=body, timeout=120)

        worker = threading.Thread(target=slow_request)
        worker.start()
        time.sleep(1.0)
        server.process.send_signal(signal.SIGTERM)
        worker.join(timeout=120)
        server.process.wait(timeout=120)
    log = server.log()
    return {"response": outcome.get("response"), "log": log, "returncode": server.process.returncode,
            "home": home, "database_url": server.database_url}


def test_sigterm_lets_in_flight_request_finish(terminated: dict[str, Any]) -> None:
    assert terminated["response"].status_code == 200


def test_sigterm_shuts_down_cleanly(terminated: dict[str, Any]) -> None:
    # uvicorn re-raises SIGTERM after its shutdown, so the exit status is -15 either way.
    assert "Tunedock stopped" in terminated["log"]


def test_sigterm_stops_replicas(terminated: dict[str, Any]) -> None:
    # The replica's port file lies in the server's home, so its command line names the home.
    assert model_server_pids(terminated["home"]) == []


def test_sigterm_records_stopped_replicas(terminated: dict[str, Any]) -> None:
    engine = create_engine(terminated["database_url"])
    with engine.connect() as connection:
        statuses = {row[0] for row in connection.execute(text("SELECT status FROM replicas"))}
    engine.dispose()
    assert statuses == {"stopped"}


# Load adds replicas up to max_replicas; quiet removes them down to min_replicas -----------------


@pytest.fixture(scope="module")
def scaled(fast_api: httpx.Client, fast_server: ServerProcess) -> dict[str, Any]:
    path = copy_t5(fast_server.home, "scaled-t5")
    model = register(fast_api, "Scaled T5", path)
    deploy_and_wait(fast_api, model["slug"], {"scaling": {
        "min_replicas": 1, "max_replicas": 2, "max_batch_size": 1, "scale_up_delay": 0, "scale_down_delay": 1}})
    stop = threading.Event()
    statuses: list[int] = []

    def load() -> None:
        with fast_server.client() as client:
            while not stop.is_set():
                statuses.append(client.post("/v1/completions", json={**T5_PROMPT, "model": model["slug"]}).status_code)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        peak = wait_until(lambda: len(model_server_pids(path)) == 2 and 2, "a second replica under load")
        time.sleep(1.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    settled = wait_until(lambda: len(model_server_pids(path)) == 1 and 1, "one replica after the load")
    return {"peak": peak, "settled": settled, "statuses": statuses}


def test_load_scales_up_to_max_replicas(scaled: dict[str, Any]) -> None:
    assert scaled["peak"] == 2


def test_quiet_scales_down_to_min_replicas(scaled: dict[str, Any]) -> None:
    assert scaled["settled"] == 1


def test_requests_succeed_while_scaling(scaled: dict[str, Any]) -> None:
    assert set(scaled["statuses"]) == {200}
