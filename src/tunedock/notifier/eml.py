"""Email delivery into ``.eml`` files, used when no SMTP server is configured.

Each email becomes one file in the outbox folder, named after its Message-ID, so that a
retry overwrites the same file instead of adding a copy. Any mail client opens the files.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import tempfile
from email import policy
from email.message import EmailMessage
from pathlib import Path

from tunedock.notifier.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from tunedock.settings import Settings

logger = logging.getLogger(__name__)

_UNSAFE_FILE_CHARACTERS = re.compile(r"[^A-Za-z0-9._@+-]")
# Failures that another attempt cannot fix without a person changing the folder.
_PERMANENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR}


class EmlFileTransport:
    def __init__(self, outbox_dir: Path) -> None:
        self.outbox_dir = outbox_dir

    @classmethod
    def from_settings(cls, settings: Settings) -> EmlFileTransport:
        return cls(settings.home_dir / "outbox")

    async def deliver(self, message: EmailMessage) -> None:
        await asyncio.to_thread(self.write, message)

    def write(self, message: EmailMessage) -> Path:
        """Write one email atomically, blocking, and return its path."""
        path = self.path_for(message)
        data = message.as_bytes(policy=policy.SMTP)
        try:
            self.outbox_dir.mkdir(parents=True, exist_ok=True)
            _write_atomically(path, data)
        except OSError as exc:
            raise _translate(exc, path) from exc
        logger.info("Wrote email %s to %s", message["Message-ID"], path)
        return path

    def path_for(self, message: EmailMessage) -> Path:
        message_id = str(message.get("Message-ID", "")).strip().strip("<>")
        name = _UNSAFE_FILE_CHARACTERS.sub("_", message_id).lstrip(".")
        if not name:
            raise PermanentDeliveryError("The email has no Message-ID header to name its .eml file after.")
        return self.outbox_dir / f"{name}.eml"


def _write_atomically(path: Path, data: bytes) -> None:
    # Readers see either no file or the whole email: write a hidden temporary file in the
    # same folder, then rename it over the final name.
    descriptor, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary_name, path)
    except BaseException:
        Path(temporary_name).unlink(missing_ok=True)
        raise


def _translate(exc: OSError, path: Path) -> DeliveryError:
    reason = exc.strerror or str(exc)
    if exc.errno in _PERMANENT_ERRNOS:
        return PermanentDeliveryError(f"Cannot write email file {path}: {reason}. Check the permissions of "
                                      "the outbox folder in TUNEDOCK_HOME.")
    return TransientDeliveryError(f"Cannot write email file {path}: {reason}.")
