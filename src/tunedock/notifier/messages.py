"""The email form of a notification: headers and a text/HTML multipart/alternative body."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime

from tunedock.errors import InvalidInput
from tunedock.notifier.content import Notification
from tunedock.notifier.errors import PermanentDeliveryError
from tunedock.notifier.rendering import as_utc

# RFC 5322 msg-id in its common dot-atom form: "<left@right>" without spaces or brackets inside.
_MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")


def make_message_id(notification_id: int, domain: str, token: str | None = None) -> str:
    """Create a Message-ID such as ``<notification-42.3f9a0c1e5b7d2a64@tunedock.local>``.

    Call it once when the notification is stored and keep the result, so that every retry
    sends the same Message-ID. The random token keeps ids unique across two servers, or
    across a store that was reset and numbers notifications from 1 again.
    """
    token = token or secrets.token_hex(8)
    message_id = f"<notification-{notification_id}.{token}@{domain}>"
    if not _MESSAGE_ID.match(message_id):
        raise InvalidInput(f"Message-ID {message_id!r} is invalid. Check TUNEDOCK_NOTIFY_MESSAGE_ID_DOMAIN.",
                           param="domain")
    return message_id


def build_email(notification: Notification, sender: str, date: datetime | None = None) -> EmailMessage:
    """Build the email of a notification.

    ``date`` is the Date header, normally the moment the notification was stored, so that
    the same email is built on every retry. It defaults to now.
    """
    if not notification.recipients:
        raise PermanentDeliveryError(
            f"Notification {notification.message_id} has no recipients. Set TUNEDOCK_NOTIFY_RECIPIENTS "
            "or an email address on the user who deployed."
        )

    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(notification.recipients)
    message["Subject"] = notification.subject
    message["Date"] = format_datetime(as_utc(date or datetime.now(timezone.utc)))
    message["Message-ID"] = notification.message_id
    # RFC 3834 marks the email as automatic, so that vacation responders do not reply to it.
    message["Auto-Submitted"] = "auto-generated"
    message["X-Tunedock-Notification"] = notification.kind.value

    # Quoted-printable keeps the ASCII parts readable in .eml files, unlike base64.
    message.set_content(notification.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.add_alternative(notification.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return message
