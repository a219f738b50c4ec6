"""The migrations build exactly the schema that the table classes describe, on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from tests.conftest import POSTGRES_URL, fresh_postgres_url
from tunedock.store.database import SchemaBehind, alembic_config, prepare_schema, upgrade_schema
from tunedock.store.tables import Base

REVISIONS = [script.revision for script in reversed(list(
    ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()))]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        yield fresh_postgres_url()


def table_names(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    names = set(inspect(engine).get_table_names())
    engine.dispose()
    return names


def test_migrated_schema_matches_tables(database_url: str) -> None:
    upgrade_schema(database_url)
    engine = create_engine(database_url, poolclass=NullPool)
    with engine.connect() as connection:
        drift = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert drift == []


def test_downgrade_to_empty_then_upgrade_again(database_url: str) -> None:
    upgrade_schema(database_url)
    command.downgrade(alembic_config(database_url), "base")
    upgrade_schema(database_url)
    assert set(Base.metadata.tables) <= table_names(database_url)


@pytest.mark.parametrize("start", REVISIONS[:-1])
def test_upgrade_from_each_earlier_revision(database_url: str, start: str) -> None:
    command.upgrade(alembic_config(database_url), start)
    upgrade_schema(database_url)
    assert set(Base.metadata.tables) <= table_names(database_url)


def test_schema_behind_is_refused(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), REVISIONS[0])
    with pytest.raises(SchemaBehind, match="tunedock db upgrade"):
        prepare_schema(database_url)


def test_empty_database_is_created(database_url: str) -> None:
    prepare_schema(database_url)
    assert "deployments" in table_names(database_url)


def test_postgres_is_reachable() -> None:
    engine = create_engine(POSTGRES_URL, poolclass=NullPool)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar_one() == 1
    engine.dispose()
