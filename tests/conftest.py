"""Shared fixtures: a real Tunedock server process on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from sqlalchemy.engine import make_url

from tunedock.settings import Settings

# Which store the suite runs on: "sqlite" (each server's home holds its file) or "postgresql"
# (each server gets a database of its own on the server below, dropped at the end).
TEST_DATABASE = os.environ.get("TUNEDOCK_TEST_DATABASE", "sqlite")
POSTGRES_URL = os.environ.get("TUNEDOCK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_created_databases: list[str] = []

ADMIN_KEY = "tdk_test_admin_key_0123456789abcdef"
ADMIN_PASSWORD = "test-admin-password"
SERVER_START_TIMEOUT = 60.0
JOB_TIMEOUT = 300.0


def model_server_pids(fragment: str | Path) -> list[int]:
    """Process ids of model servers whose command line contains ``fragment`` (a path, say).

    Read from /proc rather than ps, whose output is cut to 80 columns without a terminal.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "tunedock.runtime" in arguments and str(fragment) in arguments:
            pids.append(int(entry.name))
    return sorted(pids)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fresh_database_url() -> str | None:
    """Return the URL of a new, empty PostgreSQL database, or None when the suite runs on SQLite."""
    if TEST_DATABASE != "postgresql":
        return None
    return fresh_postgres_url()


def fresh_postgres_url() -> str:
    """Create an empty PostgreSQL database, dropped at the end of the session, and return its URL."""
    name = f"tunedock_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    _created_databases.append(name)
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


def isolated_settings(home: Path, **values: Any) -> Settings:
    """Settings for an in-process app with its own home and, on PostgreSQL, its own database."""
    return Settings(home=home, database_url=fresh_database_url(), **values)


@pytest.fixture(scope="session", autouse=True)
def drop_test_databases() -> Iterator[None]:
    yield
    if not _created_databases:
        return
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as connection:
        for name in _created_databases:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@dataclass
class ServerProcess:
    url: str
    home: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    database_url: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60)

    def environment(self) -> dict[str, str]:
        return server_environment(self.home, self.url)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def server_environment(home: Path, url: str | None = None) -> dict[str, str]:
    environment = dict(os.environ, TUNEDOCK_HOME=str(home), TUNEDOCK_ADMIN_API_KEY=ADMIN_KEY,
                       TUNEDOCK_ADMIN_PASSWORD=ADMIN_PASSWORD, HF_HUB_OFFLINE="1",
                       TOKENIZERS_PARALLELISM="false")
    database_file = home / "database-url"
    if database_file.exists():
        environment["TUNEDOCK_DATABASE_URL"] = database_file.read_text().strip()
    else:
        environment.pop("TUNEDOCK_DATABASE_URL", None)
    if url is not None:
        environment["TUNEDOCK_URL"] = url
        environment["TUNEDOCK_TOKEN"] = ADMIN_KEY
    return environment


def start_server(home: Path, port: int, extra_args: tuple[str, ...] = (),
                 extra_env: dict[str, str] | None = None) -> ServerProcess:
    home.mkdir(parents=True, exist_ok=True)
    database_file = home / "database-url"
    if not database_file.exists():
        database = fresh_database_url()
        if database is not None:
            # Kept in the home so that a restart, and the CLI, reach the same database.
            database_file.write_text(database)
    log_path = home / "server-output.log"
    command = [sys.executable, "-m", "tunedock", "serve", "--host", "127.0.0.1", "--port", str(port), *extra_args]
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**server_environment(home), **(extra_env or {})},
                                   start_new_session=True)
    database_url = database_file.read_text().strip() if database_file.exists() else f"sqlite:///{home / 'tunedock.db'}"
    server = ServerProcess(url=f"http://127.0.0.1:{port}", home=home, process=process, log_path=log_path,
                           database_url=database_url)
    wait_until_healthy(server)
    return server


def wait_until_healthy(server: ServerProcess) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server did not answer /healthz within {SERVER_START_TIMEOUT} s:\n{server.log()}")


def stop_server(server: ServerProcess) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    report_connection_drops(server)


def report_connection_drops(server: ServerProcess) -> None:
    """Print the server's log lines where uvicorn closed a connection because of an application error.

    A client that reuses such a connection fails with "Server disconnected without sending a
    response", far from the cause; the lines go to the real stderr, past pytest's capture.
    """
    lines = server.log().splitlines()
    for index, line in enumerate(lines):
        if "Exception in ASGI application" in line or "ASGI callable returned without" in line:
            excerpt = "\n".join(lines[max(0, index - 3):index + 40])
            sys.__stderr__.write(f"\n--- {server.log_path}:{index + 1}\n{excerpt}\n")


def wait_for_job(client: httpx.Client, job_id: int, timeout: float = JOB_TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] != "in_progress":
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still in progress after {timeout} s")


def deploy_and_wait(client: httpx.Client, model: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = client.post(f"/api/models/{model}/deployments", json=body or {})
    assert response.status_code == 202, response.text
    return wait_for_job(client, response.json()["job"]["id"])


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server process shared by the end-to-end tests of a session."""
    running = start_server(tmp_path_factory.mktemp("server-home"), free_port())
    yield running
    stop_server(running)
