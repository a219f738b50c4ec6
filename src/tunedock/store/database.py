"""Engine, sessions and schema migrations of the store (SQLite by default, PostgreSQL for teams)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.orm import Session, sessionmaker

from tunedock.errors import TunedockError

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class SchemaBehind(TunedockError):
    code = "schema_behind"


@dataclass(frozen=True)
class PoolSettings:
    size: int = 5
    max_overflow: int = 10
    timeout: float = 10.0  # seconds a request waits for a free connection before failing
    connect_timeout: int = 5  # seconds to reach the database server


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed while a deploy writes; busy_timeout makes writers queue
    # instead of failing at once with "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _log_lost_connection(context: ExceptionContext) -> None:
    if context.is_disconnect:
        logger.warning("lost the database connection (%s); the pool reconnects on the next use",
                       type(context.original_exception).__name__)


def create_database_engine(url: str, pool: PoolSettings | None = None) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    pool = pool or PoolSettings()
    # pool_pre_ping replaces a connection the server dropped before a session uses it.
    engine = create_engine(url, pool_pre_ping=True, pool_size=pool.size, max_overflow=pool.max_overflow,
                           pool_timeout=pool.timeout, connect_args={"connect_timeout": pool.connect_timeout})
    event.listen(engine, "handle_error", _log_lost_connection)
    return engine


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_schema(url: str) -> None:
    logger.info("applying database migrations to %s", redacted(url))
    command.upgrade(alembic_config(url), "head")


def schema_revisions(url: str) -> tuple[str | None, str]:
    """Return the database's current revision (None when empty) and the code's head revision."""
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = create_database_engine(url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    return current, head or ""


def prepare_schema(url: str) -> None:
    """Create the schema in an empty database; refuse a schema that is behind this version."""
    current, head = schema_revisions(url)
    if current is None:
        upgrade_schema(url)
        return
    if current != head:
        raise SchemaBehind(f"The database schema is at revision {current}, and this version of Tunedock needs "
                           f"{head}. Back up the database, then run `tunedock db upgrade` with the same "
                           "TUNEDOCK_DATABASE_URL (or TUNEDOCK_HOME).")


def redacted(url: str) -> str:
    """Hide the password of a database URL before it is logged."""
    return make_url(url).render_as_string(hide_password=True)


class Database:
    """The store's engine and a session factory bound to it."""

    def __init__(self, url: str, pool: PoolSettings | None = None) -> None:
        self.url = url
        self.engine = create_database_engine(url, pool)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Yield a session that commits on success and rolls back on any exception."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
