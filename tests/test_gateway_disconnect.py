"""A client that disconnects from the gateway mid-generation cancels the generation on the replica.

Each case sends one long generation to the control plane's /v1 routes over a raw socket,
closes the socket while the replica is decoding, and then reads the replica's /stats.
The model is the tiny random T5 of the model-server tests. Its decoder has no length
limit and greedy decoding does not reach end-of-sequence within LONG_GENERATION_TOKENS
steps, so the request keeps the replica busy until it is cancelled. The demo models
cannot do this. The T5 date normalizer reached end-of-sequence within 26 tokens in trials
at temperatures 0 to 2, the GPT-2 one has a 64-token context, and the API has no field
that makes a model ignore end-of-sequence.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import ServerProcess, deploy_and_wait
from tests.test_inference_inputs import create_key
from tests.test_model_server import REQUEST_TIMEOUT_SECONDS, build_tiny_t5
from tests.test_runtime_streaming import LONG_GENERATION_TOKENS, STATS_TIMEOUT_SECONDS

pytestmark = pytest.mark.e2e

MODEL_NAME = "Disconnect T5"
# The replica drops a cancelled request before its next decoding step, and runs of this
# file generated 1 to 15 tokens per case. A tenth of max_tokens leaves room for a slow machine.
MAX_TOKENS_AFTER_DISCONNECT = LONG_GENERATION_TOKENS // 10


@dataclass(frozen=True)
class Case:
    id: str
    route: str
    stream: bool


CASES = [
    Case("completions-stream", "completions", stream=True),
    Case("completions", "completions", stream=False),
    Case("chat-stream", "chat/completions", stream=True),
    Case("chat", "chat/completions", stream=False),
]


@dataclass(frozen=True)
class Deployed:
    """The deployed model, the URL of its one replica, and a key with the inference scope only."""

    slug: str
    replica_url: str
    key: str


@dataclass(frozen=True)
class Disconnect:
    """Replica /stats around one disconnected request, and the status of the next request through the gateway."""

    before: dict[str, Any]
    after: dict[str, Any]
    next_status: int

    def cancelled_requests(self) -> int:
        return int(self.after["outcomes"].get("cancelled", 0) - self.before["outcomes"].get("cancelled", 0))

    def generated_tokens(self) -> int:
        return int(self.after["generated_tokens"] - self.before["generated_tokens"])


@pytest.fixture(scope="module")
def deployed(server: ServerProcess) -> Deployed:
    # The server registers models only from its home directory and the demo model directories.
    model_path = build_tiny_t5(server.home / "models" / "disconnect-t5")
    with server.client() as api:
        registered = api.post("/api/models", json={"name": MODEL_NAME, "path": str(model_path)})
        assert registered.status_code == 201, registered.text
        slug = registered.json()["slug"]
        job = deploy_and_wait(api, slug, {"hardware": {"threads": 1}})
        assert job["status"] == "success", job
        key = create_key(api, "disconnect inference", ["inference"], [slug])
    port_file = server.home / "logs" / "replicas" / f"deployment-{job['deployment_id']}-replica-0.port"
    return Deployed(slug=slug, replica_url=f"http://127.0.0.1:{port_file.read_text().strip()}", key=key)


@pytest.fixture(scope="module", params=CASES, ids=lambda case: case.id)
def disconnect(request: pytest.FixtureRequest, server: ServerProcess, deployed: Deployed) -> Disconnect:
    case: Case = request.param
    before = wait_for_replica(deployed, lambda current: current["running"] == 0)

    with socket.create_connection(gateway_address(server), timeout=REQUEST_TIMEOUT_SECONDS) as connection:
        send_generation(connection, deployed, case)
        if case.stream:
            wait_for_first_event(connection)
        else:
            wait_for_replica(deployed, lambda current: current["running"] == 1)

    after = wait_for_replica(deployed, lambda current: current["running"] == 0)
    next_response = httpx.post(f"{server.url}/v1/{case.route}", json=generation_body(deployed, case, 4, stream=False),
                               headers={"Authorization": f"Bearer {deployed.key}"}, timeout=REQUEST_TIMEOUT_SECONDS)
    return Disconnect(before=before, after=after, next_status=next_response.status_code)


def gateway_address(server: ServerProcess) -> tuple[str, int]:
    url = httpx.URL(server.url)
    assert url.port is not None
    return url.host, url.port


def generation_body(deployed: Deployed, case: Case, max_tokens: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": deployed.slug, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if case.route == "chat/completions":
        return {**body, "messages": [{"role": "user", "content": "hello"}]}
    return {**body, "prompt": "hello"}


def send_generation(connection: socket.socket, deployed: Deployed, case: Case) -> None:
    payload = orjson.dumps(generation_body(deployed, case, LONG_GENERATION_TOKENS, case.stream))
    head = (f"POST /v1/{case.route} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {deployed.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    connection.sendall(head.encode() + payload)


def wait_for_first_event(connection: socket.socket) -> None:
    """Read the response until its first server-sent event has arrived."""
    received = b""
    while b"data: " not in received:
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            message = f"no event from the gateway within {REQUEST_TIMEOUT_SECONDS} s: {received!r}"
            raise AssertionError(message) from None
        assert chunk, f"the gateway closed the stream before its first event: {received!r}"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200 "), received


def replica_stats(deployed: Deployed) -> dict[str, Any]:
    response = httpx.get(f"{deployed.replica_url}/stats", timeout=REQUEST_TIMEOUT_SECONDS)
    assert response.status_code == 200
    stats: dict[str, Any] = response.json()
    return stats


def wait_for_replica(deployed: Deployed, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + STATS_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        current = replica_stats(deployed)
        if condition(current):
            return current
        time.sleep(0.02)
    raise AssertionError(f"/stats of the replica did not reach the expected state: {replica_stats(deployed)}")


def test_disconnect_cancels_replica_request(disconnect: Disconnect) -> None:
    assert disconnect.cancelled_requests() == 1


def test_disconnect_stops_decoding_early(disconnect: Disconnect) -> None:
    assert disconnect.generated_tokens() < MAX_TOKENS_AFTER_DISCONNECT


def test_gateway_serves_next_request(disconnect: Disconnect) -> None:
    assert disconnect.next_status == 200
