"""Real servers on loopback for the notifier tests: SMTP (aiosmtpd) and a webhook receiver.

The SMTP servers use a certificate from a test certificate authority made with trustme, so
clients verify them through TUNEDOCK_SMTP_CA_FILE instead of turning verification off.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"
SMTP_USERNAME = "mailer"
SMTP_PASSWORD = "correct horse battery staple"
# Recipients that the test SMTP servers reject, with the reply they send.
REJECTED_RECIPIENTS = {
    "nobody@example.com": "550 5.1.1 No such user here",
    "later@example.com": "451 4.3.0 Mailbox busy, try again later",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@dataclass
class ReceivedEmail:
    mail_from: str
    recipients: list[str]
    message: EmailMessage
    over_tls: bool


@dataclass
class RecordingHandler:
    """aiosmtpd handler that keeps every accepted email and rejects REJECTED_RECIPIENTS."""

    received: list[ReceivedEmail] = field(default_factory=list)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address in REJECTED_RECIPIENTS:
            return REJECTED_RECIPIENTS[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        parsed = BytesParser(policy=policy.default).parsebytes(envelope.original_content or b"")
        assert isinstance(parsed, EmailMessage)
        over_tls = server.transport is not None and server.transport.get_extra_info("ssl_object") is not None
        self.received.append(ReceivedEmail(str(envelope.mail_from), list(envelope.rcpt_tos), parsed, over_tls))
        return "250 Message accepted for delivery"


@dataclass
class PasswordAuthenticator:
    """Accepts SMTP_USERNAME with SMTP_PASSWORD and records the mechanism of each success."""

    mechanisms: list[str] = field(default_factory=list)

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: Any) -> AuthResult:
        valid = (isinstance(auth_data, LoginPassword)
                 and auth_data.login == SMTP_USERNAME.encode()
                 and auth_data.password == SMTP_PASSWORD.encode())
        if valid:
            self.mechanisms.append(mechanism)
        # handled=False lets aiosmtpd send its standard "535 5.7.8" reply on failure.
        return AuthResult(success=valid, handled=False)


@dataclass
class SmtpServer:
    port: int
    handler: RecordingHandler
    authenticator: PasswordAuthenticator | None = None
    ca_file: Path | None = None


@dataclass
class Certificates:
    ca_file: Path
    server_context: ssl.SSLContext


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    authority = trustme.CA()
    server_certificate = authority.issue_cert(HOST, "localhost")
    ca_file = tmp_path_factory.mktemp("certificates") / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_certificate.configure_cert(server_context)
    return Certificates(ca_file=ca_file, server_context=server_context)


@contextmanager
def run_smtp_server(handler: RecordingHandler, port: int | None = None, **options: Any) -> Iterator[int]:
    """Run an aiosmtpd server on ``port`` (a free one by default) and yield its port."""
    port = port or free_port()
    # server_hostname avoids a reverse DNS lookup for the greeting.
    controller = Controller(handler, hostname=HOST, port=port, server_hostname="localhost", **options)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@pytest.fixture
def plain_smtp_server() -> Iterator[SmtpServer]:
    handler = RecordingHandler()
    with run_smtp_server(handler) as port:
        yield SmtpServer(port, handler)


@pytest.fixture(params=["LOGIN", "PLAIN"])
def starttls_smtp_server(request: pytest.FixtureRequest, certificates: Certificates) -> Iterator[SmtpServer]:
    """STARTTLS required, then login with the one mechanism named by the parameter."""
    handler = RecordingHandler()
    authenticator = PasswordAuthenticator()
    other_mechanisms = {"LOGIN", "PLAIN"} - {request.param}
    with run_smtp_server(handler, tls_context=certificates.server_context, require_starttls=True,
                         authenticator=authenticator, auth_required=True,
                         auth_exclude_mechanism=other_mechanisms) as port:
        yield SmtpServer(port, handler, authenticator, certificates.ca_file)


@pytest.fixture
def implicit_tls_smtp_server(certificates: Certificates) -> Iterator[SmtpServer]:
    handler = RecordingHandler()
    authenticator = PasswordAuthenticator()
    # aiosmtpd counts only STARTTLS as TLS for AUTH, but this socket is TLS from the first byte.
    # Login stays optional because aiosmtpd 1.4 warns when AUTH is required without STARTTLS.
    with run_smtp_server(handler, ssl_context=certificates.server_context, authenticator=authenticator,
                         auth_require_tls=False) as port:
        yield SmtpServer(port, handler, authenticator, certificates.ca_file)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never sends a byte, to cause timeouts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((HOST, 0))
        listener.listen(8)
        yield int(listener.getsockname()[1])


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    """HTTP server that records each POST and responds with the status named in the path.

    ``/status/500`` returns 500, and any other path returns 204.
    """

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self._server = ThreadingHTTPServer((HOST, 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.requests.append(ReceivedRequest(self.path, dict(self.headers.items()), body))
                path = urlsplit(self.path).path
                status = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 204
                reply = b"" if status == 204 else f"receiver returned {status}".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    receiver.start()
    yield receiver
    receiver.stop()
