"""The notifier's delivery layer: the content of notifications and how they reach people.

The outbox worker stores each notification, then calls this package to build and send it,
and retries it when the error is transient. This package neither stores nor schedules.

Modules:
    content     the Notification value and one builder per kind of notification
    rendering   plain-text and HTML bodies from the same facts, HTML-escaped
    messages    the email: headers, stable Message-ID, multipart/alternative body
    transport   the MailTransport interface and its choice from settings
    smtp        delivery through an SMTP server: none, STARTTLS or implicit TLS
    eml         delivery into .eml files in the outbox folder of the home
    webhooks    signed JSON POSTs; the module docstring documents the signature
    retry       exponential backoff between attempts
    errors      transient and permanent delivery errors
"""

from tunedock.notifier.content import (
    Notification,
    NotificationKind,
    collect_recipients,
    deployment_failed,
    deployment_succeeded,
    deployment_undeployed,
    idle_warning,
)
from tunedock.notifier.eml import EmlFileTransport
from tunedock.notifier.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RecipientsRejected,
    TransientDeliveryError,
)
from tunedock.notifier.messages import build_email, make_message_id
from tunedock.notifier.retry import retry_delay, retry_delay_from_settings, should_retry
from tunedock.notifier.smtp import SmtpTransport
from tunedock.notifier.transport import MailTransport, mail_transport_from_settings
from tunedock.notifier.webhooks import WebhookTarget, deliver_webhook, verify_signature, webhook_body

__all__ = [
    "DeliveryError",
    "EmlFileTransport",
    "MailTransport",
    "Notification",
    "NotificationKind",
    "PermanentDeliveryError",
    "RecipientsRejected",
    "SmtpTransport",
    "TransientDeliveryError",
    "WebhookTarget",
    "build_email",
    "collect_recipients",
    "deliver_webhook",
    "deployment_failed",
    "deployment_succeeded",
    "deployment_undeployed",
    "idle_warning",
    "mail_transport_from_settings",
    "make_message_id",
    "retry_delay",
    "retry_delay_from_settings",
    "should_retry",
    "verify_signature",
    "webhook_body",
]
