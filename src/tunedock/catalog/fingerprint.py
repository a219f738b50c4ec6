"""Content hashes of model directories, so that a deployment records exactly what it ran.

Hashing gigabytes of weights takes seconds to minutes, so results are cached per
directory and reused while no file's size or modification time has changed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

CHUNK_BYTES = 4 * 1024 * 1024
HASH_PREFIX = "sha256:"

Listing = tuple[tuple[str, int, int], ...]

_cache: dict[Path, tuple[Listing, str]] = {}
_cache_lock = threading.Lock()


def _listing(directory: Path) -> Listing:
    entries = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            status = path.stat()
            entries.append((path.relative_to(directory).as_posix(), status.st_size, status.st_mtime_ns))
    return tuple(entries)


def directory_hash(directory: str | Path) -> str:
    """Return ``sha256:<hex>`` over every file's relative path and bytes, in sorted order."""
    root = Path(directory).resolve()
    listing = _listing(root)
    with _cache_lock:
        cached = _cache.get(root)
    if cached is not None and cached[0] == listing:
        return cached[1]
    digest = hashlib.sha256()
    for relative, size, _ in listing:
        digest.update(f"{relative}\0{size}\0".encode())
        with (root / relative).open("rb") as model_file:
            while chunk := model_file.read(CHUNK_BYTES):
                digest.update(chunk)
    result = HASH_PREFIX + digest.hexdigest()
    with _cache_lock:
        _cache[root] = (listing, result)
    logger.info("hashed %d files of %s: %s", len(listing), root, result)
    return result
