"""Notification delivery against real servers on loopback: SMTP, .eml files and webhooks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from datetime import datetime, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from tests.notifier_servers import (  # noqa: F401  (pytest fixtures are found by name)
    HOST,
    SMTP_PASSWORD,
    SMTP_USERNAME,
    SmtpServer,
    WebhookReceiver,
    certificates,
    free_port,
    implicit_tls_smtp_server,
    plain_smtp_server,
    silent_port,
    starttls_smtp_server,
    webhook_receiver,
)
from tunedock.errors import InvalidInput
from tunedock.notifier import (
    EmlFileTransport,
    Notification,
    PermanentDeliveryError,
    RecipientsRejected,
    SmtpTransport,
    TransientDeliveryError,
    WebhookTarget,
    build_email,
    collect_recipients,
    deliver_webhook,
    deployment_failed,
    deployment_succeeded,
    deployment_undeployed,
    idle_warning,
    mail_transport_from_settings,
    make_message_id,
    retry_delay,
    should_retry,
    verify_signature,
)
from tunedock.notifier.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER
from tunedock.settings import Settings

UTF8_MODEL = "Modèle 日本語"
CONSOLE = "https://console.example.com"
SENDER = "Tunedock <tunedock@localhost>"
RECIPIENTS = ["alice@example.com", "bob@example.com"]
WEBHOOK_SECRET = "whsec-test-secret"


def succeeded(model_name: str = "Flan T5", recipients: list[str] | None = None,
              notification_id: int = 42) -> Notification:
    return deployment_succeeded(
        deployment_id=12, deployment_name=f"{model_name}_v3", model_name=model_name,
        duration_seconds=134.4, endpoint_url="http://127.0.0.1:8040/v1",
        curl_snippet="curl http://127.0.0.1:8040/v1/completions \\\n  -d '{\"model\": \"flan-t5\"}'",
        console_url=CONSOLE, recipients=RECIPIENTS if recipients is None else recipients,
        message_id=make_message_id(notification_id, "tunedock.local"),
    )


def email_of(notification: Notification) -> EmailMessage:
    return build_email(notification, SENDER, datetime(2025, 3, 1, 14, 5, 9, tzinfo=timezone.utc))


def deliver(transport: Any, message: EmailMessage) -> None:
    asyncio.run(transport.deliver(message))


def smtp_transport(server: SmtpServer, **options: Any) -> SmtpTransport:
    return SmtpTransport(HOST, server.port, **{"security": "none", "timeout": 10.0, **options})


def tls_options(server: SmtpServer, security: str, password: str = SMTP_PASSWORD) -> dict[str, Any]:
    return {"security": security, "username": SMTP_USERNAME, "password": SecretStr(password),
            "ca_file": server.ca_file}


def body_text(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None
    return str(part.get_content())


def make_settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, home=tmp_path, **values)  # type: ignore[call-arg]


# Content


def test_subject_of_each_kind() -> None:
    common: dict[str, Any] = {"deployment_id": 12, "deployment_name": "Flan T5_v3", "model_name": "Flan T5",
                              "console_url": CONSOLE, "recipients": RECIPIENTS, "message_id": "<n-1@x>"}
    started = datetime(2025, 3, 1, 10, 0, tzinfo=timezone.utc)
    ended = datetime(2025, 3, 1, 10, 0, 7, tzinfo=timezone.utc)

    assert succeeded().subject == "[Tunedock] Flan T5_v3 is ready"
    assert deployment_failed(**common, job_id=7, reason="Out of memory").subject == "[Tunedock] Flan T5_v3 failed"
    undeployed = deployment_undeployed(**common, reason="idle", reason_text="No requests for 30 minutes.",
                                       started_at=started, ended_at=ended)
    assert undeployed.subject == "[Tunedock] Flan T5_v3 was un-deployed (idle)"
    assert idle_warning(**common, minutes_left=10).subject == "[Tunedock] Flan T5_v3 will be un-deployed in 10 minutes"
    assert idle_warning(**common, minutes_left=1).subject == "[Tunedock] Flan T5_v3 will be un-deployed in 1 minute"


def test_success_content_shows_facts() -> None:
    notification = succeeded()

    assert "Flan T5_v3" in notification.text
    assert "2 min 14 s" in notification.text
    assert "http://127.0.0.1:8040/v1" in notification.text
    assert "curl http://127.0.0.1:8040/v1/completions" in notification.text
    assert f"{CONSOLE}/deployments/12" in notification.text
    assert f'href="{CONSOLE}/deployments/12"' in notification.html
    assert notification.facts["endpoint_url"] == "http://127.0.0.1:8040/v1"


def test_failure_content_links_job_events() -> None:
    notification = deployment_failed(deployment_id=12, deployment_name="Flan T5_v3", model_name="Flan T5",
                                     job_id=7, reason="CUDA out of memory: lower max batch size",
                                     console_url=CONSOLE + "/", recipients=RECIPIENTS, message_id="<n-1@x>")

    assert "CUDA out of memory: lower max batch size" in notification.text
    assert f"{CONSOLE}/jobs/7" in notification.text
    assert notification.facts["job_url"] == f"{CONSOLE}/jobs/7"


def test_undeployed_reason_not_doubled() -> None:
    notification = deployment_undeployed(
        deployment_id=12, deployment_name="Flan T5_v3", model_name="Flan T5", reason="crashed",
        reason_text="crashed: replicas died 3 times within 600 s",
        started_at=datetime(2025, 3, 1, 10, 0, 0, tzinfo=timezone.utc),
        ended_at=datetime(2025, 3, 1, 10, 0, 7, tzinfo=timezone.utc),
        console_url=CONSOLE, recipients=RECIPIENTS, message_id="<n-1@x>",
    )

    assert "crashed: crashed:" not in notification.text


def test_undeployed_content_shows_times() -> None:
    notification = deployment_undeployed(
        deployment_id=12, deployment_name="Flan T5_v3", model_name="Flan T5", reason="crashed",
        reason_text="The model server exited with code 137.",
        started_at=datetime(2025, 3, 1, 10, 0, 0, tzinfo=timezone.utc),
        ended_at=datetime(2025, 3, 1, 10, 0, 7),
        console_url=CONSOLE, recipients=RECIPIENTS, message_id="<n-1@x>",
    )

    assert "crashed: The model server exited with code 137." in notification.text
    assert "2025-03-01 10:00:00 UTC" in notification.text
    assert "2025-03-01 10:00:07 UTC" in notification.text
    assert notification.facts["ended_at"] == "2025-03-01T10:00:07+00:00"


def test_undeployed_rejects_unknown_reason() -> None:
    with pytest.raises(InvalidInput):
        deployment_undeployed(deployment_id=12, deployment_name="Flan T5_v3", model_name="Flan T5",
                              reason="manual", reason_text="A person un-deployed it.",
                              started_at=datetime.now(timezone.utc), ended_at=datetime.now(timezone.utc),
                              console_url=CONSOLE, recipients=RECIPIENTS, message_id="<n-1@x>")


def test_idle_warning_links_keep_alive() -> None:
    notification = idle_warning(deployment_id=12, deployment_name="Flan T5_v3", model_name="Flan T5",
                                minutes_left=10, console_url=CONSOLE, recipients=RECIPIENTS,
                                message_id="<n-1@x>")

    assert f'href="{CONSOLE}/deployments/12/keep-alive"' in notification.html
    assert notification.facts["minutes_left"] == 10


def test_html_escapes_user_values() -> None:
    notification = succeeded(model_name='<script>alert("x")</script>')

    assert "<script>" not in notification.html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in notification.html


def test_subject_drops_line_breaks() -> None:
    notification = succeeded(model_name="Flan\r\nBcc: victim@example.com")

    assert notification.subject == "[Tunedock] Flan Bcc: victim@example.com_v3 is ready"


def test_recipients_merge_without_duplicates() -> None:
    merged = collect_recipients(["alice@example.com", None, ""], ["ALICE@example.com", "bob@example.com"])

    assert merged == ("alice@example.com", "bob@example.com")


# Email message


def test_email_headers() -> None:
    notification = succeeded(UTF8_MODEL)
    message = email_of(notification)

    assert message["From"] == SENDER
    assert message["To"] == "alice@example.com, bob@example.com"
    assert message["Subject"] == f"[Tunedock] {UTF8_MODEL}_v3 is ready"
    assert message["Message-ID"] == notification.message_id
    assert parsedate_to_datetime(message["Date"]) == datetime(2025, 3, 1, 14, 5, 9, tzinfo=timezone.utc)
    assert message.get_content_type() == "multipart/alternative"


def test_email_without_recipients_is_permanent_error() -> None:
    with pytest.raises(PermanentDeliveryError):
        email_of(succeeded(recipients=[]))


def test_message_id_shape() -> None:
    message_id = make_message_id(42, "tunedock.local", token="00ff")

    assert message_id == "<notification-42.00ff@tunedock.local>"


def test_message_id_rejects_bad_domain() -> None:
    with pytest.raises(InvalidInput):
        make_message_id(42, "bad domain")


# SMTP


def test_plain_smtp_delivers_email(plain_smtp_server: SmtpServer) -> None:
    notification = succeeded(UTF8_MODEL)

    deliver(smtp_transport(plain_smtp_server), email_of(notification))

    [received] = plain_smtp_server.handler.received
    assert received.recipients == RECIPIENTS
    assert received.mail_from == "tunedock@localhost"
    assert received.message["Subject"] == f"[Tunedock] {UTF8_MODEL}_v3 is ready"
    assert received.message["Message-ID"] == notification.message_id
    assert parsedate_to_datetime(received.message["Date"]) == datetime(2025, 3, 1, 14, 5, 9, tzinfo=timezone.utc)
    assert f"{UTF8_MODEL}_v3 is deployed" in body_text(received.message, "plain")
    assert f"{UTF8_MODEL}_v3 is deployed" in body_text(received.message, "html")
    assert received.over_tls is False


def test_starttls_login_delivers_email(starttls_smtp_server: SmtpServer) -> None:
    transport = smtp_transport(starttls_smtp_server, **tls_options(starttls_smtp_server, "starttls"))

    deliver(transport, email_of(succeeded(UTF8_MODEL)))

    [received] = starttls_smtp_server.handler.received
    assert received.over_tls is True
    assert received.recipients == RECIPIENTS
    assert starttls_smtp_server.authenticator is not None
    assert len(starttls_smtp_server.authenticator.mechanisms) == 1


def test_starttls_wrong_password_is_permanent(starttls_smtp_server: SmtpServer) -> None:
    transport = smtp_transport(starttls_smtp_server, **tls_options(starttls_smtp_server, "starttls", "wrong"))

    with pytest.raises(PermanentDeliveryError) as caught:
        deliver(transport, email_of(succeeded()))

    assert caught.value.reply_code == 535
    assert caught.value.reply_text is not None
    assert "Authentication credentials invalid" in caught.value.reply_text
    assert "535" in caught.value.message
    assert starttls_smtp_server.handler.received == []


def test_password_file_is_read_and_stripped(starttls_smtp_server: SmtpServer, tmp_path: Path) -> None:
    password_file = tmp_path / "smtp-password"
    password_file.write_text(f"  {SMTP_PASSWORD}\n", encoding="utf-8")
    options = {**tls_options(starttls_smtp_server, "starttls"), "password": None, "password_file": password_file}

    deliver(smtp_transport(starttls_smtp_server, **options), email_of(succeeded()))

    assert len(starttls_smtp_server.handler.received) == 1


def test_missing_password_file_is_permanent(starttls_smtp_server: SmtpServer, tmp_path: Path) -> None:
    options = {**tls_options(starttls_smtp_server, "starttls"), "password": None,
               "password_file": tmp_path / "missing"}

    with pytest.raises(PermanentDeliveryError) as caught:
        deliver(smtp_transport(starttls_smtp_server, **options), email_of(succeeded()))

    assert "password file" in caught.value.message


def test_untrusted_certificate_is_permanent(starttls_smtp_server: SmtpServer) -> None:
    options = {**tls_options(starttls_smtp_server, "starttls"), "ca_file": None}

    with pytest.raises(PermanentDeliveryError) as caught:
        deliver(smtp_transport(starttls_smtp_server, **options), email_of(succeeded()))

    assert "not trusted" in caught.value.message


def test_password_never_logged(starttls_smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    transport = smtp_transport(starttls_smtp_server, **tls_options(starttls_smtp_server, "starttls"))

    deliver(transport, email_of(succeeded()))
    with pytest.raises(PermanentDeliveryError) as caught:
        deliver(smtp_transport(starttls_smtp_server, **tls_options(starttls_smtp_server, "starttls", "wr0ng-pw")),
                email_of(succeeded()))

    assert SMTP_PASSWORD not in caplog.text
    assert "wr0ng-pw" not in caplog.text
    assert "wr0ng-pw" not in caught.value.message


def test_implicit_tls_delivers_email(implicit_tls_smtp_server: SmtpServer) -> None:
    transport = smtp_transport(implicit_tls_smtp_server, **tls_options(implicit_tls_smtp_server, "tls"))

    deliver(transport, email_of(succeeded(UTF8_MODEL)))

    [received] = implicit_tls_smtp_server.handler.received
    assert received.over_tls is True
    assert implicit_tls_smtp_server.authenticator is not None
    assert implicit_tls_smtp_server.authenticator.mechanisms != []
    assert received.message["Subject"] == f"[Tunedock] {UTF8_MODEL}_v3 is ready"


def test_tls_against_plain_server_is_permanent(plain_smtp_server: SmtpServer, certificates: Any) -> None:
    transport = smtp_transport(plain_smtp_server, security="tls", ca_file=certificates.ca_file)

    with pytest.raises(PermanentDeliveryError) as caught:
        deliver(transport, email_of(succeeded()))

    assert "TUNEDOCK_SMTP_SECURITY" in caught.value.message


def test_starttls_not_offered_is_permanent(plain_smtp_server: SmtpServer, certificates: Any) -> None:
    transport = smtp_transport(plain_smtp_server, security="starttls", ca_file=certificates.ca_file)

    with pytest.raises(PermanentDeliveryError) as caught:
        deliver(transport, email_of(succeeded()))

    assert "does not offer STARTTLS" in caught.value.message


def test_connection_refused_is_transient() -> None:
    transport = SmtpTransport(HOST, free_port(), security="none", timeout=10.0)

    with pytest.raises(TransientDeliveryError) as caught:
        deliver(transport, email_of(succeeded()))

    assert "refused the connection" in caught.value.message


def test_silent_server_times_out_transient(silent_port: int) -> None:
    transport = SmtpTransport(HOST, silent_port, security="none", timeout=0.5)

    with pytest.raises(TransientDeliveryError) as caught:
        deliver(transport, email_of(succeeded()))

    assert "did not respond" in caught.value.message


def test_rejected_recipient_is_permanent(plain_smtp_server: SmtpServer) -> None:
    notification = succeeded(recipients=["nobody@example.com"])

    with pytest.raises(PermanentDeliveryError) as caught:
        deliver(smtp_transport(plain_smtp_server), email_of(notification))

    assert caught.value.reply_code == 550
    assert caught.value.reply_text == "5.1.1 No such user here"
    assert "nobody@example.com" in caught.value.message


def test_busy_recipient_is_transient(plain_smtp_server: SmtpServer) -> None:
    notification = succeeded(recipients=["later@example.com"])

    with pytest.raises(TransientDeliveryError) as caught:
        deliver(smtp_transport(plain_smtp_server), email_of(notification))

    assert caught.value.reply_code == 451


def test_partly_rejected_recipients(plain_smtp_server: SmtpServer) -> None:
    notification = succeeded(recipients=["alice@example.com", "nobody@example.com"])

    with pytest.raises(RecipientsRejected) as caught:
        deliver(smtp_transport(plain_smtp_server), email_of(notification))

    assert caught.value.accepted == ["alice@example.com"]
    assert caught.value.rejected == {"nobody@example.com": "550 5.1.1 No such user here"}
    assert plain_smtp_server.handler.received[0].recipients == ["alice@example.com"]


# .eml files


def test_eml_transport_writes_parseable_file(tmp_path: Path) -> None:
    notification = succeeded(UTF8_MODEL)
    transport = EmlFileTransport(tmp_path / "outbox")

    deliver(transport, email_of(notification))

    [path] = (tmp_path / "outbox").iterdir()
    parsed = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert isinstance(parsed, EmailMessage)
    assert path.name == notification.message_id.strip("<>") + ".eml"
    assert parsed["Message-ID"] == notification.message_id
    assert parsed["Subject"] == f"[Tunedock] {UTF8_MODEL}_v3 is ready"
    assert f"{UTF8_MODEL}_v3 is deployed" in body_text(parsed, "plain")


def test_eml_retry_overwrites_same_file(tmp_path: Path) -> None:
    message = email_of(succeeded())
    transport = EmlFileTransport(tmp_path / "outbox")

    deliver(transport, message)
    deliver(transport, message)

    assert len(os.listdir(tmp_path / "outbox")) == 1


def test_eml_unwritable_folder_is_permanent(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the outbox folder should be")

    with pytest.raises(PermanentDeliveryError):
        deliver(EmlFileTransport(blocker / "outbox"), email_of(succeeded()))


def test_transport_defaults_to_eml(tmp_path: Path) -> None:
    transport = mail_transport_from_settings(make_settings(tmp_path))

    assert isinstance(transport, EmlFileTransport)
    assert transport.outbox_dir == tmp_path.resolve() / "outbox"


def test_transport_uses_smtp_when_host_set(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, smtp_host="mail.example.com", smtp_port=465, smtp_security="tls")

    transport = mail_transport_from_settings(settings)

    assert isinstance(transport, SmtpTransport)
    assert transport.address == "mail.example.com:465"


# Webhooks


def test_webhook_signature_verifies(webhook_receiver: WebhookReceiver) -> None:
    notification = succeeded(UTF8_MODEL)

    asyncio.run(deliver_webhook(WebhookTarget(webhook_receiver.url + "/hook", WEBHOOK_SECRET), notification,
                                timeout=10.0))

    [request] = webhook_receiver.requests
    timestamp = request.headers[TIMESTAMP_HEADER]
    expected = hmac.new(WEBHOOK_SECRET.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256)
    assert request.headers[SIGNATURE_HEADER] == "sha256=" + expected.hexdigest()
    assert verify_signature(WEBHOOK_SECRET, request.body, timestamp, request.headers[SIGNATURE_HEADER])
    assert request.headers["X-Tunedock-Delivery"] == notification.message_id
    assert request.headers["Content-Type"] == "application/json"


def test_webhook_body_carries_facts(webhook_receiver: WebhookReceiver) -> None:
    notification = succeeded(UTF8_MODEL)

    asyncio.run(deliver_webhook(WebhookTarget(webhook_receiver.url, WEBHOOK_SECRET), notification, timeout=10.0))

    payload = json.loads(webhook_receiver.requests[0].body)
    assert payload["kind"] == "deployment_succeeded"
    assert payload["facts"]["deployment_name"] == f"{UTF8_MODEL}_v3"
    assert payload["delivery_id"] == notification.message_id


def test_signature_rejects_tampering() -> None:
    body = b'{"kind":"deployment_failed"}'
    now = time.time()
    timestamp = str(int(now))
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), timestamp.encode() + b"." + body,
                                     hashlib.sha256).hexdigest()

    assert verify_signature(WEBHOOK_SECRET, body, timestamp, signature, now=now)
    assert not verify_signature(WEBHOOK_SECRET, body + b" ", timestamp, signature, now=now)
    assert not verify_signature("other-secret", body, timestamp, signature, now=now)
    assert not verify_signature(WEBHOOK_SECRET, body, timestamp, signature, now=now + 3600)


@pytest.mark.parametrize(("status", "error_type"), [
    (500, TransientDeliveryError),
    (503, TransientDeliveryError),
    (429, TransientDeliveryError),
    (400, PermanentDeliveryError),
    (404, PermanentDeliveryError),
    (302, PermanentDeliveryError),
])
def test_webhook_status_classification(webhook_receiver: WebhookReceiver, status: int, error_type: type) -> None:
    target = WebhookTarget(f"{webhook_receiver.url}/status/{status}", WEBHOOK_SECRET)

    with pytest.raises(error_type) as caught:
        asyncio.run(deliver_webhook(target, succeeded(), timeout=10.0))

    assert caught.value.reply_code == status
    assert caught.value.reply_text == f"receiver returned {status}"


def test_webhook_connection_refused_is_transient() -> None:
    target = WebhookTarget(f"http://{HOST}:{free_port()}/hook", WEBHOOK_SECRET)

    with pytest.raises(TransientDeliveryError):
        asyncio.run(deliver_webhook(target, succeeded(), timeout=10.0))


def test_webhook_error_hides_url_query(webhook_receiver: WebhookReceiver) -> None:
    target = WebhookTarget(f"{webhook_receiver.url}/status/400?token=s3cr3t", WEBHOOK_SECRET)

    with pytest.raises(PermanentDeliveryError) as caught:
        asyncio.run(deliver_webhook(target, succeeded(), timeout=10.0))

    assert "s3cr3t" not in caught.value.message


def test_webhook_target_repr_hides_secret() -> None:
    assert WEBHOOK_SECRET not in repr(WebhookTarget("https://hooks.example.com", WEBHOOK_SECRET))


# Retry


@pytest.mark.parametrize(("attempt", "delay"), [(1, 5.0), (2, 10.0), (3, 20.0), (6, 160.0), (11, 3600.0),
                                                (10_000, 3600.0)])
def test_retry_delay_doubles_up_to_cap(attempt: int, delay: float) -> None:
    assert retry_delay(attempt, 5.0, 3600.0) == delay


def test_retry_only_transient_below_limit() -> None:
    transient = TransientDeliveryError("timed out")
    permanent = PermanentDeliveryError("rejected")

    assert should_retry(transient, attempt=5, max_attempts=6)
    assert not should_retry(transient, attempt=6, max_attempts=6)
    assert not should_retry(permanent, attempt=1, max_attempts=6)


# Settings


def test_recipients_read_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEDOCK_NOTIFY_RECIPIENTS", "ops@example.com, Ana <ana@example.com>,")

    settings = make_settings(tmp_path)

    assert settings.notify_recipients == ["ops@example.com", "Ana <ana@example.com>"]


def test_recipients_reject_invalid_address(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        make_settings(tmp_path, notify_recipients="ops@example.com,not-an-address")


def test_password_and_file_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        make_settings(tmp_path, smtp_password="secret", smtp_password_file=tmp_path / "password")


def test_console_url_falls_back_to_public_url(tmp_path: Path) -> None:
    assert make_settings(tmp_path, public_url="https://td.example.com/").console_base_url == "https://td.example.com"
    assert make_settings(tmp_path, console_url="https://ui.example.com/").console_base_url == "https://ui.example.com"


def test_settings_repr_hides_password(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, smtp_password="hunter2-secret")

    assert "hunter2-secret" not in repr(settings)
