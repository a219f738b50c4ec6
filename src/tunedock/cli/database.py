"""``tunedock db``: show and upgrade the store's schema, run on the server's machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.exc import OperationalError

from tunedock.cli.client import CliError
from tunedock.settings import Settings
from tunedock.store.database import redacted, schema_revisions, upgrade_schema

db_app = typer.Typer(no_args_is_help=True, help="Show or upgrade the database schema (uses TUNEDOCK_DATABASE_URL).")

HomeOption = Annotated[Path | None, typer.Option(help="Data directory; default TUNEDOCK_HOME or ~/.tunedock.")]


def _settings(home: Path | None) -> Settings:
    settings = Settings(home=home) if home is not None else Settings()
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    return settings


def _revisions(url: str) -> tuple[str | None, str]:
    try:
        return schema_revisions(url)
    except OperationalError as exc:
        raise CliError(f"Cannot reach the database at {redacted(url)}: {exc.orig}. Check "
                       "TUNEDOCK_DATABASE_URL and that the database server is running.") from exc


@db_app.command("current")
def db_current(home: HomeOption = None) -> None:
    """Print the schema revision of the database and the one this version needs."""
    settings = _settings(home)
    current, head = _revisions(settings.resolved_database_url)
    state = "behind"
    if current == head:
        state = "up to date"
    elif current is None:
        state = "empty"
    typer.echo(f"{redacted(settings.resolved_database_url)}: revision {current or 'none'}, needs {head} ({state})")


@db_app.command("upgrade")
def db_upgrade(home: HomeOption = None) -> None:
    """Apply every pending migration. Back up the database first."""
    settings = _settings(home)
    _revisions(settings.resolved_database_url)
    upgrade_schema(settings.resolved_database_url)
    current, _ = _revisions(settings.resolved_database_url)
    typer.echo(f"{redacted(settings.resolved_database_url)} is at revision {current}.")
