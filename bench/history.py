"""Benchmark of the deployment history API on a model with a long history.

Run from the repository root::

    .venv/bin/python bench/history.py [--rows 10000] [--requests 500]

The script creates a temporary Tunedock home, starts the real server with
``tunedock serve`` on a free 127.0.0.1 port and registers the GPT-2 demo model through
the API. It then writes ``--rows`` deployment versions of that model straight into the
store's SQLite file with the store's table classes, each with one finished deploy job
and 3 to 5 job events, and sets the model's ``last_version`` to match. One keep-alive
``httpx.Client`` then sends warm-up requests and ``--requests`` timed sequential
requests of each kind. The kinds are the first history page, a page deep in the history,
the ``status=failed`` filter, the ``status=deploying`` filter that matches no row, and
the detail of random deployments. The script prints p50, p99 and mean latency as a
Markdown table. With ``--query-plans`` it also prints SQLite's plan for every query that
the history and detail store functions run. The server is stopped and the home is
deleted on exit, also on error or SIGTERM.

The rows are written while the server runs. This is safe because the server keeps no
copy of deployment, job or event rows: every API request reads them from the store in a
new session. Outside the store, the server tracks only live deployments, in its routing
table. At start-up its restore pass settles unfinished jobs and brings live deployments
back. The benchmark model is never live and every job the script writes is finished, so
neither the routing table nor the restore pass is affected. The store runs SQLite in WAL mode, so the
server's reads proceed while the one write transaction is open, and the script's engine
comes from ``tunedock.store.database`` so it uses the same pragmas as the server.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import logging
import math
import os
import platform
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy
import sqlalchemy.engine
import sqlalchemy.pool
from sqlalchemy import event, insert, select, update
from sqlalchemy.engine import Engine

from tunedock.accounts.identity import SYSTEM
from tunedock.demo.registry import demo_models_root
from tunedock.deployments import records
from tunedock.deployments.parameters import DeploymentParameters
from tunedock.store.database import Database
from tunedock.store.tables import Deployment, Job, JobEvent, Model, User

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "bench-admin-password"
ADMIN_API_KEY = "tdk_bench_history_0123456789abcdef"
MODEL_NAME = "Date Normalizer GPT-2"
MODEL_DIRECTORY = "date-normalizer-gpt2"
SERVER_COMMAND = Path(sys.executable).with_name("tunedock")
SERVER_START_TIMEOUT = 60.0
SERVER_STOP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 30.0
PAGE_SIZE = 50  # the default `limit` of the history route, which the benchmark leaves unset
FAILED_SHARE = 0.15
REDEPLOY_SHARE = 0.03
MEAN_MINUTES_BETWEEN_DEPLOYS = 45
VERSIONS_PER_FILES_HASH = 400
ENGINE_VERSION = "4.57.1"
INSERT_CHUNK_ROWS = 2000
FAILURE_REASONS = (
    "The model server exited with status 1 while loading {path}: RuntimeError: CUDA out of memory",
    "The model server did not become ready within 600 s (setting TUNEDOCK_REPLICA_START_TIMEOUT): "
    "loading checkpoint shards",
    "cancelled by admin",
    "interrupted: server restarted",
)


# Server process ---------------------------------------------------------------------------

@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    home: Path
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no server log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def server_environment(home: Path, database_url: str) -> dict[str, str]:
    # TUNEDOCK_* variables of the caller are dropped so that the store is always the fresh
    # one chosen here.
    environment = {name: value for name, value in os.environ.items() if not name.startswith("TUNEDOCK_")}
    environment.update(TUNEDOCK_HOME=str(home), TUNEDOCK_ADMIN_USERNAME=ADMIN_USERNAME,
                       TUNEDOCK_ADMIN_PASSWORD=ADMIN_PASSWORD, TUNEDOCK_ADMIN_API_KEY=ADMIN_API_KEY,
                       TUNEDOCK_DATABASE_URL=database_url, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return environment


@contextlib.contextmanager
def fresh_database(home: Path, postgres_url: str | None) -> Iterator[str]:
    """Yield the URL of an empty store: a SQLite file in the home, or a new PostgreSQL database."""
    if postgres_url is None:
        yield f"sqlite:///{home / 'tunedock.db'}"
        return
    name = f"tunedock_bench_{os.getpid()}_{int(time.time())}"
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sqlalchemy.engine.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def running_server(home: Path, database_url: str) -> Iterator[ServerProcess]:
    """Start ``tunedock serve`` on a free loopback port, and stop it on exit."""
    port = free_port()
    log_path = home / "server-output.log"
    command = [str(SERVER_COMMAND), "serve", "--host", HOST, "--port", str(port)]
    # The working directory is the home, so the server reads no stray .env file.
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=home,
                                   env=server_environment(home, database_url), start_new_session=True)
    server = ServerProcess(process=process, url=f"http://{HOST}:{port}", home=home, log_path=log_path)
    logger.info("started the server (pid %s) at %s", process.pid, server.url)
    try:
        wait_until_healthy(server)
        yield server
    finally:
        stop_server(server)


def wait_until_healthy(server: ServerProcess) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"The server exited with status {server.process.returncode} during start-up. "
                                   f"Its log ends with:\n{server.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{server.url}/healthz").status_code == 200:
                    return
            time.sleep(0.2)
    raise RuntimeError(f"The server did not return 200 from /healthz within {SERVER_START_TIMEOUT:.0f} s. "
                       f"Its log ends with:\n{server.log_tail()}")


def stop_server(server: ServerProcess) -> None:
    """Stop the server with SIGTERM, which lets uvicorn shut down cleanly, then SIGKILL if it hangs."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("the server (pid %s) still runs %.0f s after SIGTERM, killing it",
                           server.process.pid, SERVER_STOP_TIMEOUT)
            server.process.kill()
            server.process.wait()
    # uvicorn re-raises SIGTERM after a clean shutdown, so the usual status is -15.
    logger.info("stopped the server (pid %s) with status %s", server.process.pid, server.process.returncode)


# The model and its history ----------------------------------------------------------------

@dataclass(frozen=True)
class RegisteredModel:
    id: int
    slug: str
    source_path: str


def register_model(client: httpx.Client) -> RegisteredModel:
    body = {"name": MODEL_NAME, "path": str(demo_models_root() / MODEL_DIRECTORY),
            "description": "Model of the deployment history benchmark."}
    reply = client.post("/api/models", json=body)
    if reply.status_code != 201:
        raise RuntimeError(f"Registering {MODEL_NAME!r} failed with status {reply.status_code}: {reply.text}")
    model = reply.json()
    return RegisteredModel(id=model["id"], slug=model["slug"], source_path=model["path"])


def fill_history(database: Database, model: RegisteredModel, rows: int, seed: int) -> list[int]:
    """Write ``rows`` deployment versions of the model with their jobs and events, and return their ids."""
    rng = random.Random(seed)
    with database.session() as session:
        admin_id = session.scalars(select(User.id).where(User.username == ADMIN_USERNAME)).one()
        deployments = deployment_rows(model, admin_id, rows, rng)
        ids: list[int] = []
        for start in range(0, rows, INSERT_CHUNK_ROWS):
            chunk = deployments[start:start + INSERT_CHUNK_ROWS]
            statement = insert(Deployment).returning(Deployment.id, sort_by_parameter_order=True)
            ids.extend(session.scalars(statement, chunk))
        origins = redeploy_origins(ids, rng)
        if origins:
            session.execute(update(Deployment), origins)
        job_ids = list(session.scalars(insert(Job).returning(Job.id, sort_by_parameter_order=True),
                                       [job_row(deployment_id, row) for deployment_id, row in zip(ids, deployments)]))
        events = [event_row for job_id, row in zip(job_ids, deployments)
                  for event_row in job_event_rows(job_id, row, model, rng)]
        session.execute(insert(JobEvent), events)
        session.execute(update(Model).where(Model.id == model.id).values(last_version=rows))
    logger.info("wrote %d deployments, %d jobs and %d job events", len(ids), len(job_ids), len(events))
    return ids


def deployment_rows(model: RegisteredModel, admin_id: int, rows: int, rng: random.Random) -> list[dict[str, Any]]:
    """Build the deployment rows, versions 1 to ``rows`` about 45 minutes apart, the last one an hour ago.

    Failed versions never went live. Each successful one was superseded by the next
    successful one, and the newest was un-deployed by hand, so the model is not live.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    gaps = [datetime.timedelta(minutes=rng.uniform(0.5, 1.5) * MEAN_MINUTES_BETWEEN_DEPLOYS) for _ in range(rows)]
    started = now - datetime.timedelta(hours=1) - sum(gaps[1:], datetime.timedelta())
    result: list[dict[str, Any]] = []
    for version, gap in enumerate(gaps, start=1):
        if version > 1:
            started += gap
        failed = rng.random() < FAILED_SHARE
        result.append({
            "model_id": model.id, "version": version, "name": f"{MODEL_NAME}_v{version}",
            "description": rng.choice(("", "", "nightly retrain", f"try max_tokens tuning {version}")),
            "parameters": parameters(rng), "files_hash": files_hash(version), "engine_version": ENGINE_VERSION,
            "status": "failed" if failed else "success",
            "failure_reason": rng.choice(FAILURE_REASONS).format(path=model.source_path) if failed else None,
            "deployed_by_id": admin_id, "deployed_by": ADMIN_USERNAME,
            "started_at": started, "ended_at": started + datetime.timedelta(seconds=rng.uniform(20, 180)),
        })
    add_undeployments([row for row in result if row["status"] == "success"], now)
    return result


def add_undeployments(successful: list[dict[str, Any]], now: datetime.datetime) -> None:
    for row, following in zip(successful, successful[1:]):
        undeploy_started = following["ended_at"]
        row.update(undeployed_by=SYSTEM, undeploy_reason=f"superseded by {following['name']}",
                   undeploy_started_at=undeploy_started,
                   undeploy_ended_at=undeploy_started + datetime.timedelta(seconds=2))
    if successful:
        last = successful[-1]
        undeploy_started = min(last["ended_at"] + datetime.timedelta(minutes=10), now)
        last.update(undeployed_by=ADMIN_USERNAME, undeploy_reason="manual", undeploy_started_at=undeploy_started,
                    undeploy_ended_at=undeploy_started + datetime.timedelta(seconds=2))


def parameters(rng: random.Random) -> dict[str, Any]:
    """Return the default parameters with a few values varied, so that versions differ."""
    values = DeploymentParameters().model_dump(mode="json")
    values["generation"]["temperature"] = rng.choice((0.0, 0.2, 0.7, 1.0))
    values["generation"]["max_tokens"] = rng.choice((16, 32, 64, 256))
    values["scaling"]["max_batch_size"] = rng.choice((4, 8, 16))
    values["hardware"]["threads"] = rng.choice((None, 1, 2))
    return values


def files_hash(version: int) -> str:
    # The model files change every VERSIONS_PER_FILES_HASH versions, as after a retraining.
    generation = (version - 1) // VERSIONS_PER_FILES_HASH
    return "sha256:" + hashlib.sha256(f"bench model files {generation}".encode()).hexdigest()


def redeploy_origins(ids: list[int], rng: random.Random) -> list[dict[str, int]]:
    """Mark about 3% of the versions as redeploys of an earlier version."""
    return [{"id": ids[index], "origin_deployment_id": ids[rng.randrange(index)]}
            for index in range(1, len(ids)) if rng.random() < REDEPLOY_SHARE]


def job_row(deployment_id: int, deployment: dict[str, Any]) -> dict[str, Any]:
    return {"deployment_id": deployment_id, "action": "deploy", "status": deployment["status"],
            "error": deployment["failure_reason"], "created_by": deployment["deployed_by"],
            "created_at": deployment["started_at"], "finished_at": deployment["ended_at"]}


def job_event_rows(job_id: int, deployment: dict[str, Any], model: RegisteredModel,
                   rng: random.Random) -> list[dict[str, Any]]:
    """Return 3 to 5 events in the order the deploy job writes them."""
    stages = [("queued", f"Deploy of {deployment['name']} requested by {deployment['deployed_by']}"),
              ("validating", f"Parameters valid: engine transformers {ENGINE_VERSION} on cpu, 1 replica(s)")]
    if deployment["status"] == "success":
        stages += [("weights_ready", f"Model files {deployment['files_hash'][:23]}..."),
                   ("switching_traffic", f"Routing {model.slug} to {deployment['name']}"),
                   ("done", "Finished")]
    else:
        if rng.random() < 0.5:
            stages.append(("starting_replica", "Starting replica 1 of 1"))
        stages.append(("failed", deployment["failure_reason"]))
    started, ended = deployment["started_at"], deployment["ended_at"]
    step = (ended - started) / (len(stages) - 1)
    return [{"job_id": job_id, "sequence": index + 1, "stage": stage, "message": message,
             "created_at": started + step * index}
            for index, (stage, message) in enumerate(stages)]


# Measurement ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RequestKind:
    label: str
    path: Callable[[random.Random], str]


@dataclass(frozen=True)
class Summary:
    label: str
    requests: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    mean_reply_bytes: float


def request_kinds(model: RegisteredModel, deployment_ids: list[int], rows: int) -> list[RequestKind]:
    history = f"/api/models/{model.slug}/deployments"
    cursor = max(rows // 2, 1)
    return [
        RequestKind("history, first page", lambda rng: history),
        RequestKind(f"history, page at cursor={cursor}", lambda rng: f"{history}?cursor={cursor}"),
        RequestKind("history, status=failed", lambda rng: f"{history}?status=failed"),
        # No benchmark row is deploying, so this page reads the model's whole history.
        RequestKind("history, status=deploying (no match)", lambda rng: f"{history}?status=deploying"),
        RequestKind("detail of a random deployment", lambda rng: f"/api/deployments/{rng.choice(deployment_ids)}"),
    ]


def measure(client: httpx.Client, kind: RequestKind, warmup: int, requests: int, rng: random.Random) -> Summary:
    """Send ``warmup`` untimed requests, then time ``requests`` sequential ones."""
    for _ in range(warmup):
        timed_get(client, kind.path(rng))
    latencies: list[float] = []
    reply_bytes = 0
    for _ in range(requests):
        elapsed_ms, size = timed_get(client, kind.path(rng))
        latencies.append(elapsed_ms)
        reply_bytes += size
    latencies.sort()
    return Summary(label=kind.label, requests=requests, p50_ms=percentile(latencies, 0.50),
                   p99_ms=percentile(latencies, 0.99), mean_ms=statistics.fmean(latencies),
                   mean_reply_bytes=reply_bytes / requests)


def timed_get(client: httpx.Client, path: str) -> tuple[float, int]:
    """Return the time from sending the request to reading the whole body, and the body size."""
    started = time.perf_counter()
    reply = client.get(path)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    if reply.status_code != 200:
        raise RuntimeError(f"GET {path} returned status {reply.status_code}: {reply.text[:300]}")
    return elapsed_ms, len(reply.content)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of values sorted in ascending order."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def check_history(client: httpx.Client, model: RegisteredModel, rows: int) -> None:
    """Check that the server returns the written rows, so the timings measure real pages."""
    page = client.get(f"/api/models/{model.slug}/deployments").json()
    newest = page["items"][0]["version"] if page["items"] else None
    if newest != rows or len(page["items"]) != min(rows, PAGE_SIZE):
        raise RuntimeError(f"The first history page has {len(page['items'])} items, newest version {newest}. "
                           f"Expected {min(rows, PAGE_SIZE)} items, newest version {rows}.")


# Query plans ------------------------------------------------------------------------------

@contextlib.contextmanager
def captured_statements(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Collect the SQL and parameters that ``engine`` runs inside the block."""
    statements: list[tuple[str, Any]] = []

    def record(connection: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def query_plans(database: Database, model: RegisteredModel, deployment_ids: list[int], rows: int) -> str:
    """Run the store functions behind the measured routes and return SQLite's plan of each query.

    The statements come from ``records.history`` and ``records.deployment_record``
    themselves, so the plans are those of the SQL the server runs.
    """
    calls: list[tuple[str, Callable[[], object]]] = [
        ("records.history, first page", lambda: records.history(database, model.slug, None, PAGE_SIZE)),
        (f"records.history, before version {max(rows // 2, 1)}",
         lambda: records.history(database, model.slug, max(rows // 2, 1), PAGE_SIZE)),
        ("records.history, status=failed", lambda: records.history(database, model.slug, None, PAGE_SIZE, "failed")),
        ("records.history, status=deploying",
         lambda: records.history(database, model.slug, None, PAGE_SIZE, "deploying")),
        ("records.deployment_record",
         lambda: records.deployment_record(database, deployment_ids[len(deployment_ids) // 2])),
    ]
    lines: list[str] = []
    for label, call in calls:
        with captured_statements(database.engine) as statements:
            call()
        lines.append(f"### {label}")
        for statement, parameters in statements:
            with database.engine.connect() as connection:
                plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            lines.append("")
            lines.append(" ".join(statement.split()))
            lines.extend(f"    {row[3]}" for row in plan)
        lines.append("")
    return "\n".join(lines)


# Report -----------------------------------------------------------------------------------

def markdown_table(summaries: list[Summary]) -> str:
    lines = ["| request | requests | p50 ms | p99 ms | mean ms | mean reply bytes |",
             "|---|--:|--:|--:|--:|--:|"]
    for summary in summaries:
        lines.append(f"| {summary.label} | {summary.requests} | {summary.p50_ms:.2f} | {summary.p99_ms:.2f} "
                     f"| {summary.mean_ms:.2f} | {summary.mean_reply_bytes:,.0f} |")
    return "\n".join(lines)


def describe_machine() -> list[str]:
    """Return the lines that identify the run: date, CPUs, load, Python, SQLite and library versions."""
    versions = ", ".join(f"{name} {metadata.version(name)}"
                         for name in ("fastapi", "starlette", "uvicorn", "sqlalchemy", "pydantic", "httpx"))
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return [f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
            f"load average before the run {load}",
            f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}; {versions}"]


# Orchestration ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    rows: int
    requests: int
    warmup: int
    seed: int
    query_plans: bool
    postgres_url: str | None


def run_benchmark(options: Options) -> tuple[list[Summary], str | None]:
    with tempfile.TemporaryDirectory(prefix="tunedock-bench-history-") as home_name:
        home = Path(home_name)
        with fresh_database(home, options.postgres_url) as database_url, running_server(home, database_url) as server, \
                httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_API_KEY}"},
                             timeout=REQUEST_TIMEOUT) as client:
            model = register_model(client)
            database = Database(database_url)
            try:
                started = time.monotonic()
                deployment_ids = fill_history(database, model, options.rows, options.seed)
                logger.info("filled the history in %.1f s", time.monotonic() - started)
                check_history(client, model, options.rows)
                rng = random.Random(options.seed)
                summaries = []
                for kind in request_kinds(model, deployment_ids, options.rows):
                    logger.info("measuring %s: %d warm-up and %d timed requests", kind.label, options.warmup,
                                options.requests)
                    summaries.append(measure(client, kind, options.warmup, options.requests, rng))
                plans = query_plans(database, model, deployment_ids, options.rows) if options.query_plans else None
            finally:
                database.dispose()
    return summaries, plans


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python bench/history.py", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=positive_int, default=10_000,
                        help="Deployment versions written for the benchmark model (default: 10000).")
    parser.add_argument("--requests", type=positive_int, default=500,
                        help="Timed requests of each kind (default: 500).")
    parser.add_argument("--warmup", type=non_negative_int, default=50,
                        help="Untimed requests of each kind sent before its timed ones (default: 50).")
    parser.add_argument("--seed", type=int, default=1,
                        help="Seed of the generated history and of the random detail ids (default: 1).")
    parser.add_argument("--query-plans", action="store_true",
                        help="Also print SQLite's query plan of each query behind the measured routes.")
    parser.add_argument("--postgres-url", default=None,
                        help="Run on a new database on this PostgreSQL server instead of SQLite, e.g. "
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test (the user must be allowed to "
                        "create databases).")
    args = parser.parse_args(argv)
    if args.postgres_url and args.query_plans:
        parser.error("--query-plans reads SQLite's plans; leave it out with --postgres-url")
    return Options(rows=args.rows, requests=args.requests, warmup=args.warmup, seed=args.seed,
                   query_plans=args.query_plans, postgres_url=args.postgres_url)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}. Use a whole number of 1 or more")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}. Use a whole number of 0 or more")
    return value


def exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds the context managers in run_benchmark, which stop the server and
    # delete the home. The default SIGTERM action would leave both behind.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    options = parse_options(argv)
    machine = describe_machine()
    started = time.monotonic()
    summaries, plans = run_benchmark(options)
    print("\n".join(machine))
    print(f"- {options.rows} deployment rows, {options.warmup} warm-up and {options.requests} timed requests "
          f"of each kind, wall time {time.monotonic() - started:.0f} s, load average after the run "
          f"{', '.join(f'{value:.2f}' for value in os.getloadavg())}")
    print()
    print(markdown_table(summaries))
    if plans is not None:
        print()
        print(plans)
    return 0


if __name__ == "__main__":
    sys.exit(main())
