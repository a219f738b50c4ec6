"""Email delivery through an SMTP server, with smtplib run in a worker thread.

Security modes: ``none`` (plain text), ``starttls`` (a plain connection upgraded with the
STARTTLS command, usually port 587) and ``tls`` (TLS from the first byte, usually port 465).
TLS always verifies the server's certificate and host name, against ``ca_file`` when given
and the system's trust store otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from tunedock.errors import InvalidInput
from tunedock.notifier.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RecipientsRejected,
    TransientDeliveryError,
)
from tunedock.settings import Settings

logger = logging.getLogger(__name__)

SmtpSecurity = Literal["none", "starttls", "tls"]


class SmtpTransport:
    def __init__(self, host: str, port: int, *, security: SmtpSecurity = "starttls",
                 username: str | None = None, password: SecretStr | None = None,
                 password_file: Path | None = None, timeout: float = 30.0,
                 ca_file: Path | None = None) -> None:
        self.host = host
        self.port = port
        self.security = security
        self.username = username
        self._password = password
        self.password_file = password_file
        self.timeout = timeout
        self.ca_file = ca_file
        if username and security == "none":
            logger.warning("SMTP login to %s without TLS sends the password unencrypted. "
                           "Set TUNEDOCK_SMTP_SECURITY to starttls or tls.", self.address)

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpTransport:
        if not settings.smtp_host:
            raise InvalidInput("TUNEDOCK_SMTP_HOST is not set, so there is no SMTP server to send through.")
        return cls(settings.smtp_host, settings.smtp_port, security=settings.smtp_security,
                   username=settings.smtp_username, password=settings.smtp_password,
                   password_file=settings.smtp_password_file, timeout=settings.smtp_timeout,
                   ca_file=settings.smtp_ca_file)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def deliver(self, message: EmailMessage) -> None:
        await asyncio.to_thread(self.send, message)

    def send(self, message: EmailMessage) -> None:
        """Send one email, blocking.

        Raises a DeliveryError whose ``transient`` flag marks whether a retry may succeed.
        """
        stage = "connect"
        client: smtplib.SMTP | None = None
        try:
            client = self._connect()
            if self.security == "starttls":
                stage = "starttls"
                client.starttls(context=self._tls_context())
            if self.username:
                stage = "login"
                client.login(self.username, self._read_password())
            stage = "send"
            rejected = client.send_message(message)
        except (smtplib.SMTPException, OSError, UnicodeError) as exc:
            raise self._translate(exc, stage, message) from exc
        finally:
            if client is not None:
                _close(client)

        if rejected:
            raise self._partly_rejected(message, rejected)
        logger.info("Sent email %s to %d recipients through %s",
                    message["Message-ID"], len(_recipients(message)), self.address)

    def _connect(self) -> smtplib.SMTP:
        if self.security == "tls":
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self._tls_context())
        return smtplib.SMTP(self.host, self.port, timeout=self.timeout)

    def _tls_context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except OSError as exc:
            raise PermanentDeliveryError(
                f"Cannot read the CA file {self.ca_file}: {exc.strerror or exc}. Check TUNEDOCK_SMTP_CA_FILE."
            ) from exc

    def _read_password(self) -> str:
        # Read at each delivery, so that a rotated password file takes effect without a restart.
        if self.password_file is None:
            return self._password.get_secret_value() if self._password else ""
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise PermanentDeliveryError(
                f"Cannot read the SMTP password file {self.password_file}: {exc.strerror or exc}. "
                "Check TUNEDOCK_SMTP_PASSWORD_FILE."
            ) from exc

    def _translate(self, exc: BaseException, stage: str, message: EmailMessage) -> DeliveryError:
        if isinstance(exc, smtplib.SMTPException):
            return self._translate_smtp(exc, stage, message)
        return self._translate_network(exc, stage)

    def _translate_smtp(self, exc: smtplib.SMTPException, stage: str, message: EmailMessage) -> DeliveryError:
        server = f"SMTP server {self.address}"
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            return _all_rejected(server, message, exc)
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            text = _reply_text(exc.smtp_error)
            return _by_code(exc.smtp_code, text,
                            f"{server} rejected the login of user {self.username!r}: {exc.smtp_code} {text}. "
                            "Check TUNEDOCK_SMTP_USERNAME and the SMTP password.")
        if isinstance(exc, smtplib.SMTPResponseException):
            text = _reply_text(exc.smtp_error)
            return _by_code(exc.smtp_code, text,
                            f"{server} replied {exc.smtp_code} {text} at the {stage} step.")
        # smtplib reports a read timeout as a disconnection caused by the TimeoutError.
        if isinstance(exc, smtplib.SMTPServerDisconnected) and isinstance(exc.__context__, TimeoutError):
            return self._timed_out(stage)
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return TransientDeliveryError(f"{server} closed the connection at the {stage} step: {exc}.")
        if isinstance(exc, smtplib.SMTPNotSupportedError) and stage == "starttls":
            return PermanentDeliveryError(f"{server} does not offer STARTTLS. Set TUNEDOCK_SMTP_SECURITY "
                                          "to tls if the port expects TLS from the start, or to none.")
        if isinstance(exc, smtplib.SMTPNotSupportedError) and stage == "login":
            return PermanentDeliveryError(f"{server} does not offer login (SMTP AUTH). Many servers offer it "
                                          "only over TLS: check TUNEDOCK_SMTP_SECURITY, or unset "
                                          "TUNEDOCK_SMTP_USERNAME if the server needs no login.")
        return PermanentDeliveryError(f"Sending through {server} failed at the {stage} step: {exc}")

    def _translate_network(self, exc: BaseException, stage: str) -> DeliveryError:
        server = f"SMTP server {self.address}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return PermanentDeliveryError(
                f"The certificate of {server} is not trusted: {exc.verify_message}. "
                "Set TUNEDOCK_SMTP_CA_FILE to the certificate authority that signed it."
            )
        if isinstance(exc, ssl.SSLError):
            return PermanentDeliveryError(
                f"TLS with {server} failed at the {stage} step: {exc.reason or exc}. Check that "
                "TUNEDOCK_SMTP_SECURITY matches the port: tls for 465, starttls for 587."
            )
        if isinstance(exc, TimeoutError):
            return self._timed_out(stage)
        if isinstance(exc, ConnectionRefusedError):
            return TransientDeliveryError(f"{server} refused the connection. Check that it is running and "
                                          "that TUNEDOCK_SMTP_HOST and TUNEDOCK_SMTP_PORT point to it.")
        if isinstance(exc, UnicodeError) and stage == "login":
            return PermanentDeliveryError(f"The SMTP user name or password contains characters that "
                                          f"SMTP login cannot send: {exc}.")
        if isinstance(exc, UnicodeError):
            return PermanentDeliveryError(f"The email cannot be encoded for {server}: {exc}.")
        return TransientDeliveryError(f"Connecting to {server} failed at the {stage} step: {exc}.")

    def _timed_out(self, stage: str) -> TransientDeliveryError:
        return TransientDeliveryError(
            f"SMTP server {self.address} did not respond within {self.timeout:g} s at the {stage} step."
        )

    def _partly_rejected(self, message: EmailMessage, rejected: dict[str, tuple[int, bytes]]) -> RecipientsRejected:
        replies = {address: f"{code} {_reply_text(text)}" for address, (code, text) in rejected.items()}
        accepted = [address for address in _recipients(message) if address not in rejected]
        listing = "; ".join(f"{address}: {reply}" for address, reply in replies.items())
        return RecipientsRejected(
            f"SMTP server {self.address} accepted email {message['Message-ID']} for {len(accepted)} "
            f"recipients and rejected {listing}.",
            accepted=accepted, rejected=replies,
        )


def _all_rejected(server: str, message: EmailMessage, exc: smtplib.SMTPRecipientsRefused) -> DeliveryError:
    replies = {address: (code, _reply_text(text)) for address, (code, text) in exc.recipients.items()}
    listing = "; ".join(f"{address}: {code} {text}" for address, (code, text) in replies.items())
    first_code, first_text = next(iter(replies.values()), (None, ""))
    text = f"{server} rejected every recipient of email {message['Message-ID']}: {listing}."
    # A retry can succeed only if every rejection is temporary (4xx).
    if all(400 <= code < 500 for code, _ in replies.values()):
        return TransientDeliveryError(text, reply_code=first_code, reply_text=first_text)
    return PermanentDeliveryError(text, reply_code=first_code, reply_text=first_text)


def _by_code(code: int, text: str, message: str) -> DeliveryError:
    if 500 <= code < 600:
        return PermanentDeliveryError(message, reply_code=code, reply_text=text)
    return TransientDeliveryError(message, reply_code=code, reply_text=text)


def _reply_text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return " ".join(text.split())


def _recipients(message: EmailMessage) -> list[str]:
    fields = [str(value) for name in ("To", "Cc", "Bcc") for value in message.get_all(name, [])]
    return [address for _, address in getaddresses(fields) if address]


def _close(client: smtplib.SMTP) -> None:
    # QUIT is a courtesy, and the connection may already be gone after an error.
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        pass
    finally:
        client.close()
