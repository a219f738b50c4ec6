"""The shared secret that model servers require, so that only the gateway can call them.

It lives in a file in the data directory (mode 0600), so a restarted server can still
call the replicas it adopts.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

logger = logging.getLogger(__name__)

TOKEN_FILE = "replica.token"


def load_or_create_replica_token(home: Path) -> str:
    path = home / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as token_file:
        token_file.write(token + "\n")
    logger.info("created the replica token file %s", path)
    return token
