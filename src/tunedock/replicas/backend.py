"""The replica backend interface that the deployment manager uses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything one model-server process needs to start."""

    deployment_id: int
    replica_index: int
    model_path: str
    model_format: str
    served_model: str
    engine: str
    device: str
    threads: int | None
    generation_defaults: dict[str, Any]
    log_path: Path
    max_batch_size: int = 8
    quantization: str = "none"


@dataclass
class RunningReplica:
    pid: int
    port: int
    log_path: Path
    host: str = "127.0.0.1"
    process: Any = field(default=None, repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


# Called with the process id as soon as a replica's process exists, before it is ready,
# so that the store knows about every process even if the control plane dies mid-load.
SpawnCallback = Callable[[int], Awaitable[None]]


class ReplicaBackend(Protocol):
    async def start(self, spec: ReplicaSpec, on_spawn: SpawnCallback | None = None) -> RunningReplica:
        """Start a replica and return once it is healthy; raise ReplicaStartFailed otherwise."""

    async def is_healthy(self, replica: RunningReplica) -> bool:
        """Return whether the replica answers its health check."""

    def has_exited(self, replica: RunningReplica) -> bool:
        """Return whether the replica's process is gone."""

    def last_words(self, replica: RunningReplica) -> str:
        """Return the replica's own failure message, or the end of its log."""

    async def stop(self, replica: RunningReplica) -> None:
        """Stop a replica, gracefully first; return once it is gone."""

    async def adopt(self, pid: int, port: int, log_path: Path) -> RunningReplica | None:
        """Return a replica left by an earlier server process if it is still healthy."""

    async def close(self) -> None:
        """Release the backend's own resources; replicas are stopped separately."""
