"""``tunedock serve``: configure logging, build the app and run it under uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
import uvicorn

from tunedock.accounts.service import FirstAdmin
from tunedock.app import create_app
from tunedock.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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

    app = create_app(settings, on_first_admin=_show_first_admin, on_started=on_started)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False, timeout_graceful_shutdown=30)
    uvicorn.Server(config).run()


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
