"""The CLI through a model's life: deploy, Ctrl-C and watch, redeploy, diff, cancel, fail, delete.

The module fixtures run in this order against one model, and each adds one version:

- v1: deploy with every option;
- v2: deploy interrupted by Ctrl-C, then watched to its end;
- v3: redeploy of v1;
- v4: deploy after the model files changed;
- v5: redeploy of v1, cancelled while it waits behind v4;
- v6: deploy of broken weights, which fails.

Then the model is un-deployed and deleted.
"""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess
from tests.test_cli import CLI_TIMEOUT, GPT2_DIR, tunedock, tunedock_json
from tunedock.cli.progress import parse_events

pytestmark = pytest.mark.e2e

MODEL_NAME = "Dates CLI lifecycle"
SLUG = "dates-cli-lifecycle"
SECTIONS = ("General", "Deployment", "Un-deployment")


def job_id_in(output: str) -> int:
    found = re.search(r"\(job (\d+)\)", output)
    assert found is not None, output
    return int(found.group(1))


def version_record(server: ServerProcess, version: int) -> Any:
    return tunedock_json(server, "history", MODEL_NAME, "--version", str(version))


# Module fixtures, one per step of the model's life -----------------------------------------


@pytest.fixture(scope="module")
def model_dir(server: ServerProcess) -> Path:
    """A copy of the GPT-2 demo model inside the server's model roots, changed by later steps."""
    target = server.home / "models" / "cli-lifecycle-gpt2"
    shutil.copytree(GPT2_DIR, target)
    return target


@pytest.fixture(scope="module")
def registered(server: ServerProcess, model_dir: Path) -> dict[str, Any]:
    model: dict[str, Any] = tunedock_json(server, "models", "add", str(model_dir), "--name", MODEL_NAME)
    return model


@pytest.fixture(scope="module")
def first(server: ServerProcess, registered: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return tunedock(server, "deploy", MODEL_NAME, "--temperature", "0", "--max-tokens", "12", "--top-k", "5",
                    "--quantization", "none", "--scale-up-delay", "10", "--scale-down-delay", "60",
                    "--idle-undeploy-after", "3600", "--wait")


@dataclass(frozen=True)
class Interrupted:
    returncode: int
    stdout: str
    stderr: str
    job_id: int


@pytest.fixture(scope="module")
def interrupted(server: ServerProcess, first: subprocess.CompletedProcess[str]) -> Interrupted:
    """`deploy --wait` of v2, sent SIGINT as soon as it has printed its job id."""
    process = subprocess.Popen([sys.executable, "-m", "tunedock", "deploy", MODEL_NAME, "--max-tokens", "8",
                                "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=server.environment())
    assert process.stdout is not None
    title = process.stdout.readline()
    # NOTE: this assumes that the deploy is still running when the signal arrives. The tiny
    # model takes seconds to load, and the signal follows the title line within milliseconds.
    process.send_signal(signal.SIGINT)
    rest, stderr = process.communicate(timeout=CLI_TIMEOUT)
    return Interrupted(process.returncode, title + rest, stderr, job_id_in(title))


@pytest.fixture(scope="module")
def watched(server: ServerProcess, interrupted: Interrupted) -> subprocess.CompletedProcess[str]:
    return tunedock(server, "jobs", "watch", str(interrupted.job_id))


@pytest.fixture(scope="module")
def redeployed(server: ServerProcess, watched: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    return tunedock(server, "redeploy", MODEL_NAME, "--version", "1", "--description", "Back to v1", "--wait")


@pytest.fixture(scope="module")
def files_changed(server: ServerProcess, model_dir: Path,
                  redeployed: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """A redeploy of v1, without --allow-changed-files, after a file of the model changed."""
    readme = model_dir / "README.md"
    readme.write_text(readme.read_text() + "\nChanged after v1 ran.\n")
    return tunedock(server, "redeploy", MODEL_NAME, "--version", "1")


@dataclass(frozen=True)
class Cancelled:
    queued: dict[str, Any]
    cancel: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def cancelled(server: ServerProcess, files_changed: subprocess.CompletedProcess[str]) -> Cancelled:
    """v4 deploys, and v5, a redeploy of v1 on the changed files, waits behind it and is cancelled."""
    ahead = tunedock_json(server, "deploy", MODEL_NAME)
    queued = tunedock_json(server, "redeploy", MODEL_NAME, "--version", "1", "--allow-changed-files")
    cancel = tunedock(server, "jobs", "cancel", str(queued["job"]["id"]))
    watched_ahead = tunedock(server, "jobs", "watch", str(ahead["job"]["id"]))
    assert watched_ahead.returncode == 0, watched_ahead.stderr
    return Cancelled(queued=queued, cancel=cancel)


@pytest.fixture(scope="module")
def failed(server: ServerProcess, model_dir: Path, cancelled: Cancelled) -> subprocess.CompletedProcess[str]:
    """v6, deployed from weights cut short, while v4 keeps serving."""
    weights = model_dir / "model.safetensors"
    broken = model_dir / "model.safetensors.partial"
    broken.write_bytes(weights.read_bytes()[:1000])
    # Replace the file instead of writing it in place, because v4's replica may still map the old one.
    broken.replace(weights)
    return tunedock(server, "deploy", MODEL_NAME, "--wait")


@pytest.fixture(scope="module")
def undeployed(server: ServerProcess, failed: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    return tunedock(server, "undeploy", MODEL_NAME)


@pytest.fixture(scope="module")
def deleted(server: ServerProcess, undeployed: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    return tunedock(server, "models", "delete", MODEL_NAME)


@pytest.fixture(scope="module")
def first_record(server: ServerProcess, first: subprocess.CompletedProcess[str]) -> Any:
    return version_record(server, 1)


@pytest.fixture(scope="module")
def third_record(server: ServerProcess, redeployed: subprocess.CompletedProcess[str]) -> Any:
    return version_record(server, 3)


@pytest.fixture(scope="module")
def third_view(server: ServerProcess, redeployed: subprocess.CompletedProcess[str]) -> str:
    """`history --version 3` as text."""
    return tunedock(server, "history", MODEL_NAME, "--version", "3").stdout


@pytest.fixture(scope="module")
def diff_view(server: ServerProcess, redeployed: subprocess.CompletedProcess[str]) -> str:
    """`history --diff 2 3` as text."""
    return tunedock(server, "history", MODEL_NAME, "--diff", "2", "3").stdout


@pytest.fixture(scope="module")
def diff_record(server: ServerProcess, redeployed: subprocess.CompletedProcess[str]) -> Any:
    return tunedock_json(server, "history", MODEL_NAME, "--diff", "2", "3")


# deploy --wait ----------------------------------------------------------------------------


def test_deploy_wait_exits_zero(first: subprocess.CompletedProcess[str]) -> None:
    assert first.returncode == 0, first.stderr


def test_wait_line_shows_elapsed_stage(first: subprocess.CompletedProcess[str]) -> None:
    assert re.search(r"^ +\d+\.\d s  starting_replica +Starting replica 1 of 1$", first.stdout, re.MULTILINE)


def test_deploy_wait_reports_live(first: subprocess.CompletedProcess[str]) -> None:
    assert f"{MODEL_NAME}_v1 is live." in first.stdout


@pytest.mark.parametrize(("section", "field", "expected"), [
    ("generation", "top_k", 5),
    ("scaling", "scale_up_delay", 10),
    ("scaling", "scale_down_delay", 60),
    ("scaling", "idle_undeploy_after", 3600),
    ("optimization", "quantization", "none"),
])
def test_deploy_options_stored(first_record: Any, section: str, field: str, expected: object) -> None:
    assert first_record["general"]["parameters"][section][field] == expected


def test_jobs_show_json_has_status(server: ServerProcess, first: subprocess.CompletedProcess[str]) -> None:
    job = tunedock_json(server, "jobs", "show", str(job_id_in(first.stdout)))
    assert job["status"] == "success"


# Ctrl-C while waiting, then jobs watch -------------------------------------------------------


def test_interrupted_wait_exits_130(interrupted: Interrupted) -> None:
    assert interrupted.returncode == 130, interrupted.stderr


def test_interrupted_wait_says_deploy_continues(interrupted: Interrupted) -> None:
    assert "continues on the server" in interrupted.stderr


def test_interrupted_wait_names_cancel_command(interrupted: Interrupted) -> None:
    assert f"tunedock jobs cancel {interrupted.job_id}" in interrupted.stderr


def test_jobs_watch_exits_zero(watched: subprocess.CompletedProcess[str]) -> None:
    assert watched.returncode == 0, watched.stderr


def test_jobs_watch_shows_each_event_once(watched: subprocess.CompletedProcess[str]) -> None:
    assert len(re.findall(r"^ +\d+\.\d s  queued ", watched.stdout, re.MULTILINE)) == 1


def test_jobs_watch_reports_success(watched: subprocess.CompletedProcess[str], interrupted: Interrupted) -> None:
    assert f"Job {interrupted.job_id} succeeded." in watched.stdout


def test_jobs_show_lists_events(server: ServerProcess, watched: subprocess.CompletedProcess[str],
                                interrupted: Interrupted) -> None:
    output = tunedock(server, "jobs", "show", str(interrupted.job_id)).stdout
    assert f"Deploy of {MODEL_NAME}_v2 requested by admin" in output


def test_jobs_id_is_short_for_show(server: ServerProcess, watched: subprocess.CompletedProcess[str],
                                   interrupted: Interrupted) -> None:
    job_id = str(interrupted.job_id)
    assert tunedock_json(server, "jobs", job_id) == tunedock_json(server, "jobs", "show", job_id)


def test_jobs_watch_on_terminal_exits_zero(server: ServerProcess, watched: subprocess.CompletedProcess[str],
                                           interrupted: Interrupted) -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "tunedock", "jobs", "watch", str(interrupted.job_id)],
                               stdin=terminal, stdout=terminal, stderr=terminal, env=server.environment())
    os.close(terminal)
    output = _read_terminal(controller)
    assert process.wait(timeout=CLI_TIMEOUT) == 0, output


def _read_terminal(controller: int) -> str:
    chunks = []
    try:
        while chunk := os.read(controller, 65536):
            chunks.append(chunk)
    except OSError:
        pass  # Linux raises EIO once the last process holding the terminal has exited.
    finally:
        os.close(controller)
    return b"".join(chunks).decode(errors="replace")


def test_jobs_watch_unknown_job_fails(server: ServerProcess) -> None:
    assert "Job 999999 not found" in tunedock(server, "jobs", "watch", "999999").stderr


# redeploy and the version record -------------------------------------------------------------


def test_redeploy_wait_exits_zero(redeployed: subprocess.CompletedProcess[str]) -> None:
    assert redeployed.returncode == 0, redeployed.stderr


def test_redeploy_names_origin(redeployed: subprocess.CompletedProcess[str]) -> None:
    assert f"Redeploying {MODEL_NAME}_v1 as {MODEL_NAME}_v3" in redeployed.stdout


def test_redeploy_records_origin(third_record: Any) -> None:
    assert third_record["general"]["redeploy_of"] == f"{MODEL_NAME}_v1"


def test_redeploy_stores_description(third_record: Any) -> None:
    assert third_record["general"]["description"] == "Back to v1"


def test_version_view_has_three_sections(third_view: str) -> None:
    assert [line for line in third_view.splitlines() if line in SECTIONS] == list(SECTIONS)


def test_version_view_shows_changes(third_view: str) -> None:
    assert re.search(rf"^  Changes vs {MODEL_NAME}_v2\n +generation\.max_tokens +8 -> 12$", third_view, re.MULTILINE)


def test_version_view_shows_redeploy_origin(third_view: str) -> None:
    assert re.search(rf"^  Redeploy of +{MODEL_NAME}_v1$", third_view, re.MULTILINE)


def test_version_view_shows_engine_version(third_view: str, third_record: Any) -> None:
    assert re.search(rf"^  Engine version +{re.escape(third_record['general']['engine_version'])}$", third_view,
                     re.MULTILINE)


def test_version_view_shows_undeployment(server: ServerProcess, watched: subprocess.CompletedProcess[str]) -> None:
    output = tunedock(server, "history", MODEL_NAME, "--version", "1").stdout
    assert re.search(rf"^  Reason +superseded by {MODEL_NAME}_v2$", output, re.MULTILINE)


def test_history_list_names_undeploy_kind(server: ServerProcess,
                                          watched: subprocess.CompletedProcess[str]) -> None:
    output = tunedock(server, "history", MODEL_NAME).stdout
    assert f"(un-deployed: superseded by {MODEL_NAME}_v2)" in output


def test_version_view_counts_replica_failures(third_view: str) -> None:
    assert re.search(r"^  Replica failures +0$", third_view, re.MULTILINE)


def test_version_unknown_fails(server: ServerProcess, registered: dict[str, Any]) -> None:
    assert "has no version 99" in tunedock(server, "history", MODEL_NAME, "--version", "99").stderr


def test_version_and_diff_rejected_together(server: ServerProcess, registered: dict[str, Any]) -> None:
    assert tunedock(server, "history", MODEL_NAME, "--version", "1", "--diff", "1", "2").returncode == 2


# history --diff --------------------------------------------------------------------------------


def test_diff_header_names_versions(diff_view: str) -> None:
    assert diff_view.splitlines()[0].split() == ["FIELD", "v2", "v3"]


def test_diff_lists_changed_field(diff_view: str) -> None:
    assert re.search(r"^generation\.max_tokens +8 +12$", diff_view, re.MULTILINE)


def test_diff_rows_only_changed_fields(diff_view: str, diff_record: Any) -> None:
    rows = diff_view.split("\n\n")[0].splitlines()[1:]
    assert [row.split()[0] for row in rows] == [change["field"] for change in diff_record["changes"]]


def test_diff_counts_unchanged(diff_view: str, diff_record: Any) -> None:
    assert f"{len(diff_record['changes'])} changed, {len(diff_record['unchanged'])} unchanged." in diff_view


def test_diff_json_resolves_versions(diff_record: Any) -> None:
    assert (diff_record["a"]["version"], diff_record["b"]["version"]) == (2, 3)


def test_diff_same_parameters_says_so(server: ServerProcess, redeployed: subprocess.CompletedProcess[str]) -> None:
    output = tunedock(server, "history", MODEL_NAME, "--diff", "1", "3").stdout
    assert "v1 and v3 differ in no field." in output


# changed model files, cancel -------------------------------------------------------------------


def test_changed_files_redeploy_exits_one(files_changed: subprocess.CompletedProcess[str]) -> None:
    assert files_changed.returncode == 1


def test_changed_files_message_names_flag(files_changed: subprocess.CompletedProcess[str]) -> None:
    assert "--allow-changed-files" in files_changed.stderr


def test_allow_changed_files_creates_version(cancelled: Cancelled) -> None:
    assert cancelled.queued["deployment"]["version"] == 5


def test_jobs_cancel_exits_zero(cancelled: Cancelled) -> None:
    assert cancelled.cancel.returncode == 0, cancelled.cancel.stderr


def test_jobs_cancel_reports_reason(cancelled: Cancelled) -> None:
    assert "failed: cancelled by admin" in cancelled.cancel.stdout


def test_jobs_cancel_finished_job_fails(server: ServerProcess, first: subprocess.CompletedProcess[str]) -> None:
    result = tunedock(server, "jobs", "cancel", str(job_id_in(first.stdout)))
    assert "has already ended" in result.stderr


# a failed deploy ------------------------------------------------------------------------------


def test_failed_deploy_exits_one(failed: subprocess.CompletedProcess[str]) -> None:
    assert failed.returncode == 1


def test_failed_deploy_prints_job_error(failed: subprocess.CompletedProcess[str]) -> None:
    assert "model load failed" in failed.stderr


def test_jobs_shortcut_shows_failed_job(server: ServerProcess, failed: subprocess.CompletedProcess[str]) -> None:
    job = tunedock_json(server, "jobs", str(job_id_in(failed.stdout)))
    assert job["status"] == "failed"


# un-deploy, delete, and the history that stays ---------------------------------------------------


def test_undeploy_reports_end(undeployed: subprocess.CompletedProcess[str]) -> None:
    assert f"Un-deployed {MODEL_NAME}." in undeployed.stdout


def test_models_delete_exits_zero(deleted: subprocess.CompletedProcess[str]) -> None:
    assert deleted.returncode == 0, deleted.stderr


def test_deleted_model_not_listed(server: ServerProcess, deleted: subprocess.CompletedProcess[str]) -> None:
    assert SLUG not in [model["slug"] for model in tunedock_json(server, "models", "list")]


def test_deleted_model_version_readable(server: ServerProcess, deleted: subprocess.CompletedProcess[str]) -> None:
    record = tunedock_json(server, "history", SLUG, "--version", "1")
    assert record["general"]["name"] == f"{MODEL_NAME}_v1"


def test_history_limit_shows_one_page(server: ServerProcess, deleted: subprocess.CompletedProcess[str]) -> None:
    page = tunedock_json(server, "history", SLUG, "--limit", "2")
    assert [item["version"] for item in page["items"]] == [6, 5]


def test_history_limit_table_hints_all(server: ServerProcess, deleted: subprocess.CompletedProcess[str]) -> None:
    assert "--all lists them" in tunedock(server, "history", SLUG, "--limit", "2").stdout


def test_history_all_follows_pages(server: ServerProcess, deleted: subprocess.CompletedProcess[str]) -> None:
    page = tunedock_json(server, "history", SLUG, "--limit", "2", "--all")
    assert [item["version"] for item in page["items"]] == [6, 5, 4, 3, 2, 1]


def test_history_status_filter(server: ServerProcess, deleted: subprocess.CompletedProcess[str]) -> None:
    page = tunedock_json(server, "history", SLUG, "--status", "failed")
    assert [item["version"] for item in page["items"]] == [6, 5]


def test_history_status_rejects_unknown(server: ServerProcess, deleted: subprocess.CompletedProcess[str]) -> None:
    assert tunedock(server, "history", SLUG, "--status", "live").returncode == 2


# a dropped event stream ---------------------------------------------------------------------------

class DroppingProxy:
    """A TCP proxy to the server that cuts the first event stream right after its first event."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.dropped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            streaming = threading.Event()
            threading.Thread(target=self._forward_requests, args=(client, upstream, streaming), daemon=True).start()
            threading.Thread(target=self._forward_responses, args=(upstream, client, streaming), daemon=True).start()

    def _forward_requests(self, client: socket.socket, upstream: socket.socket, streaming: threading.Event) -> None:
        while data := _receive(client):
            self.requests.append(data)
            # HTTP/1.1 clients send the next request only after the previous response, so every
            # response byte after this request belongs to the event stream.
            if b"/events " in data:
                streaming.set()
            upstream.sendall(data)
        _close(upstream)

    def _forward_responses(self, upstream: socket.socket, client: socket.socket, streaming: threading.Event) -> None:
        pending = b""
        while data := _receive(upstream):
            if self.dropped.is_set() or not streaming.is_set():
                client.sendall(data)
                continue
            pending += data
            start = pending.find(b"event: progress")
            end = pending.find(b"\n\n", start) if start >= 0 else -1
            if end >= 0:
                client.sendall(pending[:end + 2])
                self.dropped.set()
                break
        _close(client)
        _close(upstream)


def _receive(connection: socket.socket) -> bytes:
    try:
        return connection.recv(65536)
    except OSError:
        return b""


def _close(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()


@pytest.fixture(scope="module")
def proxy(server: ServerProcess) -> Iterator[DroppingProxy]:
    running = DroppingProxy(int(server.url.rsplit(":", 1)[1]))
    yield running
    running.close()


@pytest.fixture(scope="module")
def reconnected(server: ServerProcess, proxy: DroppingProxy,
                first: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """`jobs watch` of v1's job through the proxy, which drops the stream once."""
    return tunedock(server, "jobs", "watch", str(job_id_in(first.stdout)), "--url", f"http://127.0.0.1:{proxy.port}")


def test_dropped_stream_watch_exits_zero(reconnected: subprocess.CompletedProcess[str]) -> None:
    assert reconnected.returncode == 0, reconnected.stderr


def test_dropped_stream_was_dropped(reconnected: subprocess.CompletedProcess[str], proxy: DroppingProxy) -> None:
    assert proxy.dropped.is_set()


def test_dropped_stream_reconnect_sends_last_event_id(reconnected: subprocess.CompletedProcess[str],
                                                     proxy: DroppingProxy) -> None:
    assert b"last-event-id: 1\r\n" in b"".join(proxy.requests).lower()


def test_dropped_stream_shows_each_event_once(reconnected: subprocess.CompletedProcess[str]) -> None:
    stages = re.findall(r"^ +\d+\.\d s  (\w+) ", reconnected.stdout, re.MULTILINE)
    assert stages == ["queued", "validating", "preparing_weights", "weights_ready", "starting_replica",
                      "health_check_passed", "switching_traffic", "done"]


def test_dropped_stream_tells_user(reconnected: subprocess.CompletedProcess[str]) -> None:
    assert "Reconnecting in" in reconnected.stderr


# the event-stream parser -----------------------------------------------------------------------


def test_parse_events_joins_data_lines() -> None:
    events = list(parse_events(["event: progress", "data: a", "data: b", "", ""]))
    assert events[0].data == "a\nb"


def test_parse_events_keeps_id() -> None:
    events = list(parse_events(["id: 7", "event: progress", "data: {}", ""]))
    assert events[0].id == "7"


def test_parse_events_skips_comments() -> None:
    events = list(parse_events([": keep-alive", "", "event: end", "data: {}", ""]))
    assert [event.event for event in events] == ["end"]


def test_parse_events_defaults_to_message() -> None:
    assert next(parse_events(["data:x", ""])).event == "message"


def test_parse_events_drops_unfinished_event() -> None:
    assert list(parse_events(["event: end", "data: {}"])) == []


def test_parse_events_json_data() -> None:
    event = next(parse_events(['data: {"sequence": 3}', ""]))
    assert json.loads(event.data) == {"sequence": 3}
