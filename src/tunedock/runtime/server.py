"""Listening socket, port file and uvicorn for the model server.

The process binds port 0 itself and only then writes the chosen port to the port
file, so no other process can take the port in between. The port file appearing
means that the model is loaded and the socket accepts connections.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 128
# Seconds that a SIGTERM waits for requests in flight before uvicorn cancels them.
GRACEFUL_SHUTDOWN_SECONDS = 10


def bind_listening_socket(host: str) -> socket.socket:
    """Bind a TCP socket to a free port on ``host`` and start listening on it."""
    family, kind, protocol, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, protocol)
    try:
        sock.bind(address)
        # Listening now lets connections queue in the backlog before uvicorn accepts them.
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def write_port_file(path: Path, port: int) -> None:
    """Write ``port`` to ``path`` atomically: readers see the whole file or none."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(f"{port}\n", encoding="ascii")
    os.replace(temporary, path)


def serve(app: ASGIApp, sock: socket.socket, log_level: str) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT; uvicorn handles the signals."""
    config = uvicorn.Config(
        app,
        log_config=None,  # Keep the logging that the command line configured.
        log_level=log_level.lower(),
        access_log=log_level == "DEBUG",  # One line per request costs time at INFO volume.
        lifespan="off",
        # Nothing in the app reads the client address or scheme that X-Forwarded-* headers would set.
        proxy_headers=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    uvicorn.Server(config).run(sockets=[sock])
