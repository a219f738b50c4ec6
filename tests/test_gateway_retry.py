"""The gateway's retry on a replica that refuses the connection, through the real control-plane app.

The app from ``create_app`` runs under uvicorn in a background thread, on a fresh SQLite store.
Once it has started, its routing table sends three models to fixed targets. Each dead target
is a bound socket that does not listen, so the kernel refuses connections to it. The live
target is a stand-in replica, a plain asyncio server in the same thread. It responds to
``/v1/completions`` with a fixed JSON body, or with a short server-sent event stream when
the request has ``"stream": true``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.conftest import ADMIN_KEY, isolated_settings
from tests.test_replica_client import STREAM_EVENTS, STREAM_HEAD, chunk, read_request, whole_response
from tunedock.app import create_app
from tunedock.deployments.routing import ReplicaTarget, Route
from tunedock.replicas.backend import RunningReplica
from tunedock.services import Services

HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 30.0
STAND_IN_BODY = b'{"id":"cmpl-stand-in","object":"text_completion","choices":[{"index":0,"text":"2024-01-05"}]}'
# The first target is a dead one, and Route.pick returns the first of equally busy targets,
# so every request to this model meets the refusal before it reaches the stand-in.
RETRY_MODEL = "retry-model"
DEAD_MODEL = "dead-model"
STREAM_MODEL = "stream-model"


def deployment_name(slug: str) -> str:
    return f"{slug}_v1"


async def serve_stand_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Respond to completion requests on one connection until the client closes it."""
    try:
        number = 0
        while True:
            number += 1
            exchange = await read_request(reader, number)
            if exchange is None:
                return
            if json.loads(exchange.body).get("stream") is True:
                writer.write(STREAM_HEAD + b"".join(chunk(event) for event in STREAM_EVENTS) + b"0\r\n\r\n")
            else:
                writer.write(whole_response(STAND_IN_BODY))
            await writer.drain()
    finally:
        writer.close()


class RecordedMessages(logging.Handler):
    """Keep the messages logged while the servers run, from any thread."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class Servers:
    """The app and the stand-in, served by one event loop in a background thread."""

    home: Path
    app_socket: socket.socket
    dead_sockets: list[socket.socket]
    recorded: RecordedMessages = field(default_factory=RecordedMessages)
    routed: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    server: uvicorn.Server | None = None
    error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.app_socket.getsockname()[1]}"

    def dead_port(self, index: int) -> int:
        return int(self.dead_sockets[index].getsockname()[1])

    def run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - the test thread reports it
            self.error = exc
        finally:
            self.stopped.set()

    async def _serve(self) -> None:
        stand_in = await asyncio.start_server(serve_stand_in, HOST, 0)
        stand_in_port = stand_in.sockets[0].getsockname()[1]
        settings = isolated_settings(self.home, admin_api_key=ADMIN_KEY, admin_password="test-password-1",
                                     host=HOST, port=self.app_socket.getsockname()[1])
        app = create_app(settings, on_started=lambda services: self._route(services, stand_in_port))
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        try:
            await self.server.serve(sockets=[self.app_socket])
        finally:
            stand_in.close()
            await stand_in.wait_closed()

    def _route(self, services: Services, stand_in_port: int) -> None:
        live = self._target(stand_in_port, pid=1)
        dead = [self._target(self.dead_port(index), pid=100 + index) for index in range(len(self.dead_sockets))]
        routes = {RETRY_MODEL: [dead[0], live], DEAD_MODEL: [dead[0], dead[1]], STREAM_MODEL: [live]}
        for model_id, (slug, targets) in enumerate(routes.items(), start=1):
            services.routing.set(Route(model_id=model_id, slug=slug, deployment_id=model_id,
                                       deployment_name=deployment_name(slug), created=int(time.time()),
                                       targets=targets))
        self.routed.set()

    def _target(self, port: int, pid: int) -> ReplicaTarget:
        # The ids match no row in the store. The gateway reads only the routing table, not the store.
        return ReplicaTarget(replica=RunningReplica(pid=pid, port=port, log_path=self.home / "replica.log"))


def bound_socket() -> socket.socket:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind((HOST, 0))
    return probe


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    servers = Servers(home=tmp_path_factory.mktemp("retry-home"), app_socket=bound_socket(),
                      dead_sockets=[bound_socket(), bound_socket()])
    forwarder_logger = logging.getLogger("tunedock.gateway.forwarder")
    forwarder_logger.addHandler(servers.recorded)
    thread = threading.Thread(target=servers.run, name="gateway-retry-servers", daemon=True)
    thread.start()
    try:
        wait_until_routed(servers)
        yield servers
    finally:
        if servers.server is not None:
            servers.server.should_exit = True
        thread.join(START_TIMEOUT_SECONDS)
        forwarder_logger.removeHandler(servers.recorded)
        for bound in [servers.app_socket, *servers.dead_sockets]:
            bound.close()


def wait_until_routed(servers: Servers) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not servers.routed.wait(0.05):
        if servers.stopped.is_set():
            raise RuntimeError(f"the servers stopped before serving: {servers.error!r}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the app did not route the test models within {START_TIMEOUT_SECONDS} s")


def complete(servers: Servers, model: str, stream: bool = False) -> httpx.Response:
    payload: dict[str, Any] = {"model": model, "prompt": "5 Jan 2024", "max_tokens": 8}
    if stream:
        payload["stream"] = True
    with httpx.Client(base_url=servers.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                      timeout=REQUEST_TIMEOUT_SECONDS, trust_env=False) as client:
        return client.post("/v1/completions", json=payload)


@pytest.fixture(scope="module")
def retried(servers: Servers) -> httpx.Response:
    return complete(servers, RETRY_MODEL)


@pytest.fixture(scope="module")
def all_refused(servers: Servers) -> httpx.Response:
    return complete(servers, DEAD_MODEL)


@pytest.fixture(scope="module")
def streamed(servers: Servers) -> httpx.Response:
    return complete(servers, STREAM_MODEL, stream=True)


# A refused replica is skipped -----------------------------------------------------------------

def test_refused_replica_skipped_status(retried: httpx.Response) -> None:
    assert retried.status_code == 200, retried.text


def test_refused_replica_skipped_body(retried: httpx.Response) -> None:
    assert retried.content == STAND_IN_BODY


def test_refused_replica_is_logged(servers: Servers, retried: httpx.Response) -> None:
    refusals = [message for message in servers.recorded.messages
                if "refused the connection" in message and f"{HOST}:{servers.dead_port(0)}" in message]
    assert refusals


# Every replica refuses ------------------------------------------------------------------------

def test_all_refused_status(all_refused: httpx.Response) -> None:
    assert all_refused.status_code == 502


def test_all_refused_error_shape(all_refused: httpx.Response) -> None:
    assert sorted(all_refused.json()["error"]) == ["code", "message", "param", "type"]


def test_all_refused_error_code(all_refused: httpx.Response) -> None:
    assert all_refused.json()["error"]["code"] == "replica_error"


def test_all_refused_error_type(all_refused: httpx.Response) -> None:
    assert all_refused.json()["error"]["type"] == "server_error"


def test_all_refused_names_deployment(all_refused: httpx.Response) -> None:
    assert deployment_name(DEAD_MODEL) in all_refused.json()["error"]["message"]


def test_all_refused_says_when_to_retry(all_refused: httpx.Response) -> None:
    assert all_refused.headers["retry-after"] == "1"


# Streams --------------------------------------------------------------------------------------

def test_stream_content_type(streamed: httpx.Response) -> None:
    assert streamed.headers["content-type"].startswith("text/event-stream")


def test_stream_body_intact(streamed: httpx.Response) -> None:
    assert streamed.content == b"".join(STREAM_EVENTS)
