"""Benchmark of the HTTP client behind the inference gateway: httpx against aiohttp.

Run from the repository root::

    .venv/bin/python -m bench.forwarder_clients [--requests N] [--concurrency 1,16]

By default the script starts four servers, each in its own process on a free 127.0.0.1 port. The
stand-in model server replies at once. Two minimal FastAPI forwarders pass requests to it,
one with ``httpx.AsyncClient`` and one with ``aiohttp.ClientSession``. The fourth is the
real Tunedock app with a route to the stand-in. A separate load-generator process sends
the same request to each target, and the script prints p50, p99, requests/s and the
latency each forwarder adds over the direct call as a Markdown table. Every process it
starts is stopped before it exits, also on error or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import logging
import math
import multiprocessing
import os
import platform
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from fastapi import FastAPI, Request, Response

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
MODEL_SLUG = "bench-model"
# Only the Tunedock target checks this key. The others ignore the header, which is sent
# to every target so that all of them receive the same request bytes.
API_KEY = "tdk_bench_forwarder_clients_0123456789"
REQUEST_BODY = b'{"model": "bench-model", "prompt": "5 Jan 2024", "max_tokens": 8}'
REPLY_BODY = (
    b'{"id": "cmpl-bench", "object": "text_completion", "created": 1700000000, "model": "bench-model", '
    b'"choices": [{"index": 0, "text": "2024-01-05", "logprobs": null, "finish_reason": "stop"}], '
    b'"usage": {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}}'
)
COMPLETIONS_PATH = "/v1/completions"
TARGETS = ("direct", "httpx", "aiohttp", "tunedock")
SERVER_START_TIMEOUT = 60.0
SERVER_STOP_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
AppBuilder = Callable[..., Any]


# Stand-in model server --------------------------------------------------------------------

async def stand_in_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reply to ``POST /v1/completions`` with a fixed completion, and 404 to anything else."""
    if scope["type"] != "http":
        return
    more_body = True
    while more_body:
        message = await receive()
        more_body = message.get("more_body", False)
    found = scope["method"] == "POST" and scope["path"] == COMPLETIONS_PATH
    body = REPLY_BODY if found else b'{"error": "not found"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200 if found else 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_stand_in() -> Any:
    return stand_in_app


# Forwarding proxies -----------------------------------------------------------------------

def build_httpx_proxy(upstream_url: str) -> Any:
    """Build a FastAPI forwarder on one ``httpx.AsyncClient`` shared by all requests."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # No pool limit, as with the aiohttp proxy's TCPConnector(limit=0), so that the
        # two proxies differ only in the client library.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(base_url=upstream_url, limits=limits, timeout=30.0) as client:
            app.state.client = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post(COMPLETIONS_PATH)
    async def completions(request: Request) -> Response:
        client: httpx.AsyncClient = request.app.state.client
        reply = await client.post(COMPLETIONS_PATH, content=await request.body(),
                                  headers={"Content-Type": "application/json"})
        return Response(reply.content, status_code=reply.status_code,
                        media_type=reply.headers.get("Content-Type", "application/json"))

    return app


def build_aiohttp_proxy(upstream_url: str) -> Any:
    """Build a FastAPI forwarder on one ``aiohttp.ClientSession`` shared by all requests."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=30.0)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            app.state.session = session
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post(COMPLETIONS_PATH)
    async def completions(request: Request) -> Response:
        session: aiohttp.ClientSession = request.app.state.session
        async with session.post(f"{upstream_url}{COMPLETIONS_PATH}", data=await request.body(),
                                headers={"Content-Type": "application/json"}) as reply:
            content = await reply.read()
            return Response(content, status_code=reply.status,
                            media_type=reply.headers.get("Content-Type", "application/json"))

    return app


# The Tunedock gateway ---------------------------------------------------------------------

def build_tunedock(upstream_url: str, upstream_pid: int, home: str) -> Any:
    """Build the real Tunedock app and, once it serves, route MODEL_SLUG to the stand-in.

    Each request goes through the product's gateway unchanged: the API key lookup in the
    SQLite store, the body check, the routing table and the aiohttp forwarding.
    """
    from tunedock.app import create_app
    from tunedock.settings import Settings

    # Init arguments win over TUNEDOCK_* variables, and _env_file=None skips a stray .env,
    # so the benchmark's store is always a fresh SQLite file in `home`.
    settings = Settings(_env_file=None, home=Path(home), database_url=None, admin_api_key=API_KEY,
                        admin_password="bench-admin-password", model_roots=[Path(home)])
    register = functools.partial(_route_to_stand_in, upstream_url=upstream_url,
                                 upstream_pid=upstream_pid, home=Path(home))
    return create_app(settings, on_started=register)


def _route_to_stand_in(services: Any, upstream_url: str, upstream_pid: int, home: Path) -> None:
    from tunedock.deployments.routing import ReplicaTarget, Route
    from tunedock.replicas.backend import RunningReplica

    port = int(upstream_url.rsplit(":", 1)[1])
    replica = RunningReplica(pid=upstream_pid, port=port, log_path=home / "stand-in.log", host=HOST)
    # The IDs match no row in the store, which is fine because the gateway reads only
    # this in-memory routing table.
    services.routing.set(Route(model_id=1, slug=MODEL_SLUG, deployment_id=1, deployment_name="bench-stand-in",
                               created=int(time.time()), targets=[ReplicaTarget(replica=replica)]))


# Server processes -------------------------------------------------------------------------

def serve_in_child(builder: AppBuilder, builder_args: tuple[Any, ...], port_sender: Connection) -> None:
    """Bind a free loopback port, send its number to the parent, and serve the app on it."""
    import uvicorn

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    port_sender.send(listener.getsockname()[1])
    port_sender.close()
    # No access log, as in `tunedock serve`. That command leaves the event loop and HTTP
    # parser to uvicorn's "auto", which picks these same two when they are installed.
    lifespan = "off" if builder is build_stand_in else "on"
    config = uvicorn.Config(builder(*builder_args), loop="uvloop", http="httptools", lifespan=lifespan,
                            log_config=None, access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[listener])


@dataclass
class ServerProcess:
    name: str
    process: BaseProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def start_server(stack: contextlib.ExitStack, name: str, builder: AppBuilder, *args: Any) -> ServerProcess:
    """Start ``builder(*args)`` under uvicorn in a child process that ``stack`` stops on exit."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=serve_in_child, args=(builder, args, sender), name=name, daemon=True)
    process.start()
    stack.callback(stop_process, process)
    sender.close()
    if not receiver.poll(SERVER_START_TIMEOUT):
        raise RuntimeError(f"The {name} server did not bind a port within {SERVER_START_TIMEOUT:.0f} s.")
    try:
        port = int(receiver.recv())
    except EOFError:
        raise RuntimeError(f"The {name} server exited with code {process.exitcode} before binding a port. "
                           "Its traceback is printed above.") from None
    return ServerProcess(name=name, process=process, port=port)


def stop_process(process: BaseProcess) -> None:
    """Stop a child with SIGTERM, which lets uvicorn shut down cleanly, then SIGKILL if it hangs."""
    if process.is_alive():
        process.terminate()
        process.join(SERVER_STOP_TIMEOUT)
    if process.is_alive():
        logger.warning("%s (pid %s) still runs %.0f s after SIGTERM, killing it", process.name, process.pid,
                       SERVER_STOP_TIMEOUT)
        process.kill()
        process.join()


def wait_until_forwarding(server: ServerProcess) -> None:
    """Poll the target with the benchmark request until it returns 200."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    last_outcome = "no reply"
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if not server.process.is_alive():
                raise RuntimeError(f"The {server.name} server exited with code {server.process.exitcode}. "
                                   "Its traceback is printed above.")
            with contextlib.suppress(httpx.TransportError):
                reply = client.post(f"{server.url}{COMPLETIONS_PATH}", content=REQUEST_BODY, headers=request_headers())
                if reply.status_code == 200:
                    return
                last_outcome = f"status {reply.status_code}: {reply.text[:200]}"
            time.sleep(0.05)
    raise RuntimeError(f"The {server.name} server did not return 200 within {SERVER_START_TIMEOUT:.0f} s. "
                       f"Last reply: {last_outcome}.")


def request_headers() -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}


# Load generator ---------------------------------------------------------------------------

@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    wall_s: float = 0.0
    timed_out: bool = False


@dataclass(frozen=True)
class LoadPlan:
    url: str
    concurrency: int
    warmup: int
    requests: int
    max_seconds: float


def generate_load_in_child(plan: LoadPlan, result_sender: Connection) -> None:
    """Run one measurement on uvloop and send the LoadResult to the parent."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(measure(plan))
    result_sender.send(result)
    result_sender.close()


async def measure(plan: LoadPlan) -> LoadResult:
    """Send the warm-up requests, then time ``plan.requests`` requests on keep-alive connections."""
    deadline = time.monotonic() + plan.max_seconds
    connector = aiohttp.TCPConnector(limit=0)
    # One request may outlast the deadline by at most this timeout.
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=request_headers())
    async with session:
        await send_requests(session, plan, plan.warmup, deadline, LoadResult())
        result = LoadResult()
        started = time.perf_counter()
        await send_requests(session, plan, plan.requests, deadline, result)
        result.wall_s = time.perf_counter() - started
    result.timed_out = len(result.latencies_ms) + result.errors < plan.requests
    return result


async def send_requests(session: aiohttp.ClientSession, plan: LoadPlan, count: int, deadline: float,
                        result: LoadResult) -> None:
    """Send ``count`` requests from ``plan.concurrency`` workers, stopping early at ``deadline``."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            await send_one(session, plan.url, result)

    await asyncio.gather(*(worker() for _ in range(plan.concurrency)))


async def send_one(session: aiohttp.ClientSession, url: str, result: LoadResult) -> None:
    started = time.perf_counter()
    try:
        async with session.post(url, data=REQUEST_BODY) as reply:
            await reply.read()
            status = reply.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        record_error(result, f"{type(exc).__name__}: {exc}")
        return
    if status != 200:
        record_error(result, f"status {status}")
        return
    result.latencies_ms.append((time.perf_counter() - started) * 1000.0)


def record_error(result: LoadResult, description: str) -> None:
    result.errors += 1
    if result.first_error is None:
        result.first_error = description


def run_load(plan: LoadPlan) -> LoadResult:
    """Run one measurement in a fresh load-generator process and return its result."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=generate_load_in_child, args=(plan, sender), name="load generator",
                              daemon=True)
    process.start()
    sender.close()
    try:
        # The child stops sending at its own deadline. The extra minute covers its start-up
        # and the requests still in flight then, each limited to REQUEST_TIMEOUT.
        if not receiver.poll(plan.max_seconds + 60.0):
            raise RuntimeError(f"The load generator for {plan.url} sent no result within "
                               f"{plan.max_seconds + 60.0:.0f} s.")
        return receiver.recv()
    except EOFError:
        raise RuntimeError(f"The load generator for {plan.url} exited with code {process.exitcode}. "
                           "Its traceback is printed above.") from None
    finally:
        stop_process(process)


# Statistics and report --------------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    target: str
    concurrency: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    requests_per_s: float
    timed_out: bool


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of values sorted in ascending order."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(target: str, concurrency: int, result: LoadResult) -> Summary:
    latencies = sorted(result.latencies_ms)
    throughput = len(latencies) / result.wall_s if result.wall_s > 0 else math.nan
    return Summary(target=target, concurrency=concurrency, requests=len(latencies), errors=result.errors,
                   p50_ms=percentile(latencies, 0.50), p99_ms=percentile(latencies, 0.99),
                   requests_per_s=throughput, timed_out=result.timed_out)


def markdown_table(summaries: list[Summary]) -> str:
    """Format the summaries as a Markdown table.

    Added latency is a target's percentile minus the direct call's percentile at the same
    concurrency, a difference of percentiles rather than a percentile of differences.
    """
    direct = {summary.concurrency: summary for summary in summaries if summary.target == "direct"}
    header = "| target | concurrency | requests | errors | p50 ms | p99 ms | requests/s | added p50 ms | added p99 ms |"
    lines = [header, "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for summary in summaries:
        baseline = direct.get(summary.concurrency)
        added_p50 = added_p99 = "–"
        if baseline is not None and summary.target != "direct":
            added_p50 = f"{summary.p50_ms - baseline.p50_ms:+.3f}"
            added_p99 = f"{summary.p99_ms - baseline.p99_ms:+.3f}"
        requests = f"{summary.requests}{' (time limit)' if summary.timed_out else ''}"
        lines.append(f"| {TARGET_LABELS[summary.target]} | {summary.concurrency} | {requests} | {summary.errors} "
                     f"| {summary.p50_ms:.3f} | {summary.p99_ms:.3f} | {summary.requests_per_s:,.0f} "
                     f"| {added_p50} | {added_p99} |")
    return "\n".join(lines)


TARGET_LABELS = {
    "direct": "stand-in, direct",
    "httpx": "FastAPI + httpx.AsyncClient",
    "aiohttp": "FastAPI + aiohttp.ClientSession",
    "tunedock": "Tunedock gateway (aiohttp, key check)",
}


def describe_machine() -> list[str]:
    """Return the lines that identify the run: date, CPUs, load, Python and library versions."""
    versions = ", ".join(f"{name} {metadata.version(name)}"
                         for name in ("httpx", "aiohttp", "uvicorn", "fastapi", "starlette", "uvloop", "httptools"))
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return [f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
            f"load average before the run {load}",
            f"- Python {platform.python_version()}; {versions}"]


# Orchestration ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    requests: int | None
    concurrencies: tuple[int, ...]
    warmup: int
    max_seconds: float
    targets: tuple[str, ...]


def requests_for(concurrency: int, options: Options) -> int:
    # 2000 sequential requests take a few seconds per target. At higher concurrency, 5000
    # requests leave 50 samples above the p99.
    if options.requests is not None:
        return options.requests
    return 2000 if concurrency == 1 else 5000


@contextlib.contextmanager
def running_targets(targets: tuple[str, ...]) -> Iterator[dict[str, ServerProcess]]:
    """Start the stand-in and the chosen forwarders, and stop them all on exit."""
    with contextlib.ExitStack() as stack:
        home = stack.enter_context(tempfile.TemporaryDirectory(prefix="tunedock-bench-"))
        stand_in = start_server(stack, "stand-in", build_stand_in)
        servers = {"direct": stand_in}
        builders: dict[str, tuple[AppBuilder, tuple[Any, ...]]] = {
            "httpx": (build_httpx_proxy, (stand_in.url,)),
            "aiohttp": (build_aiohttp_proxy, (stand_in.url,)),
            "tunedock": (build_tunedock, (stand_in.url, stand_in.process.pid, home)),
        }
        for target in targets:
            if target != "direct":
                builder, args = builders[target]
                servers[target] = start_server(stack, f"{target} forwarder", builder, *args)
        for server in servers.values():
            wait_until_forwarding(server)
        yield {target: servers[target] for target in TARGETS if target in targets or target == "direct"}


def run_benchmark(options: Options) -> list[Summary]:
    """Measure every target at every concurrency in one run, against the same stand-in."""
    with running_targets(options.targets) as servers:
        return [measure_target(target, server, concurrency, options)
                for concurrency in options.concurrencies
                for target, server in servers.items()]


def measure_target(target: str, server: ServerProcess, concurrency: int, options: Options) -> Summary:
    plan = LoadPlan(url=f"{server.url}{COMPLETIONS_PATH}", concurrency=concurrency, warmup=options.warmup,
                    requests=requests_for(concurrency, options), max_seconds=options.max_seconds)
    logger.info("measuring %s at concurrency %s: %s requests", target, concurrency, plan.requests)
    result = run_load(plan)
    if result.first_error is not None:
        logger.warning("%s at concurrency %s: %s requests failed, the first with %s",
                       target, concurrency, result.errors, result.first_error)
    return summarize(target, concurrency, result)


# Command line -----------------------------------------------------------------------------

def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.forwarder_clients", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=positive_int, default=None,
                        help="Timed requests per target and concurrency (default: 2000 at concurrency 1, 5000 above).")
    parser.add_argument("--concurrency", type=concurrency_list, default=(1, 16),
                        help="Comma-separated numbers of requests in flight at once (default: 1,16).")
    parser.add_argument("--warmup", type=positive_int, default=200,
                        help="Untimed requests sent before each measurement (default: 200).")
    parser.add_argument("--max-seconds", type=positive_float, default=30.0,
                        help="Time limit of one measurement in seconds, warm-up included. A measurement "
                             "that reaches it reports fewer requests (default: 30).")
    parser.add_argument("--targets", type=target_list, default=TARGETS,
                        help=f"Comma-separated targets to measure. The direct call is always measured "
                             f"(default: {','.join(TARGETS)}).")
    args = parser.parse_args(argv)
    return Options(requests=args.requests, concurrencies=args.concurrency, warmup=args.warmup,
                   max_seconds=args.max_seconds, targets=args.targets)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}. Use a whole number of 1 or more")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}. Use a number of seconds above 0")
    return value


def concurrency_list(text: str) -> tuple[int, ...]:
    return tuple(positive_int(part.strip()) for part in text.split(",") if part.strip())


def target_list(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [target for target in chosen if target not in TARGETS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown targets {unknown}. Choose from {', '.join(TARGETS)}")
    return chosen


def exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds the ExitStack in running_targets, which stops the child processes.
    # The default SIGTERM action would end only this process and leave them running.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every readiness poll at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    options = parse_options(argv)
    machine = describe_machine()
    started = time.monotonic()
    summaries = run_benchmark(options)
    print("\n".join(machine))
    print(f"- wall time {time.monotonic() - started:.0f} s, load average after the run "
          f"{', '.join(f'{value:.2f}' for value in os.getloadavg())}")
    print()
    print(markdown_table(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
