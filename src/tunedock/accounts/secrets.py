"""Generation, hashing and checking of passwords and API key secrets."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

API_KEY_MARK = "tdk"
PERSONAL_TOKEN_MARK = "tdp"
# Characters of a key that are stored in clear to find its row; the rest is secret.
PREFIX_LENGTH = 12
MIN_PASSWORD_LENGTH = 8
MIN_KEY_LENGTH = 20

_password_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _password_hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _password_hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def generate_key(mark: str) -> str:
    return f"{mark}_{secrets.token_urlsafe(32)}"


def key_prefix(key: str) -> str:
    return key[:PREFIX_LENGTH]


def hash_key(key: str) -> str:
    # Keys are 256-bit random strings, so a fast hash is safe here, unlike for passwords.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_matches(stored_hash: str, key: str) -> bool:
    return hmac.compare_digest(stored_hash, hash_key(key))
