"""The inference gateway: usage metrics, access log and rate limits, with real processes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, deploy_and_wait, free_port, start_server, stop_server
from tunedock.demo.registry import demo_models_root

pytestmark = pytest.mark.e2e

LIMIT_PER_KEY = 3
PROMPT = {"prompt": "March 5, 2021", "max_tokens": 12, "temperature": 0}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server with a per-key limit, one deployed model, and a few requests sent to it."""
    home = tmp_path_factory.mktemp("gateway-home")
    server = start_server(home, free_port(), extra_env={"TUNEDOCK_RATE_LIMIT_PER_KEY": str(LIMIT_PER_KEY)})
    try:
        with server.client() as client:
            target = home / "models" / "gateway-t5"
            shutil.copytree(demo_models_root() / "date-normalizer-t5", target)
            model = client.post("/api/models", json={"name": "Gateway T5", "path": str(target)}).json()
            job = deploy_and_wait(client, model["slug"])
            answers = [client.post("/v1/completions", json={**PROMPT, "model": model["slug"]})
                       for _ in range(LIMIT_PER_KEY + 1)]
            detail = client.get(f"/api/deployments/{job['deployment_id']}").json()
            metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
            yield {"answers": answers, "detail": detail, "metrics": metrics, "server": server}
    finally:
        stop_server(server)


def test_requests_within_limit_succeed(limited: dict[str, Any]) -> None:
    assert [answer.status_code for answer in limited["answers"][:LIMIT_PER_KEY]] == [200] * LIMIT_PER_KEY


def test_request_over_limit_is_429(limited: dict[str, Any]) -> None:
    assert limited["answers"][-1].status_code == 429


def test_limit_answer_has_retry_after(limited: dict[str, Any]) -> None:
    assert int(limited["answers"][-1].headers["Retry-After"]) >= 1


def test_limit_answer_is_openai_shaped(limited: dict[str, Any]) -> None:
    assert limited["answers"][-1].json()["error"]["type"] == "rate_limit_error"


def test_detail_counts_requests(limited: dict[str, Any]) -> None:
    assert limited["detail"]["usage"]["requests"] == LIMIT_PER_KEY


def test_detail_counts_completion_tokens(limited: dict[str, Any]) -> None:
    assert limited["detail"]["usage"]["completion_tokens"] > 0


def test_metrics_count_requests_per_deployment(limited: dict[str, Any]) -> None:
    line = 'tunedock_inference_requests_total{deployment="Gateway T5_v1",model="gateway-t5",route="completions",' \
           'status="200"} 3.0'
    assert line in limited["metrics"]


def test_access_log_names_model_and_key(limited: dict[str, Any]) -> None:
    log = limited["server"].log()
    assert "completions model=gateway-t5 deployment=Gateway T5_v1 status=200" in log
