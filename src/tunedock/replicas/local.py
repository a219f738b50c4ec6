"""Replicas as local model-server processes, one per replica, each in its own session."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections import deque
from pathlib import Path

import aiohttp

from tunedock.errors import ReplicaStartFailed
from tunedock.replicas.backend import ReplicaSpec, RunningReplica, SpawnCallback

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.1
STOP_GRACE_SECONDS = 15.0
HEALTH_TIMEOUT_SECONDS = 5.0
FAILURE_TAIL_LINES = 12
# The model server ends its output with one of these lines when it cannot start.
FAILURE_LINE_MARKERS = ("model load failed:", "model server failed to start:")


class LocalProcessBackend:
    def __init__(self, python: str, start_timeout: float, token: str | None = None) -> None:
        self.python = python
        self.start_timeout = start_timeout
        self.token = token
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            timeout = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_SECONDS)
            self._http = aiohttp.ClientSession(timeout=timeout)
        return self._http

    async def start(self, spec: ReplicaSpec, on_spawn: SpawnCallback | None = None) -> RunningReplica:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        port_file = spec.log_path.with_suffix(".port")
        port_file.unlink(missing_ok=True)
        process = await self._spawn(spec, port_file)
        logger.info("replica %s of deployment %s started as pid %s",
                    spec.replica_index, spec.deployment_id, process.pid)
        try:
            if on_spawn is not None:
                await on_spawn(process.pid)
            port = await self._wait_for_port(process, port_file, spec)
        except BaseException:
            await _terminate(process.pid, process)
            raise
        replica = RunningReplica(pid=process.pid, port=port, log_path=spec.log_path, process=process)
        if not await self.is_healthy(replica):
            await self.stop(replica)
            raise ReplicaStartFailed(f"Replica {spec.replica_index} listened on port {port} but failed "
                                     f"its health check: {failure_summary(spec.log_path)}")
        return replica

    async def _spawn(self, spec: ReplicaSpec, port_file: Path) -> asyncio.subprocess.Process:
        command = [
            self.python, "-m", "tunedock.runtime",
            "--model-path", spec.model_path,
            "--format", spec.model_format,
            "--port-file", str(port_file),
            "--engine", spec.engine,
            "--device", spec.device,
            "--served-model", spec.served_model,
            "--generation-defaults", json.dumps(spec.generation_defaults),
            "--max-batch-size", str(spec.max_batch_size),
            "--quantization", spec.quantization,
        ]
        if spec.threads is not None:
            command += ["--threads", str(spec.threads)]
        environment = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
                           TOKENIZERS_PARALLELISM="false")
        if self.token is not None:
            environment["TUNEDOCK_REPLICA_TOKEN"] = self.token
        with spec.log_path.open("ab") as log_file:
            # A new session keeps the replica alive across a crash of the control plane, so a
            # restarted server can adopt it, and lets stop() signal its whole process group.
            return await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=log_file,
                stderr=asyncio.subprocess.STDOUT, env=environment, start_new_session=True,
            )

    async def _wait_for_port(self, process: asyncio.subprocess.Process, port_file: Path,
                             spec: ReplicaSpec) -> int:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise ReplicaStartFailed(
                    f"The model server exited with status {process.returncode} while loading "
                    f"{spec.model_path}: {failure_summary(spec.log_path)}")
            if port_file.exists():
                return int(port_file.read_text().strip())
            await asyncio.sleep(POLL_INTERVAL)
        raise ReplicaStartFailed(
            f"The model server did not become ready within {self.start_timeout:.0f} s "
            f"(setting TUNEDOCK_REPLICA_START_TIMEOUT): {failure_summary(spec.log_path)}")

    async def is_healthy(self, replica: RunningReplica) -> bool:
        try:
            async with self._session().get(f"{replica.url}/health") as response:
                return response.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            logger.info("health check of replica pid %s on port %s failed: %s", replica.pid, replica.port, exc)
            return False

    async def stop(self, replica: RunningReplica) -> None:
        if replica.process is None and not is_model_server(replica.pid):
            logger.info("replica pid %s is already gone", replica.pid)
            return
        await _terminate(replica.pid, replica.process)
        logger.info("replica pid %s on port %s stopped", replica.pid, replica.port)

    def has_exited(self, replica: RunningReplica) -> bool:
        if replica.process is not None:
            return bool(replica.process.returncode is not None)
        return not process_exists(replica.pid)

    def last_words(self, replica: RunningReplica) -> str:
        return failure_summary(replica.log_path)

    async def adopt(self, pid: int, port: int, log_path: Path) -> RunningReplica | None:
        if not is_model_server(pid):
            return None
        replica = RunningReplica(pid=pid, port=port, log_path=log_path)
        return replica if await self.is_healthy(replica) else None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


def is_model_server(pid: int) -> bool:
    """Return whether ``pid`` is a live model-server process, not a reused process id."""
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return process_exists(pid) and not Path("/proc/self").exists()
    return b"tunedock.runtime" in command_line


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _terminate(pid: int, process: asyncio.subprocess.Process | None) -> None:
    """Send SIGTERM to the replica's process group, then SIGKILL after the grace period."""
    if not _signal_group(pid, signal.SIGTERM):
        return
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline:
        if await _has_exited(pid, process):
            return
        await asyncio.sleep(POLL_INTERVAL)
    logger.warning("replica pid %s ignored SIGTERM for %.0f s; sending SIGKILL", pid, STOP_GRACE_SECONDS)
    _signal_group(pid, signal.SIGKILL)
    while not await _has_exited(pid, process):
        await asyncio.sleep(POLL_INTERVAL)


def _signal_group(pid: int, signum: int) -> bool:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return False
    return True


async def _has_exited(pid: int, process: asyncio.subprocess.Process | None) -> bool:
    if process is not None:
        return process.returncode is not None
    # A process adopted from an earlier server is not our child; reap nothing, probe it.
    return not process_exists(pid)


def failure_summary(log_path: Path) -> str:
    """Return the model server's own one-line failure message, or else the end of its log."""
    tail = read_log_tail(log_path)
    for line in reversed(tail.splitlines()):
        if line.startswith(FAILURE_LINE_MARKERS):
            return f"{line.strip()} (full log: {log_path})"
    return f"last lines of {log_path}:\n{tail}"


def read_log_tail(log_path: Path, lines: int = FAILURE_TAIL_LINES) -> str:
    try:
        with log_path.open("r", encoding="utf-8", errors="replace") as log_file:
            return "".join(deque(log_file, maxlen=lines)).rstrip()
    except FileNotFoundError:
        return "(the model server wrote no log)"
