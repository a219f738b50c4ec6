"""The background worker that delivers the outbox: claim, send, record, retry with backoff.

Each attempt is claimed in the store (status ``sending``, attempts + 1) before anything
is sent. An entry found in ``sending`` at start-up was cut off by a crash mid-delivery;
the relay may already have it, so it is marked failed rather than sent a second time.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import httpx
from sqlalchemy import select, update

from tunedock.notifier.errors import DeliveryError, PermanentDeliveryError
from tunedock.notifier.messages import build_email
from tunedock.notifier.outbox import as_notification
from tunedock.notifier.retry import retry_delay
from tunedock.notifier.transport import MailTransport
from tunedock.notifier.webhooks import WebhookTarget, deliver_webhook
from tunedock.settings import Settings
from tunedock.store.database import Database
from tunedock.store.tables import OutboxEntry, Webhook, utc_now

logger = logging.getLogger(__name__)

BATCH_SIZE = 20
INTERRUPTED_ERROR = ("delivery was cut off by a server restart; not retried, because the receiver may "
                     "already have it")


class OutboxWorker:
    def __init__(self, database: Database, settings: Settings, transport: MailTransport,
                 poll_interval: float = 1.0) -> None:
        self.database = database
        self.settings = settings
        self.transport = transport
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._http = httpx.AsyncClient(follow_redirects=False)
        self._task = asyncio.create_task(self._run(), name="outbox-worker")

    def wake(self) -> None:
        """Look for due notifications now instead of at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
        logger.info("outbox worker stopped")

    async def _run(self) -> None:
        interrupted = await asyncio.to_thread(self._fail_interrupted)
        logger.info("outbox worker started (%d interrupted deliveries marked failed)", interrupted)
        while True:
            try:
                while await self._deliver_due():
                    pass
            except Exception:  # noqa: BLE001 - a store hiccup must not end deliveries for good
                logger.exception("outbox delivery round failed; retrying at the next poll")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
            except asyncio.TimeoutError:
                pass

    def _fail_interrupted(self) -> int:
        with self.database.session() as session:
            result = session.execute(update(OutboxEntry).where(OutboxEntry.status == "sending")
                                     .values(status="failed", last_error=INTERRUPTED_ERROR))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def _deliver_due(self) -> int:
        """Deliver every entry that is due now; return how many were attempted."""
        due = await asyncio.to_thread(self._due_ids)
        attempted = 0
        for entry_id in due:
            entry = await asyncio.to_thread(self._claim, entry_id)
            if entry is None:
                continue  # another worker claimed it first
            attempted += 1
            await self._attempt(entry)
        return attempted

    def _due_ids(self) -> list[int]:
        with self.database.session() as session:
            query = (select(OutboxEntry.id).where(OutboxEntry.status == "pending",
                                                  OutboxEntry.next_attempt_at <= utc_now())
                     .order_by(OutboxEntry.id).limit(BATCH_SIZE))
            return list(session.scalars(query))

    def _claim(self, entry_id: int) -> OutboxEntry | None:
        """Mark an attempt before making it; the status condition makes the claim exclusive."""
        with self.database.session() as session:
            claimed = session.execute(
                update(OutboxEntry).where(OutboxEntry.id == entry_id, OutboxEntry.status == "pending")
                .values(status="sending", attempts=OutboxEntry.attempts + 1))
            if not claimed.rowcount:  # type: ignore[attr-defined]
                return None
            return session.get_one(OutboxEntry, entry_id)

    async def _attempt(self, entry: OutboxEntry) -> None:
        try:
            if entry.channel == "webhook":
                await self._send_webhook(entry)
            else:
                message = build_email(as_notification(entry), self.settings.smtp_from, entry.created_at)
                await self.transport.deliver(message)
        except DeliveryError as exc:
            await asyncio.to_thread(self._record_failure, entry, exc)
            return
        except Exception as exc:  # noqa: BLE001 - an unexpected error still ends this attempt with a status
            logger.exception("notification %s failed unexpectedly", entry.id)
            await asyncio.to_thread(self._record_failure, entry, PermanentDeliveryError(f"internal error: {exc}"))
            return
        await asyncio.to_thread(self._record_sent, entry.id)
        logger.info("sent notification %s (%s by %s, attempt %d)", entry.id, entry.kind, entry.channel,
                    entry.attempts)

    async def _send_webhook(self, entry: OutboxEntry) -> None:
        webhook = await asyncio.to_thread(self._webhook, entry.webhook_id)
        if webhook is None:
            raise PermanentDeliveryError(f"webhook {entry.webhook_id} was deleted before delivery")
        await deliver_webhook(WebhookTarget(url=webhook.url, secret=webhook.secret), as_notification(entry),
                              timeout=self.settings.webhook_timeout, client=self._http)

    def _webhook(self, webhook_id: int | None) -> Webhook | None:
        with self.database.session() as session:
            webhook = session.get(Webhook, webhook_id) if webhook_id is not None else None
            return webhook if webhook is not None and webhook.deleted_at is None else None

    def _record_sent(self, entry_id: int) -> None:
        with self.database.session() as session:
            entry = session.get_one(OutboxEntry, entry_id)
            entry.status = "sent"
            entry.sent_at = utc_now()
            entry.last_error = None

    def _record_failure(self, entry: OutboxEntry, error: DeliveryError) -> None:
        reason = error.message
        retry = error.transient and entry.attempts < self.settings.notify_max_attempts
        with self.database.session() as session:
            stored = session.get_one(OutboxEntry, entry.id)
            stored.last_error = reason
            if retry:
                delay = retry_delay(entry.attempts, self.settings.notify_retry_base_seconds,
                                    self.settings.notify_retry_max_seconds)
                stored.status = "pending"
                stored.next_attempt_at = utc_now() + timedelta(seconds=delay)
            else:
                stored.status = "failed"
        if retry:
            logger.warning("notification %s attempt %d failed, retrying later: %s", entry.id, entry.attempts, reason)
        else:
            logger.error("notification %s failed for good after %d attempt(s): %s", entry.id, entry.attempts, reason)
