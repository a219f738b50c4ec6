"""Benchmark of the inference gateway's own cost per request, in front of a replica that responds at once.

Run from the repository root::

    .venv/bin/python -m bench.gateway [--duration 10] [--litellm /tmp/litellm-venv/bin/litellm]

The script starts each server in its own process on a free 127.0.0.1 port:

- a stand-in replica: raw asyncio with the httptools parser on uvloop, which responds to
  ``POST /v1/completions`` (and ``/v1/chat/completions``) with a fixed OpenAI-shaped body,
  or with a short server-sent event stream when the request has ``"stream": true``;
- the real Tunedock app from ``create_app``, started as ``tunedock serve`` starts it (INFO
  logging, uvicorn defaults), whose routing table sends the model to the stand-in;
- a plain FastAPI forwarder with one shared ``httpx.AsyncClient``;
- LiteLLM's proxy, when ``--litellm`` names its command (installed in a separate venv).

``wrk`` (Debian package ``wrk``) then loads each path in turn with 1 and 16 connections,
without and with streaming, and the script prints a Markdown table with p50, p99,
requests/s, and the latency each path adds over the direct call. Every process it starts
is stopped before it exits, also on error or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import json
import logging
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
MODEL = "bench-model"
# Tunedock checks this key, LiteLLM checks LITELLM_KEY, and the other servers ignore the header.
API_KEY = "tdk_bench_gateway_0123456789abcdef"
LITELLM_KEY = "sk-bench-gateway-0123456789abcdef"
COMPLETIONS_PATH = "/v1/completions"
CHAT_PATH = "/v1/chat/completions"
TARGETS = ("direct", "tunedock", "plain", "litellm")
TARGET_LABELS = {
    "direct": "stand-in, direct",
    "tunedock": "Tunedock gateway",
    "plain": "FastAPI + httpx.AsyncClient",
    "litellm": "LiteLLM proxy",
}
MODES = ("json", "stream")
STAND_IN_KINDS = ("asyncio", "uvicorn")
SERVER_START_TIMEOUT = 120.0
SERVER_STOP_TIMEOUT = 10.0
# wrk counts a request that takes longer than this as a timeout error.
REQUEST_TIMEOUT_S = 10
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Unless these variables are set, LiteLLM fetches a price list and other catalogs from the
# internet at start, rather than using the copies in its package. The benchmark sends no
# traffic off this machine.
LITELLM_OFFLINE_ENVIRONMENT = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_TELEMETRY_DISABLED": "true",
    "HF_HUB_OFFLINE": "1",
}


# Stand-in replica -----------------------------------------------------------------------------

def request_body(stream: bool) -> bytes:
    body: dict[str, Any] = {"model": MODEL, "prompt": "5 Jan 2024", "max_tokens": 8}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def completion_reply() -> bytes:
    body = json.dumps({
        "id": "cmpl-bench", "object": "text_completion", "created": 1700000000, "model": MODEL,
        "choices": [{"index": 0, "text": "2024-01-05", "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10},
    }, separators=(",", ":")).encode()
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    return head + body


def chat_reply() -> bytes:
    body = json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "2024-01-05"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10},
    }, separators=(",", ":")).encode()
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    return head + body


def stream_reply(chat: bool) -> bytes:
    """Return a chunked server-sent event stream: four text pieces, a final chunk, then [DONE]."""
    pieces = ["2024", "-01", "-05", ""]
    events = []
    for index, text in enumerate(pieces):
        finish = "stop" if index == len(pieces) - 1 else None
        if chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                     "model": MODEL, "choices": [choice]}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            chunk = {"id": "cmpl-bench", "object": "text_completion", "created": 1700000000, "model": MODEL,
                     "choices": [choice]}
        events.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in events) + b"0\r\n\r\n"
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    return head + chunked


def health_reply() -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}"


def not_found_reply() -> bytes:
    return b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class StandInProtocol(asyncio.Protocol):
    """One keep-alive connection to the stand-in, whose every response is a precomputed byte string."""

    REPLIES = {
        (COMPLETIONS_PATH, False): completion_reply(),
        (COMPLETIONS_PATH, True): stream_reply(chat=False),
        (CHAT_PATH, False): chat_reply(),
        (CHAT_PATH, True): stream_reply(chat=True),
    }

    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpRequestParser(self)
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport: Any = None
        self._url = b""
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._transport.write(self._reply())
        if not self._parser.should_keep_alive():
            self._transport.close()

    def _reply(self) -> bytes:
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        method = self._parser.get_method()
        if method == b"GET" and path == "/health":
            return health_reply()
        if method != b"POST" or path not in (COMPLETIONS_PATH, CHAT_PATH):
            return not_found_reply()
        try:
            stream = json.loads(b"".join(self._body)).get("stream") is True
        except (ValueError, AttributeError):
            stream = False
        return self.REPLIES[(path, stream)]


def serve_stand_in(port: int) -> None:
    import uvloop

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(StandInProtocol, HOST, port, backlog=1024)
        async with server:
            await server.serve_forever()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())


def stand_in_events(chat: bool) -> list[bytes]:
    """Return the server-sent events of ``stream_reply`` one by one, without the chunked framing."""
    reply = stream_reply(chat)
    events = []
    framed = reply.split(b"\r\n\r\n", 1)[1]
    while framed:
        size_text, _, rest = framed.partition(b"\r\n")
        size = int(size_text, 16)
        if size == 0:
            break
        events.append(rest[:size])
        framed = rest[size + 2:]
    return events


async def stand_in_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Serve the stand-in's responses as a bare ASGI application, the HTTP layer of a replica under uvicorn."""
    if scope["type"] != "http":
        return

    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break

    path = scope["path"]
    if scope["method"] == "GET" and path == "/health":
        await send_whole(send, 200, b'{"status":"ok"}', b"application/json")
        return
    if scope["method"] != "POST" or path not in (COMPLETIONS_PATH, CHAT_PATH):
        await send_whole(send, 404, b"{}", b"application/json")
        return
    try:
        stream = json.loads(b"".join(chunks)).get("stream") is True
    except (ValueError, AttributeError):
        stream = False

    chat = path == CHAT_PATH
    if not stream:
        reply = chat_reply() if chat else completion_reply()
        await send_whole(send, 200, reply.split(b"\r\n\r\n", 1)[1], b"application/json")
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
    for event in STAND_IN_EVENTS[chat]:
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def send_whole(send: Any, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


STAND_IN_EVENTS = {False: stand_in_events(chat=False), True: stand_in_events(chat=True)}


def serve_uvicorn_stand_in(port: int) -> None:
    import uvicorn

    config = uvicorn.Config(stand_in_asgi, host=HOST, port=port, log_config=None, access_log=False,
                            lifespan="off", backlog=1024)
    uvicorn.Server(config).run()


# Tunedock gateway -----------------------------------------------------------------------------

def serve_tunedock(port: int, upstream_port: int, home: Path, log_level: str) -> None:
    """Serve the real Tunedock app as `tunedock serve` does, with MODEL routed to the stand-in."""
    import uvicorn

    from tunedock.app import create_app
    from tunedock.settings import Settings

    # At INFO, the default of TUNEDOCK_LOG_LEVEL, the gateway writes an access-log line for
    # every request, as it does in production.
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    # Init arguments win over TUNEDOCK_* variables, and _env_file=None skips a stray .env,
    # so the store is always a fresh SQLite file in `home`.
    settings = Settings(_env_file=None, home=home, database_url=None, host=HOST, port=port,
                        admin_api_key=API_KEY, admin_password="bench-admin-password", model_roots=[home])
    on_started = functools.partial(route_to_stand_in, upstream_port=upstream_port, home=home)
    app = create_app(settings, on_started=on_started)
    config = uvicorn.Config(app, host=HOST, port=port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()


def route_to_stand_in(services: Any, upstream_port: int, home: Path) -> None:
    from tunedock.deployments.routing import ReplicaTarget, Route
    from tunedock.replicas.backend import RunningReplica

    # The stand-in ignores the replica token that the gateway sends. The ids match no row in
    # the store, which the gateway never reads on this path: it uses the routing table only.
    replica = RunningReplica(pid=0, port=upstream_port, log_path=home / "stand-in.log", host=HOST)
    services.routing.set(Route(model_id=1, slug=MODEL, deployment_id=1, deployment_name="bench-stand-in",
                               created=int(time.time()), targets=[ReplicaTarget(replica=replica)]))
    logger.info("routed %s to the stand-in on port %s", MODEL, upstream_port)


# Plain forwarder ------------------------------------------------------------------------------

def build_plain_forwarder(upstream_url: str) -> Any:
    """Build the forwarder most teams write first: FastAPI, JSON in and out, one httpx.AsyncClient."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(base_url=upstream_url, timeout=60.0) as client:
            app.state.client = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post(COMPLETIONS_PATH)
    async def completions(request: Request) -> Response:
        client: httpx.AsyncClient = request.app.state.client
        body = await request.json()
        if body.get("stream"):
            reply = await client.send(client.build_request("POST", COMPLETIONS_PATH, json=body), stream=True)
            return StreamingResponse(reply.aiter_raw(), status_code=reply.status_code,
                                     media_type=reply.headers.get("content-type"),
                                     background=BackgroundTask(reply.aclose))
        reply = await client.post(COMPLETIONS_PATH, json=body)
        return JSONResponse(reply.json(), status_code=reply.status_code)

    return app


def serve_plain_forwarder(port: int, upstream_url: str) -> None:
    import uvicorn

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    config = uvicorn.Config(build_plain_forwarder(upstream_url), host=HOST, port=port, log_config=None,
                            access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()


# LiteLLM proxy --------------------------------------------------------------------------------

def write_litellm_config(directory: Path, upstream_url: str) -> Path:
    # The text-completion-openai provider sends /v1/completions to api_base, as the other
    # paths do. Without a database, the master key is checked in memory.
    config = (
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: text-completion-openai/{MODEL}\n"
        f"      api_base: {upstream_url}/v1\n"
        "      api_key: unused-by-the-stand-in\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
    )
    path = directory / "litellm.yaml"
    path.write_text(config, encoding="utf-8")
    return path


# Server processes -----------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    api_key: str

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def start_server(stack: contextlib.ExitStack, name: str, command: list[str], port: int, log_dir: Path,
                 api_key: str = API_KEY, environment: dict[str, str] | None = None) -> Server:
    """Start ``command`` with its output in a log file, and register its stop with ``stack``."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(environment or {})}, cwd=Path(__file__).parent.parent)
    stack.callback(stop_process, name, process)
    logger.info("started %s (pid %s) on port %s, log %s", name, process.pid, port, log_path)
    return Server(name=name, process=process, port=port, log_path=log_path, api_key=api_key)


def stop_process(name: str, process: subprocess.Popen[bytes]) -> None:
    """Stop a child with SIGTERM, which lets uvicorn shut down cleanly, then SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        logger.warning("%s (pid %s) still runs %.0f s after SIGTERM, killing it", name, process.pid,
                       SERVER_STOP_TIMEOUT)
        process.kill()
        process.wait()


def wait_until_serving(server: Server) -> None:
    """Poll with both benchmark requests until each gets a 200 and a complete response."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    last_outcome = "no reply"
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                log_tail = server.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{server.name} exited with code {server.process.returncode}; "
                                   f"its log ends with:\n{log_tail}")
            with contextlib.suppress(httpx.TransportError):
                outcome = check_responses(client, server)
                if outcome is None:
                    return
                last_outcome = outcome
            time.sleep(0.2)
    raise RuntimeError(f"{server.name} did not respond to both requests within {SERVER_START_TIMEOUT:.0f} s. "
                       f"Last outcome: {last_outcome}. Its log is {server.log_path}.")


def check_responses(client: httpx.Client, server: Server) -> str | None:
    """Return None when both requests get complete responses, or else a description of the failure."""
    for stream in (False, True):
        reply = client.post(f"{server.url}{COMPLETIONS_PATH}", content=request_body(stream),
                            headers=request_headers(server.api_key))
        if reply.status_code != 200:
            return f"status {reply.status_code} (stream={stream}): {reply.text[:300]}"
        complete = "data: [DONE]" in reply.text if stream else "2024-01-05" in reply.text
        if not complete:
            return f"incomplete answer (stream={stream}): {reply.text[:300]}"
    return None


def request_headers(api_key: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}


@contextlib.contextmanager
def running_servers(options: Options) -> Iterator[dict[str, Server]]:
    """Start the stand-in and every forwarder in front of it, and stop them all on exit."""
    with contextlib.ExitStack() as stack:
        work_dir = options.log_dir or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="tunedock-bench-gateway-")))
        work_dir.mkdir(parents=True, exist_ok=True)
        python = [sys.executable, "-m", "bench.gateway"]
        stand_in_port = free_port()
        servers = {"direct": start_server(stack, "stand-in", [*python, "stand-in", "--port", str(stand_in_port),
                                                              "--kind", options.stand_in], stand_in_port, work_dir)}
        stand_in_url = servers["direct"].url
        port = free_port()
        servers["tunedock"] = start_server(
            stack, "tunedock", [*python, "tunedock", "--port", str(port), "--upstream-port", str(stand_in_port),
                                "--home", str(work_dir / "tunedock-home"), "--log-level", options.tunedock_log_level],
            port, work_dir)
        port = free_port()
        servers["plain"] = start_server(
            stack, "plain", [*python, "plain", "--port", str(port), "--upstream-url", stand_in_url], port, work_dir)
        if options.litellm is not None:
            port = free_port()
            config = write_litellm_config(work_dir, stand_in_url)
            servers["litellm"] = start_server(
                stack, "litellm", [options.litellm, "--config", str(config), "--host", HOST, "--port", str(port)],
                port, work_dir, api_key=LITELLM_KEY, environment=LITELLM_OFFLINE_ENVIRONMENT)
        for server in servers.values():
            wait_until_serving(server)
        yield servers


# Load generator -------------------------------------------------------------------------------

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'RESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, "connect": %%d, ' ..
    '"read": %%d, "write": %%d, "status": %%d, "timeout": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50.0), latency:percentile(99.0),
    errors.connect, errors.read, errors.write, errors.status, errors.timeout))
end
"""


@dataclass(frozen=True)
class Measurement:
    target: str
    mode: str
    concurrency: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    requests_per_s: float


def write_wrk_script(directory: Path, server: Server, stream: bool) -> Path:
    body = json.dumps(request_body(stream).decode())
    path = directory / f"{server.name}-{'stream' if stream else 'json'}.lua"
    path.write_text(WRK_SCRIPT % {"body": body, "key": server.api_key}, encoding="utf-8")
    return path


def run_wrk(script: Path, url: str, concurrency: int, seconds: float) -> dict[str, int]:
    """Run wrk with one thread and ``concurrency`` keep-alive connections, and parse its RESULT line."""
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", f"--timeout={REQUEST_TIMEOUT_S}s",
               "-s", str(script), url]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
    if finished.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed with code {finished.returncode}: {finished.stderr or finished.stdout}")
    result: dict[str, int] = json.loads(lines[-1][len("RESULT "):])
    return result


def measure(server: Server, mode: str, concurrency: int, options: Options, script_dir: Path) -> Measurement:
    script = write_wrk_script(script_dir, server, stream=mode == "stream")
    url = f"{server.url}{COMPLETIONS_PATH}"
    logger.info("measuring %s, %s, %d connection(s)", server.name, mode, concurrency)
    run_wrk(script, url, concurrency, options.warmup)
    result = run_wrk(script, url, concurrency, options.duration)
    errors = sum(result[kind] for kind in ("connect", "read", "write", "status", "timeout"))
    if errors:
        logger.warning("%s, %s, %d connection(s): %d errors %s", server.name, mode, concurrency, errors, result)
    return Measurement(target=server.name if server.name != "stand-in" else "direct", mode=mode,
                       concurrency=concurrency, requests=result["requests"], errors=errors,
                       p50_ms=result["p50_us"] / 1000.0, p99_ms=result["p99_us"] / 1000.0,
                       requests_per_s=result["requests"] / (result["duration_us"] / 1e6))


def run_benchmark(options: Options) -> list[Measurement]:
    """Measure every path, mode and concurrency in one run, against the same stand-in."""
    with running_servers(options) as servers, tempfile.TemporaryDirectory(prefix="wrk-") as script_dir:
        return [measure(servers[target], mode, concurrency, options, Path(script_dir))
                for concurrency in options.concurrencies
                for mode in MODES
                for target in TARGETS if target in servers]


# Report ---------------------------------------------------------------------------------------

def markdown_table(measurements: list[Measurement]) -> str:
    """Format the measurements as a Markdown table.

    Added latency is a path's percentile minus the direct call's percentile in the same
    mode and concurrency: a difference of percentiles, not a percentile of differences.
    """
    baselines = {(m.mode, m.concurrency, m.target): m for m in measurements}
    lines = ["| path | mode | connections | requests | errors | p50 ms | p99 ms | requests/s "
             "| added p50 ms | added p99 ms | % of direct req/s | × plain req/s |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for m in measurements:
        direct = baselines.get((m.mode, m.concurrency, "direct"))
        plain = baselines.get((m.mode, m.concurrency, "plain"))
        added_p50 = added_p99 = share = ratio = "–"
        if direct is not None and m.target != "direct":
            added_p50 = f"{m.p50_ms - direct.p50_ms:+.3f}"
            added_p99 = f"{m.p99_ms - direct.p99_ms:+.3f}"
            share = f"{100 * m.requests_per_s / direct.requests_per_s:.0f}%"
        if plain is not None and m.target not in ("direct", "plain"):
            ratio = f"{m.requests_per_s / plain.requests_per_s:.2f}"
        lines.append(f"| {TARGET_LABELS[m.target]} | {m.mode} | {m.concurrency} | {m.requests:,} | {m.errors} "
                     f"| {m.p50_ms:.3f} | {m.p99_ms:.3f} | {m.requests_per_s:,.0f} | {added_p50} | {added_p99} "
                     f"| {share} | {ratio} |")
    return "\n".join(lines)


def goal_lines(measurements: list[Measurement]) -> list[str]:
    """Compare the Tunedock rows with the goals: added p50 < 1 ms and p99 < 5 ms at 1 connection,
    and at 16 connections at least 50% of the direct requests/s and 5 times the plain forwarder's."""
    rows = {(m.target, m.mode, m.concurrency): m for m in measurements}
    lines = []
    for mode in MODES:
        tunedock, direct = rows.get(("tunedock", mode, 1)), rows.get(("direct", mode, 1))
        if tunedock is not None and direct is not None:
            added_p50, added_p99 = tunedock.p50_ms - direct.p50_ms, tunedock.p99_ms - direct.p99_ms
            lines.append(f"- {mode}, 1 connection: added p50 {added_p50:.3f} ms (goal < 1: "
                         f"{'met' if added_p50 < 1 else 'missed'}), added p99 {added_p99:.3f} ms "
                         f"(goal < 5: {'met' if added_p99 < 5 else 'missed'})")
        tunedock, direct, plain = (rows.get((target, mode, 16)) for target in ("tunedock", "direct", "plain"))
        if tunedock is not None and direct is not None and plain is not None:
            share = tunedock.requests_per_s / direct.requests_per_s
            ratio = tunedock.requests_per_s / plain.requests_per_s
            lines.append(f"- {mode}, 16 connections: {100 * share:.0f}% of direct req/s (goal ≥ 50%: "
                         f"{'met' if share >= 0.5 else 'missed'}), {ratio:.2f} × plain forwarder req/s "
                         f"(goal ≥ 5: {'met' if ratio >= 5 else 'missed'})")
    return lines


def describe_machine(options: Options) -> list[str]:
    names = ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "aiohttp", "httpx")
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in names)
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    lines = [f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- machine: {platform.machine()}, {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
             f"load average before the run {', '.join(f'{value:.2f}' for value in os.getloadavg())}",
             f"- Python {platform.python_version()}; {versions}; {wrk_version.split(' Copyright')[0]}",
             f"- stand-in: {options.stand_in}"]
    if options.litellm is not None:
        litellm_python = Path(options.litellm).with_name("python")
        version = subprocess.run([str(litellm_python), "-c", "import importlib.metadata as m; "
                                  "print(m.version('litellm'))"], capture_output=True, text=True, check=False)
        lines.append(f"- LiteLLM {version.stdout.strip()} (its own venv, `{options.litellm}`)")
    return lines


# Command line ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    duration: float
    warmup: float
    concurrencies: tuple[int, ...]
    litellm: str | None
    log_dir: Path | None
    tunedock_log_level: str
    stand_in: str = "asyncio"


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}. Use a number of seconds above 0")
    return value


def concurrency_list(text: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in text.split(",") if part.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}. Use whole numbers of 1 or more, such as 1,16")
    return values


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the benchmark's options, or one of the server commands that the benchmark runs."""
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=positive_float, default=10.0,
                        help="Seconds each measurement runs (default: 10).")
    parser.add_argument("--warmup", type=positive_float, default=2.0,
                        help="Seconds of untimed load before each measurement (default: 2).")
    parser.add_argument("--concurrency", type=concurrency_list, default=(1, 16),
                        help="Comma-separated numbers of open connections (default: 1,16).")
    parser.add_argument("--litellm", default=None,
                        help="The `litellm` command of a venv with litellm[proxy]. Without it, the LiteLLM "
                             "rows are left out.")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="Keep the servers' logs and the Tunedock store in this directory "
                             "(default: a temporary directory, removed at the end).")
    parser.add_argument("--stand-in", choices=STAND_IN_KINDS, default="asyncio",
                        help="The stand-in replica: raw asyncio with httptools (asyncio), or a bare ASGI "
                             "application under uvicorn, the HTTP layer of a real replica (default: asyncio).")
    parser.add_argument("--tunedock-log-level", default="INFO", choices=("INFO", "WARNING"),
                        help="Log level of the Tunedock server. At INFO, the server's default, it writes "
                             "an access-log line per request (default: INFO).")

    # The benchmark starts each server with one of these commands, in its own process.
    commands = parser.add_subparsers(dest="command")
    stand_in = commands.add_parser("stand-in", help="Serve the stand-in replica.")
    stand_in.add_argument("--port", type=int, required=True)
    stand_in.add_argument("--kind", choices=STAND_IN_KINDS, default="asyncio")

    tunedock = commands.add_parser("tunedock", help="Serve the Tunedock gateway.")
    tunedock.add_argument("--port", type=int, required=True)
    tunedock.add_argument("--upstream-port", type=int, required=True)
    tunedock.add_argument("--home", type=Path, required=True)
    tunedock.add_argument("--log-level", default="INFO")

    plain = commands.add_parser("plain", help="Serve the plain httpx forwarder.")
    plain.add_argument("--port", type=int, required=True)
    plain.add_argument("--upstream-url", required=True)
    return parser.parse_args(argv)


def exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds the ExitStack in running_servers, which stops the child processes.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.command == "stand-in":
        if arguments.kind == "uvicorn":
            serve_uvicorn_stand_in(arguments.port)
        else:
            serve_stand_in(arguments.port)
        return 0
    if arguments.command == "tunedock":
        serve_tunedock(arguments.port, arguments.upstream_port, arguments.home, arguments.log_level)
        return 0
    if arguments.command == "plain":
        serve_plain_forwarder(arguments.port, arguments.upstream_url)
        return 0

    signal.signal(signal.SIGTERM, exit_on_sigterm)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if shutil.which("wrk") is None:
        print("wrk is not installed; install it with `apt-get install -y wrk`.", file=sys.stderr)
        return 1
    options = Options(duration=arguments.duration, warmup=arguments.warmup, concurrencies=arguments.concurrency,
                      litellm=arguments.litellm, log_dir=arguments.log_dir,
                      tunedock_log_level=arguments.tunedock_log_level, stand_in=arguments.stand_in)
    machine = describe_machine(options)
    started = time.monotonic()
    measurements = run_benchmark(options)
    print("\n".join(machine))
    print(f"- wall time {time.monotonic() - started:.0f} s, load average after the run "
          f"{', '.join(f'{value:.2f}' for value in os.getloadavg())}")
    print()
    print(markdown_table(measurements))
    print()
    print("\n".join(goal_lines(measurements)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
