"""The byte-level alphabet of CLIP's BPE tokenizer (one implementation: the tiny test folders
and the Janus lab's real CLIP tokenizer both use it)."""

from __future__ import annotations

from typing import Dict


def bytes_to_unicode() -> Dict[int, str]:
    """The byte-level alphabet of GPT-2 / CLIP BPE: printable bytes map to themselves, the rest
    to code points from 256 on."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))
