"""Job events written by several threads at once, as a deploy task and a cancel request do."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import fresh_database_url
from tunedock.deployments import records
from tunedock.store.database import Database, prepare_schema
from tunedock.store.tables import Deployment, Job, Model

WRITERS = 8
EVENTS_PER_WRITER = 10


def _database(tmp_path: Path) -> Database:
    url = fresh_database_url() or f"sqlite:///{tmp_path / 'events.db'}"
    prepare_schema(url)
    return Database(url)


def _job(database: Database) -> int:
    with database.session() as session:
        model = Model(name="Events T5", slug="events-t5", source_path="/models/events-t5", format="seq2seq-lm",
                      architecture="T5ForConditionalGeneration", parameter_count=1, size_bytes=1, created_by=None)
        session.add(model)
        session.flush()
        deployment = Deployment(model_id=model.id, name="Events T5_v1", version=1, status="deploying",
                                parameters={}, deployed_by="admin")
        session.add(deployment)
        session.flush()
        job = Job(deployment_id=deployment.id, action="deploy", status="in_progress", created_by="admin")
        session.add(job)
        session.flush()
        return job.id


def test_concurrent_events_get_distinct_sequences(tmp_path: Path) -> None:
    database = _database(tmp_path)
    job_id = _job(database)

    def write(writer: int) -> None:
        for index in range(EVENTS_PER_WRITER):
            records.add_event(database, job_id, "progress", f"writer {writer} event {index}")

    try:
        with ThreadPoolExecutor(WRITERS) as pool:
            list(pool.map(write, range(WRITERS)))
        sequences = [event.sequence for event in records.get_job(database, job_id)[1]]
    finally:
        database.dispose()

    assert sorted(sequences) == list(range(1, WRITERS * EVENTS_PER_WRITER + 1))
