"""A cross-process lock on a file, so that two deploys never write the same cache folder."""

from __future__ import annotations

import fcntl
from pathlib import Path


class locked:
    """An exclusive lock on ``path``, held across processes with flock."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __enter__(self) -> None:
        self._file = self._path.open("w")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc_info: object) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
