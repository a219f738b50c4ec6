"""URL slugs for model names: the ``{model}`` part of API routes and endpoints."""

from __future__ import annotations

import re
import unicodedata

from tunedock.errors import InvalidInput

_NON_SLUG_CHARACTERS = re.compile(r"[^a-z0-9]+")


def slugify(name: str) -> str:
    """Build a slug of lowercase ASCII letters, digits and single hyphens from a name.

    Accents are dropped ("Café" -> "cafe"), other non-ASCII characters are removed, and
    every run of other characters becomes one hyphen, so "Date Normalizer GPT-2" ->
    "date-normalizer-gpt-2". Raises InvalidInput when no letter or digit remains.
    """
    decomposed = unicodedata.normalize("NFKD", name)
    ascii_name = decomposed.encode("ascii", "ignore").decode("ascii")
    slug = _NON_SLUG_CHARACTERS.sub("-", ascii_name.lower()).strip("-")
    if not slug:
        raise InvalidInput(
            f"Model name {name!r} contains no Latin letter or digit to build a URL slug from. "
            "Choose a name with at least one letter a-z or digit 0-9.",
            param="name",
        )
    return slug
