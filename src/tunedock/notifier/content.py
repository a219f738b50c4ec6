"""The content of each notification: its subject, plain text, HTML and the facts they show.

One builder per kind of notification. The builders take plain values, not store rows, so
that the outbox worker can rebuild the same notification for every retry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from tunedock.errors import InvalidInput
from tunedock.notifier.rendering import (
    Link,
    MessageBody,
    as_utc,
    format_duration,
    format_timestamp,
    one_line,
    render_html,
    render_text,
)

SUBJECT_PREFIX = "[Tunedock]"
SYSTEM_UNDEPLOY_REASONS = ("idle", "crashed", "superseded")


class NotificationKind(StrEnum):
    DEPLOYMENT_SUCCEEDED = "deployment_succeeded"
    DEPLOYMENT_FAILED = "deployment_failed"
    DEPLOYMENT_UNDEPLOYED = "deployment_undeployed"
    IDLE_WARNING = "idle_warning"


@dataclass(frozen=True)
class Notification:
    """One notification as it is sent by email and webhook.

    ``message_id`` is the email's Message-ID header and the webhook's delivery id; it stays
    the same across retries so that receivers can drop duplicates. ``facts`` contains the
    values shown in the text, as JSON-compatible types, for the webhook body.
    """

    kind: NotificationKind
    subject: str
    text: str
    html: str
    recipients: tuple[str, ...]
    message_id: str
    facts: dict[str, Any] = field(hash=False)


def collect_recipients(*groups: Iterable[str | None]) -> tuple[str, ...]:
    """Merge address lists in order, skipping empty values and case-insensitive duplicates."""
    seen: set[str] = set()
    recipients: list[str] = []
    for group in groups:
        for address in group:
            cleaned = (address or "").strip()
            if cleaned and cleaned.lower() not in seen:
                seen.add(cleaned.lower())
                recipients.append(cleaned)
    return tuple(recipients)


def deployment_link(console_url: str, deployment_id: int) -> str:
    return f"{console_url.rstrip('/')}/deployments/{deployment_id}"


def job_link(console_url: str, job_id: int) -> str:
    return f"{console_url.rstrip('/')}/jobs/{job_id}"


def keep_alive_link(console_url: str, deployment_id: int) -> str:
    return f"{deployment_link(console_url, deployment_id)}/keep-alive"


def deployment_succeeded(*, deployment_id: int, deployment_name: str, model_name: str,
                         duration_seconds: float, endpoint_url: str, curl_snippet: str,
                         console_url: str, recipients: Iterable[str], message_id: str) -> Notification:
    link = deployment_link(console_url, deployment_id)
    body = MessageBody(
        opening=f"{deployment_name} is deployed and serving requests.",
        facts=[
            ("Model", model_name),
            ("Deployment", deployment_name),
            ("Duration", format_duration(duration_seconds)),
            ("Endpoint", endpoint_url),
        ],
        code_caption="Call it with cURL",
        code=curl_snippet,
        links=[Link("Open the deployment", link)],
        closing=_closing(console_url),
    )
    facts = {
        "deployment_id": deployment_id,
        "deployment_name": deployment_name,
        "model_name": model_name,
        "duration_seconds": duration_seconds,
        "endpoint_url": endpoint_url,
        "curl_snippet": curl_snippet,
        "deployment_url": link,
    }
    subject = f"{deployment_name} is ready"
    return _notification(NotificationKind.DEPLOYMENT_SUCCEEDED, subject, body, facts, recipients, message_id)


def deployment_failed(*, deployment_id: int, deployment_name: str, model_name: str, job_id: int,
                      reason: str, console_url: str, recipients: Iterable[str],
                      message_id: str) -> Notification:
    link = job_link(console_url, job_id)
    body = MessageBody(
        opening=f"Deploying {deployment_name} failed.",
        facts=[
            ("Model", model_name),
            ("Deployment", deployment_name),
            ("Reason", reason),
        ],
        links=[Link("See the job's events", link)],
        closing=_closing(console_url),
    )
    facts = {
        "deployment_id": deployment_id,
        "deployment_name": deployment_name,
        "model_name": model_name,
        "job_id": job_id,
        "reason": reason,
        "job_url": link,
    }
    subject = f"{deployment_name} failed"
    return _notification(NotificationKind.DEPLOYMENT_FAILED, subject, body, facts, recipients, message_id)


def deployment_undeployed(*, deployment_id: int, deployment_name: str, model_name: str, reason: str,
                          reason_text: str, started_at: datetime, ended_at: datetime,
                          console_url: str, recipients: Iterable[str], message_id: str) -> Notification:
    """Build the notification of an un-deployment done by the system, not by a person.

    ``reason`` is one of ``idle``, ``crashed`` or ``superseded``; ``reason_text`` explains
    it in a sentence, such as "No requests for 30 minutes."
    """
    if reason not in SYSTEM_UNDEPLOY_REASONS:
        allowed = ", ".join(SYSTEM_UNDEPLOY_REASONS)
        raise InvalidInput(f"Un-deployment reason {reason!r} is invalid for a notification; use one of {allowed}.",
                           param="reason")

    link = deployment_link(console_url, deployment_id)
    body = MessageBody(
        opening=f"Tunedock un-deployed {deployment_name}.",
        facts=[
            ("Model", model_name),
            ("Deployment", deployment_name),
            # A stored reason such as "crashed: ..." already starts with the kind.
            ("Reason", reason_text if reason_text.startswith(reason) else f"{reason}: {reason_text}"),
            ("Started", format_timestamp(started_at)),
            ("Ended", format_timestamp(ended_at)),
        ],
        links=[Link("Open the deployment", link)],
        closing=_closing(console_url),
    )
    facts = {
        "deployment_id": deployment_id,
        "deployment_name": deployment_name,
        "model_name": model_name,
        "reason": reason,
        "reason_text": reason_text,
        "started_at": as_utc(started_at).isoformat(),
        "ended_at": as_utc(ended_at).isoformat(),
        "deployment_url": link,
    }
    subject = f"{deployment_name} was un-deployed ({reason})"
    return _notification(NotificationKind.DEPLOYMENT_UNDEPLOYED, subject, body, facts, recipients, message_id)


def idle_warning(*, deployment_id: int, deployment_name: str, model_name: str, minutes_left: int,
                 console_url: str, recipients: Iterable[str], message_id: str) -> Notification:
    link = keep_alive_link(console_url, deployment_id)
    minutes = f"{minutes_left} minute" if minutes_left == 1 else f"{minutes_left} minutes"
    body = MessageBody(
        opening=f"{deployment_name} has received no requests lately, so Tunedock will un-deploy it "
                f"in {minutes} to free its hardware.",
        facts=[
            ("Model", model_name),
            ("Deployment", deployment_name),
            ("Time left", minutes),
        ],
        links=[Link("Keep it deployed", link)],
        closing=_closing(console_url),
    )
    facts = {
        "deployment_id": deployment_id,
        "deployment_name": deployment_name,
        "model_name": model_name,
        "minutes_left": minutes_left,
        "keep_alive_url": link,
    }
    subject = f"{deployment_name} will be un-deployed in {minutes}"
    return _notification(NotificationKind.IDLE_WARNING, subject, body, facts, recipients, message_id)


def _notification(kind: NotificationKind, subject: str, body: MessageBody, facts: dict[str, Any],
                  recipients: Iterable[str], message_id: str) -> Notification:
    # A line break in a user-chosen name must not reach the Subject header.
    full_subject = one_line(f"{SUBJECT_PREFIX} {subject}")
    return Notification(
        kind=kind,
        subject=full_subject,
        text=render_text(body),
        html=render_html(full_subject, body),
        recipients=collect_recipients(recipients),
        message_id=message_id,
        facts=facts,
    )


def _closing(console_url: str) -> str:
    return f"Sent by Tunedock at {console_url.rstrip('/')}."
