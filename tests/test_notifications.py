"""Deploy outcomes reach people by email, exactly once, through a real SMTP server.

Each scenario runs a Tunedock server process pointed at an aiosmtpd server on loopback:
STARTTLS with a login, a relay that is down at first, a wrong password, and a restart
with mail still pending.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, deploy_and_wait, free_port, start_server, stop_server
from tests.notifier_servers import (
    SMTP_PASSWORD,
    SMTP_USERNAME,
    Certificates,
    PasswordAuthenticator,
    RecordingHandler,
    WebhookReceiver,
    certificates,  # noqa: F401  (a fixture, found by name)
    run_smtp_server,
)
from tunedock.demo.registry import demo_models_root
from tunedock.notifier.webhooks import verify_signature

pytestmark = pytest.mark.e2e

WAIT_SECONDS = 60.0
FAST_OUTBOX = {"TUNEDOCK_NOTIFY_POLL_INTERVAL": "0.2", "TUNEDOCK_NOTIFY_RETRY_BASE_SECONDS": "0.5",
               "TUNEDOCK_ADMIN_EMAIL": "admin@example.com", "TUNEDOCK_NOTIFY_RECIPIENTS": "ops@example.com"}


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def register_t5(client: httpx.Client, home: Path, name: str, folder: str) -> dict[str, Any]:
    target = home / "models" / folder
    shutil.copytree(demo_models_root() / "date-normalizer-t5", target)
    response = client.post("/api/models", json={"name": name, "path": str(target)})
    assert response.status_code == 201, response.text
    model: dict[str, Any] = response.json()
    return model


def notifications(client: httpx.Client) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get("/api/notifications").json()["items"]
    return items


def smtp_environment(port: int, security: str = "none", password: str | None = None,
                     ca_file: Path | None = None) -> dict[str, str]:
    environment = {**FAST_OUTBOX, "TUNEDOCK_SMTP_HOST": "127.0.0.1", "TUNEDOCK_SMTP_PORT": str(port),
                   "TUNEDOCK_SMTP_SECURITY": security, "TUNEDOCK_SMTP_FROM": "Tunedock <tunedock@example.com>"}
    if password is not None:
        environment |= {"TUNEDOCK_SMTP_USERNAME": SMTP_USERNAME, "TUNEDOCK_SMTP_PASSWORD": password}
    if ca_file is not None:
        environment["TUNEDOCK_SMTP_CA_FILE"] = str(ca_file)
    return environment


# STARTTLS with a login: success and failure mails, watchers and webhooks ------------------------


@pytest.fixture(scope="module")
def relayed(tmp_path_factory: pytest.TempPathFactory, certificates: Certificates  # noqa: F811
            ) -> Iterator[dict[str, Any]]:
    handler = RecordingHandler()
    receiver = WebhookReceiver()
    receiver.start()
    with ExitStack() as stack:
        stack.callback(receiver.stop)
        port = stack.enter_context(run_smtp_server(
            handler, tls_context=certificates.server_context, require_starttls=True,
            authenticator=PasswordAuthenticator(), auth_required=True))
        home = tmp_path_factory.mktemp("mail-home")
        server = start_server(home, free_port(), extra_env=smtp_environment(
            port, "starttls", SMTP_PASSWORD, certificates.ca_file))
        stack.callback(stop_server, server)
        with server.client() as client:
            model = register_t5(client, home, "Mail T5 é", "mail-t5")
            webhook = client.post(f"/api/models/{model['slug']}/webhooks", json={"url": receiver.url}).json()
            watcher = client.post("/api/users", json={"username": "watcher", "email": "watcher@example.com",
                                                      "password": "watcher-password-1", "role": "viewer"})
            assert watcher.status_code == 201, watcher.text
            token = client.post("/api/auth/login", json={"username": "watcher",
                                                         "password": "watcher-password-1"}).json()["token"]
            client.put(f"/api/models/{model['slug']}/watch", headers={"Authorization": f"Bearer {token}"})
            succeeded = deploy_and_wait(client, model["slug"])
            (Path(model["path"]) / "model.safetensors").write_bytes(b"not weights")
            failed = deploy_and_wait(client, model["slug"])
            wait_until(lambda: len(handler.received) >= 2, "two emails")
            wait_until(lambda: len(receiver.requests) >= 2, "two webhook deliveries")
            yield {"handler": handler, "receiver": receiver, "webhook": webhook, "succeeded": succeeded,
                   "failed": failed, "log": notifications(client), "server": server}


def mail_with_subject(relayed: dict[str, Any], fragment: str) -> Any:
    return next(mail for mail in relayed["handler"].received if fragment in mail.message["Subject"])


def test_success_mail_subject(relayed: dict[str, Any]) -> None:
    assert mail_with_subject(relayed, "is ready").message["Subject"] == "[Tunedock] Mail T5 é_v1 is ready"


def test_success_mail_reaches_deployer_watcher_and_list(relayed: dict[str, Any]) -> None:
    recipients = sorted(mail_with_subject(relayed, "is ready").recipients)
    assert recipients == ["admin@example.com", "ops@example.com", "watcher@example.com"]


def test_success_mail_carries_curl_call(relayed: dict[str, Any]) -> None:
    text = mail_with_subject(relayed, "is ready").message.get_body(("plain",)).get_content()
    assert "curl " in text


def test_success_mail_went_over_tls(relayed: dict[str, Any]) -> None:
    assert mail_with_subject(relayed, "is ready").over_tls


def test_failure_mail_gives_reason(relayed: dict[str, Any]) -> None:
    text = mail_with_subject(relayed, "failed").message.get_body(("plain",)).get_content()
    assert "model load failed" in text


def test_each_mail_sent_once(relayed: dict[str, Any]) -> None:
    message_ids = [mail.message["Message-ID"] for mail in relayed["handler"].received]
    assert len(message_ids) == len(set(message_ids)) == 2


def test_notification_log_says_sent(relayed: dict[str, Any]) -> None:
    assert {entry["status"] for entry in relayed["log"] if entry["channel"] == "email"} == {"sent"}


def test_webhook_delivery_is_signed(relayed: dict[str, Any]) -> None:
    request = relayed["receiver"].requests[0]
    assert verify_signature(relayed["webhook"]["secret"], request.body, request.headers["X-Tunedock-Timestamp"],
                            request.headers["X-Tunedock-Signature"])


# The relay is down at first, then comes up ------------------------------------------------------


@pytest.fixture(scope="module")
def relay_down_then_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    port = free_port()
    home = tmp_path_factory.mktemp("retry-home")
    server = start_server(home, port=free_port(), extra_env=smtp_environment(port))
    try:
        with server.client() as client:
            model = register_t5(client, home, "Retry T5", "retry-t5")
            deploy_and_wait(client, model["slug"])
            pending = wait_until(lambda: [entry for entry in notifications(client) if entry["attempts"] >= 1
                                          and entry["status"] == "pending"], "a failed first attempt")
            handler = RecordingHandler()
            with run_smtp_server(handler, port):
                sent = wait_until(lambda: [entry for entry in notifications(client) if entry["status"] == "sent"],
                                  "the retried delivery")
                time.sleep(1.5)  # a duplicate would arrive within a few more polls
            yield {"pending": pending[0], "sent": sent[0], "received": list(handler.received)}
    finally:
        stop_server(server)


def test_first_attempt_records_the_error(relay_down_then_up: dict[str, Any]) -> None:
    assert "refused" in relay_down_then_up["pending"]["last_error"].lower()


def test_mail_arrives_after_relay_comes_up(relay_down_then_up: dict[str, Any]) -> None:
    assert len(relay_down_then_up["received"]) == 1


def test_retried_mail_counts_attempts(relay_down_then_up: dict[str, Any]) -> None:
    assert relay_down_then_up["sent"]["attempts"] >= 2


# A wrong password fails for good, and is not retried ----------------------------------------------


@pytest.fixture(scope="module")
def wrong_password(tmp_path_factory: pytest.TempPathFactory, certificates: Certificates  # noqa: F811
                   ) -> Iterator[dict[str, Any]]:
    handler = RecordingHandler()
    with run_smtp_server(handler, tls_context=certificates.server_context, require_starttls=True,
                         authenticator=PasswordAuthenticator(), auth_required=True) as port:
        home = tmp_path_factory.mktemp("password-home")
        server = start_server(home, free_port(), extra_env=smtp_environment(
            port, "starttls", "not the password", certificates.ca_file))
        try:
            with server.client() as client:
                model = register_t5(client, home, "Password T5", "password-t5")
                deploy_and_wait(client, model["slug"])
                failed = wait_until(lambda: [entry for entry in notifications(client)
                                             if entry["status"] == "failed"], "the failed delivery")
                time.sleep(1.5)
                entry = notifications(client)[0]
            yield {"failed": failed[0], "later": entry, "received": list(handler.received), "log": server.log()}
        finally:
            stop_server(server)


def test_wrong_password_status_quotes_server(wrong_password: dict[str, Any]) -> None:
    assert "535" in wrong_password["failed"]["last_error"]


def test_wrong_password_is_not_retried(wrong_password: dict[str, Any]) -> None:
    assert wrong_password["later"]["attempts"] == 1


def test_wrong_password_sends_nothing(wrong_password: dict[str, Any]) -> None:
    assert wrong_password["received"] == []


def test_password_never_logged(wrong_password: dict[str, Any]) -> None:
    assert "not the password" not in wrong_password["log"]


# A restart with mail still pending sends it once ---------------------------------------------------


@pytest.fixture(scope="module")
def restarted_with_pending(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    port = free_port()
    home = tmp_path_factory.mktemp("pending-home")
    server_port = free_port()
    environment = smtp_environment(port) | {"TUNEDOCK_NOTIFY_RETRY_BASE_SECONDS": "1"}
    server = start_server(home, server_port, extra_env=environment)
    with server.client() as client:
        model = register_t5(client, home, "Pending T5", "pending-t5")
        deploy_and_wait(client, model["slug"])
        wait_until(lambda: [entry for entry in notifications(client) if entry["attempts"] >= 1],
                   "a failed first attempt")
    stop_server(server)
    handler = RecordingHandler()
    with run_smtp_server(handler, port):
        restarted = start_server(home, server_port, extra_env=environment)
        try:
            with restarted.client() as client:
                wait_until(lambda: handler.received, "the pending mail after the restart")
                time.sleep(2.0)
                log = notifications(client)
        finally:
            stop_server(restarted)
    yield {"received": list(handler.received), "log": log}


def test_pending_mail_sent_once_after_restart(restarted_with_pending: dict[str, Any]) -> None:
    assert len(restarted_with_pending["received"]) == 1


def test_pending_mail_marked_sent_after_restart(restarted_with_pending: dict[str, Any]) -> None:
    assert [entry["status"] for entry in restarted_with_pending["log"]] == ["sent"]


# Without SMTP, mail lands in the outbox folder ------------------------------------------------------


def test_without_smtp_mail_is_written_to_outbox(server: ServerProcess) -> None:
    with server.client() as client:
        model = register_t5(client, server.home, "Outbox T5", "outbox-t5")
        deploy_and_wait(client, model["slug"])
        found = wait_until(lambda: [path for path in (server.home / "outbox").glob("*.eml")
                                    if "Outbox T5_v1 is ready" in path.read_text(errors="replace")],
                           "the .eml file of the ready email")
    assert len(found) == 1


# The CLI ------------------------------------------------------------------------------------------


def run_cli(server: ServerProcess, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunedock", *arguments], env=server.environment(),
                          capture_output=True, text=True, timeout=60)


def test_cli_lists_notifications(relayed: dict[str, Any]) -> None:
    assert "is ready" in run_cli(relayed["server"], "notifications").stdout


def test_cli_filters_notifications_by_status(relayed: dict[str, Any]) -> None:
    listed = json.loads(run_cli(relayed["server"], "notifications", "--status", "failed", "--json").stdout)
    assert listed == []


def test_cli_watch_names_model(relayed: dict[str, Any]) -> None:
    assert run_cli(relayed["server"], "watch", "mail-t5-e").stdout.strip() == "Watching mail-t5-e."


def test_cli_notifications_off(relayed: dict[str, Any]) -> None:
    assert run_cli(relayed["server"], "notifications", "off").returncode == 0
