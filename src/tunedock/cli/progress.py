"""Live display of a job: its server-sent progress events, reconnecting when the stream drops.

``GET /api/jobs/{id}/events`` sends one ``progress`` event per job event, with the event's
sequence number as its id, and finally one ``end`` event whose data is the whole job. A
client that reconnects with ``Last-Event-ID`` receives only the events after that id.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import typer

from tunedock.cli.client import ApiClient, CliError, StreamDropped

# Consecutive reconnects without a new event before the CLI gives up watching.
MAX_RECONNECTS = 5
RECONNECT_FIRST_DELAY_SECONDS = 0.5
RECONNECT_MAX_DELAY_SECONDS = 5.0
STAGE_WIDTH = 20


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None


def parse_events(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """Group the lines of a text/event-stream body into events, skipping comment lines (a leading colon)."""
    name, data, event_id = "", [], None
    for line in lines:
        if not line:
            if data:
                yield ServerSentEvent(event=name or "message", data="\n".join(data), id=event_id)
            name, data, event_id = "", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


def elapsed_seconds(job: dict[str, Any], event: dict[str, Any]) -> float:
    """Return the seconds from the job's creation to the event, both as the server timed them."""
    return (datetime.fromisoformat(event["created_at"]) - datetime.fromisoformat(job["created_at"])).total_seconds()


def event_line(job: dict[str, Any], event: dict[str, Any]) -> str:
    return f"  {elapsed_seconds(job, event):6.1f} s  {event['stage']:<{STAGE_WIDTH}} {event['message']}"


class JobDisplay:
    """Print each progress event as a line, and on a terminal keep a spinner with the current stage below."""

    def __init__(self, job: dict[str, Any], quiet: bool) -> None:
        self.quiet = quiet
        self.job = job
        self.stage = "queued"
        self.elapsed = 0.0
        self._shown_at = time.monotonic()
        self._live: Any = None
        if not quiet:
            self._start_live()

    def _start_live(self) -> None:
        # rich is a dependency of typer, so it is installed wherever the CLI is.
        from rich.console import Console
        from rich.live import Live

        console = Console()
        if console.is_terminal and not console.is_dumb_terminal:
            self._live = Live(_StatusLine(self), console=console, transient=True, refresh_per_second=10)

    def __enter__(self) -> JobDisplay:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()

    def show(self, event: dict[str, Any]) -> None:
        self.stage = event["stage"]
        self.elapsed = elapsed_seconds(self.job, event)
        self._shown_at = time.monotonic()
        if self.quiet:
            return
        line = event_line(self.job, event)
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            typer.echo(line)

    def status_text(self) -> str:
        # Server time of the last event plus local time since it arrived, so clock skew between
        # the two machines does not show.
        elapsed = self.elapsed + time.monotonic() - self._shown_at
        return f"{self.stage} ({elapsed:.0f} s)"


class _StatusLine:
    def __init__(self, display: JobDisplay) -> None:
        from rich.spinner import Spinner

        self.display = display
        self.spinner = Spinner("dots")

    def __rich__(self) -> Any:
        self.spinner.update(text=self.display.status_text())
        return self.spinner


def follow_job(client: ApiClient, job: dict[str, Any], title: str, quiet: bool) -> dict[str, Any]:
    """Show a job's progress until it ends and return the ended job.

    Ctrl-C stops only the watching. It prints how to watch or cancel the job and exits with status 130.
    """
    try:
        if not quiet:
            typer.echo(title)
        with JobDisplay(job, quiet) as display:
            return _stream_until_end(client, job["id"], display)
    except KeyboardInterrupt:
        typer.echo(interrupted_message(job), err=True)
        raise typer.Exit(130) from None


def interrupted_message(job: dict[str, Any]) -> str:
    job_id = job["id"]
    message = (f"Stopped watching. Job {job_id} ({job['action']}) continues on the server. "
               f"`tunedock jobs watch {job_id}` shows its progress again")
    if job["action"] == "deploy":
        message += f", and `tunedock jobs cancel {job_id}` cancels it"
    return message + "."


def _stream_until_end(client: ApiClient, job_id: int, display: JobDisplay) -> dict[str, Any]:
    path = f"/api/jobs/{job_id}/events"
    last_event_id: str | None = None
    attempts_without_event = 0
    while True:
        headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
        try:
            with closing(client.stream_lines(path, headers)) as lines:
                for event in parse_events(lines):
                    if event.event == "end":
                        ended: dict[str, Any] = json.loads(event.data)
                        return ended
                    if event.event == "progress":
                        display.show(json.loads(event.data))
                        attempts_without_event = 0
                    if event.id is not None:
                        last_event_id = event.id
            reason = "the server closed the stream before the job ended"
        except StreamDropped as exc:
            # A silent server is normal during a long stage, such as loading a large model.
            if exc.timed_out:
                continue
            reason = str(exc)

        attempts_without_event += 1
        if attempts_without_event > MAX_RECONNECTS:
            raise CliError(f"Lost the progress stream of job {job_id} ({reason}). The job continues on the "
                           f"server, and `tunedock jobs watch {job_id}` shows its progress again.")
        delay = min(RECONNECT_FIRST_DELAY_SECONDS * 2 ** (attempts_without_event - 1), RECONNECT_MAX_DELAY_SECONDS)
        typer.echo(f"Progress stream of job {job_id} interrupted ({reason}). Reconnecting in {delay:.1f} s.",
                   err=True)
        time.sleep(delay)
