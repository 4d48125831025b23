"""Readable names for files and folders made from free text (prompts, variant names)."""

from __future__ import annotations

from typing import Optional


def slug(text: str, limit: Optional[int] = None) -> str:
    """``text`` in lower case, every run of characters other than letters and digits one '_',
    none at either end, cut to ``limit`` characters: "A DSLR photo, of a corgi!" ->
    "a_dslr_photo_of_a_corgi". Not unique: two texts can share a slug (add a hash where the name
    must identify the text)."""
    name = "_".join("".join(c if c.isalnum() else " " for c in text.lower()).split())
    return name[:limit] if limit is not None else name
