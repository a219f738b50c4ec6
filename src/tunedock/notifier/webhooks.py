"""Webhook delivery: one signed JSON POST per notification.

Request
-------
``POST <webhook URL>`` with ``Content-Type: application/json`` and the body::

    {"delivery_id": "<notification-42.3f9a0c1e5b7d2a64@tunedock.local>",
     "kind": "deployment_succeeded", "subject": "[Tunedock] Flan T5_v3 is ready",
     "text": "<the plain-text email body>", "facts": {...}}

``facts`` contains the values of the notification kind, such as ``deployment_name``,
``endpoint_url`` or ``reason``. Headers:

    X-Tunedock-Event      the notification kind
    X-Tunedock-Delivery   the delivery id, the same on every retry, to drop duplicates
    X-Tunedock-Timestamp  Unix time in whole seconds when the request was signed
    X-Tunedock-Signature  sha256=<hex digest>

Signature
---------
The digest is HMAC-SHA256, keyed with the webhook's secret encoded as UTF-8, over the
bytes ``<timestamp>.<body>``: the decimal digits of the X-Tunedock-Timestamp header, one
ASCII dot, then the exact body bytes as received. A receiver recomputes it over the raw body
before parsing the JSON and compares in constant time (``hmac.compare_digest``).
Because the timestamp is signed, a receiver can reject requests older than a few minutes
to stop replays; ``verify_signature`` does both checks.

Outcome
-------
Any 2xx response is a delivery. Connection errors, timeouts, 5xx, 408 and 429 raise
TransientDeliveryError, so the request is retried with a new timestamp and signature.
Redirects are not followed. They and the other 4xx responses raise PermanentDeliveryError.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass, field

import httpx

from tunedock.notifier.content import Notification
from tunedock.notifier.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError

logger = logging.getLogger(__name__)

EVENT_HEADER = "X-Tunedock-Event"
DELIVERY_HEADER = "X-Tunedock-Delivery"
TIMESTAMP_HEADER = "X-Tunedock-Timestamp"
SIGNATURE_HEADER = "X-Tunedock-Signature"
SIGNATURE_PREFIX = "sha256="
DEFAULT_TOLERANCE_SECONDS = 300
# Statuses that mean "not now" rather than "never": request timeout and rate limit.
_TRANSIENT_CLIENT_ERRORS = {408, 429}
_REPLY_EXCERPT_CHARACTERS = 200


@dataclass(frozen=True)
class WebhookTarget:
    url: str
    secret: str = field(repr=False)


def webhook_body(notification: Notification) -> bytes:
    payload = {
        "delivery_id": notification.message_id,
        "kind": notification.kind.value,
        "subject": notification.subject,
        "text": notification.text,
        "facts": notification.facts,
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Return the X-Tunedock-Signature value for a body sent at ``timestamp``."""
    signed = str(timestamp).encode("ascii") + b"." + body
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def verify_signature(secret: str, body: bytes, timestamp: str, signature: str, *,
                     now: float | None = None, tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS) -> bool:
    """Check a received request's signature and that its timestamp is recent, for receivers."""
    if not (timestamp.isascii() and timestamp.isdecimal()):
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def signed_headers(target: WebhookTarget, notification: Notification, body: bytes,
                   timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        EVENT_HEADER: notification.kind.value,
        DELIVERY_HEADER: notification.message_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(target.secret, timestamp, body),
    }


async def deliver_webhook(target: WebhookTarget, notification: Notification, *, timeout: float,
                          client: httpx.AsyncClient | None = None) -> None:
    """POST one notification to a webhook.

    Raises a DeliveryError whose ``transient`` flag marks whether a retry may succeed.
    ``client`` lets a caller reuse connections across deliveries. Its redirect and TLS
    settings then apply, while ``timeout`` still applies to each request.
    """
    body = webhook_body(notification)
    headers = signed_headers(target, notification, body, int(time.time()))
    try:
        if client is None:
            async with httpx.AsyncClient(follow_redirects=False) as own_client:
                response = await own_client.post(target.url, content=body, headers=headers, timeout=timeout)
        else:
            response = await client.post(target.url, content=body, headers=headers, timeout=timeout)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _translate_transport_error(exc, target, timeout) from exc

    if not response.is_success:
        raise _error_for_status(response, target)
    logger.info("Sent webhook %s of notification %s to %s: HTTP %d",
                notification.kind.value, notification.message_id, _safe_url(target.url), response.status_code)


def _translate_transport_error(exc: httpx.HTTPError | httpx.InvalidURL, target: WebhookTarget, timeout: float) -> DeliveryError:
    url = _safe_url(target.url)
    if isinstance(exc, httpx.TimeoutException):
        return TransientDeliveryError(f"Webhook {url} did not respond within {timeout:g} s.")
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return PermanentDeliveryError(f"Webhook URL {url} is invalid: {exc}. Use an http:// or https:// URL.")
    if isinstance(exc, httpx.TransportError):
        return TransientDeliveryError(f"Connecting to webhook {url} failed: {exc or type(exc).__name__}.")
    return PermanentDeliveryError(f"Webhook request to {url} failed: {exc}.")


def _error_for_status(response: httpx.Response, target: WebhookTarget) -> DeliveryError:
    status = response.status_code
    excerpt = " ".join(response.text[:_REPLY_EXCERPT_CHARACTERS].split())
    message = f"Webhook {_safe_url(target.url)} responded with HTTP {status}"
    if excerpt:
        message += f": {excerpt}"
    if status >= 500 or status in _TRANSIENT_CLIENT_ERRORS:
        return TransientDeliveryError(message + ".", reply_code=status, reply_text=excerpt)
    if 300 <= status < 400:
        message += ". Redirects are not followed, so set the webhook URL to the final address"
    return PermanentDeliveryError(message + ".", reply_code=status, reply_text=excerpt)


def _safe_url(url: str) -> str:
    # Webhook URLs may carry a token in the query string or user info, so messages and logs
    # show only scheme, host, port and path.
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(invalid URL)"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}{parsed.path}"
