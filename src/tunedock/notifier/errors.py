"""Errors of notification delivery.

Every transport raises one of these, translated from the SMTP, HTTP or file-system error
with ``raise ... from``::

    TunedockError                          (tunedock.errors)
    └── DeliveryError                      502 delivery_failed
        ├── TransientDeliveryError         retry later: connection refused, timeout,
        │                                  SMTP 4xx, HTTP 5xx, 408 or 429
        └── PermanentDeliveryError         do not retry: SMTP 5xx (login rejected,
            │                              recipient rejected), HTTP 4xx, TLS failure
            └── RecipientsRejected         the SMTP server rejected some recipients

``reply_code`` and ``reply_text`` contain the remote server's own reply when there was one
(an SMTP reply such as ``535 5.7.8 Authentication credentials invalid``, or an HTTP status
and the start of the response body), so that a notification's status can say why it failed.
"""

from __future__ import annotations

from typing import Any

from tunedock.errors import TunedockError


class DeliveryError(TunedockError):
    status_code = 502
    code = "delivery_failed"
    transient = False

    def __init__(self, message: str, *, reply_code: int | None = None, reply_text: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details=details)
        self.reply_code = reply_code
        self.reply_text = reply_text

    @property
    def reply(self) -> str | None:
        """The server's reply as one line, such as ``550 5.1.1 No such user``."""
        if self.reply_code is None and not self.reply_text:
            return None
        return " ".join(str(part) for part in (self.reply_code, self.reply_text) if part)


class TransientDeliveryError(DeliveryError):
    transient = True


class PermanentDeliveryError(DeliveryError):
    transient = False


class RecipientsRejected(PermanentDeliveryError):
    """The SMTP server rejected some recipients of a message and accepted the others.

    The message was delivered to ``accepted``, so a retry would send it to them twice.
    ``rejected`` maps each rejected address to the server's reply.
    """

    def __init__(self, message: str, *, accepted: list[str], rejected: dict[str, str]) -> None:
        first_reply = next(iter(rejected.values()), None)
        super().__init__(message, reply_text=first_reply,
                         details={"accepted": accepted, "rejected": rejected})
        self.accepted = accepted
        self.rejected = rejected
