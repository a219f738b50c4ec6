"""One server per data directory: a lock file that names the server holding it."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from tunedock.errors import Conflict

logger = logging.getLogger(__name__)

LOCK_NAME = "server.lock"


class HomeLock:
    """An exclusive lock on ``<home>/server.lock``, released when the process ends."""

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self, address: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "another process"
            lock_file.close()
            raise Conflict(f"The data directory {self.path.parent} is in use by {holder}; stop that server, or "
                           "give this one its own TUNEDOCK_HOME (--home).", code="home_in_use") from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"the Tunedock server at {address} (pid {os.getpid()})\n")
        lock_file.flush()
        self._file = lock_file
        logger.info("locked the data directory %s", self.path.parent)

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
