"""``tunedock serve``: configure logging, build the app and run it under uvicorn."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import typer
import uvicorn
from sqlalchemy.exc import OperationalError

from tunedock.accounts.service import FirstAdmin
from tunedock.app import create_app
from tunedock.errors import Conflict, TunedockError
from tunedock.home_lock import HomeLock
from tunedock.settings import Settings
from tunedock.store.database import prepare_schema, redacted

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
KEEP_ALIVE_SECONDS = 75


def run_server(host: str | None, port: int | None, home: Path | None, demo: bool) -> None:
    overrides: dict[str, Any] = {key: value for key, value in
                                 {"host": host, "port": port, "home": home}.items() if value is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    on_started = None
    if demo:
        from tunedock.demo.launch import launch_demo

        def on_started(services: Any) -> Any:
            return launch_demo(services, typer.echo)

    lock = HomeLock(settings.home_dir)
    try:
        lock.acquire(settings.base_url)
        _check_port_free(settings.host, settings.port)
        prepare_schema(settings.resolved_database_url)
    except TunedockError as exc:
        lock.release()
        typer.echo(f"Error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except OperationalError as exc:
        lock.release()
        typer.echo(f"Error: cannot reach the database at {redacted(settings.resolved_database_url)}: "
                   f"{exc.orig}. Check TUNEDOCK_DATABASE_URL and that the server is running.", err=True)
        raise typer.Exit(1) from None
    app = create_app(settings, on_first_admin=_show_first_admin, on_started=on_started)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False, timeout_graceful_shutdown=settings.drain_timeout,
                            # Longer than clients' pools keep idle connections, so a client never
                            # reuses one that the server has just closed (a reset on its next request).
                            timeout_keep_alive=KEEP_ALIVE_SECONDS)
    try:
        uvicorn.Server(config).run()
    finally:
        lock.release()


def _check_port_free(host: str, port: int) -> None:
    """Fail before anything is created if the listen address is taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise Conflict(f"Cannot listen on {host}:{port} ({exc.strerror}); stop what uses that port or pick "
                           "another with --port or TUNEDOCK_PORT.", code="port_in_use") from None


def _show_first_admin(first_admin: FirstAdmin, settings: Settings) -> None:
    """Print the generated first-admin secrets once; they are stored only as hashes."""
    lines = [f"First start: created the admin user {first_admin.username!r}."]
    if first_admin.password:
        lines.append(f"  password: {first_admin.password}")
    if first_admin.api_key:
        lines.append(f"  API key:  {first_admin.api_key}")
        lines.append(f"  export TUNEDOCK_API_KEY={first_admin.api_key}")
    lines.append(f"These are shown only now. The CLI reads the key from {settings.client_config_path}.")
    typer.echo("\n".join(lines))
