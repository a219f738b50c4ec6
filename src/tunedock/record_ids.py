"""Row ids as they appear in URLs and queries, checked before they reach the store."""

from __future__ import annotations

# Row ids are 32-bit on PostgreSQL; a larger number can name no row.
MAX_ID = 2**31 - 1


def is_record_id(text: str) -> bool:
    """Return whether ``text`` is a decimal id in range (ASCII digits only: '²' is not one)."""
    return text.isascii() and text.isdecimal() and 1 <= int(text) <= MAX_ID
