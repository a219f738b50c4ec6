"""The interface that every email transport implements, and the choice of one from settings."""

from __future__ import annotations

import logging
from email.message import EmailMessage
from typing import Protocol

from tunedock.notifier.eml import EmlFileTransport
from tunedock.notifier.smtp import SmtpTransport
from tunedock.settings import Settings

logger = logging.getLogger(__name__)


class MailTransport(Protocol):
    async def deliver(self, message: EmailMessage) -> None:
        """Deliver one email; raise TransientDeliveryError or PermanentDeliveryError on failure."""


def mail_transport_from_settings(settings: Settings) -> MailTransport:
    """Pick SMTP when TUNEDOCK_SMTP_HOST is set, and the .eml outbox folder otherwise."""
    if settings.smtp_host:
        transport = SmtpTransport.from_settings(settings)
        logger.info("Sending notification emails through SMTP server %s with security %s",
                    transport.address, transport.security)
        return transport

    outbox = EmlFileTransport.from_settings(settings)
    logger.info("No SMTP server is configured: writing notification emails to %s", outbox.outbox_dir)
    return outbox
