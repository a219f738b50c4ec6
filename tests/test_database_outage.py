"""A PostgreSQL outage: requests get a clear 503 at once, and the server recovers by itself."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.conftest import ADMIN_KEY, POSTGRES_URL, fresh_postgres_url
from tunedock.app import create_app
from tunedock.settings import Settings

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def admin_sql(statement: str) -> None:
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with engine.connect() as connection:
        connection.execute(text(statement))
    engine.dispose()


@pytest.fixture()
def outage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[dict[str, Any]]:
    url = fresh_postgres_url()
    name = make_url(url).database
    settings = Settings(home=tmp_path / "home", database_url=url, admin_api_key=ADMIN_KEY,
                        admin_password="test-password-1", port=18043, database_pool_timeout=2)
    with TestClient(create_app(settings)) as client:
        before = client.get("/api/models", headers=AUTH).status_code
        admin_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        during = client.get("/api/models", headers=AUTH)
        admin_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        with caplog.at_level(logging.WARNING, logger="tunedock.store.database"):
            after = client.get("/api/models", headers=AUTH).status_code
        yield {"before": before, "during": during, "after": after, "log": caplog.text}


def test_outage_request_is_503(outage: dict[str, Any]) -> None:
    assert outage["during"].status_code == 503


def test_outage_error_says_database(outage: dict[str, Any]) -> None:
    assert outage["during"].json()["error"]["code"] == "database_unavailable"


def test_server_recovers_after_outage(outage: dict[str, Any]) -> None:
    assert (outage["before"], outage["after"]) == (200, 200)
