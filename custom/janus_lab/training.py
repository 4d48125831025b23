"""Helpers the lab's training loops share (prior, masked language model, judge)."""

from __future__ import annotations

import time
from typing import Callable


def log_every(seconds: float = 30.0, log: Callable[[str], None] = print) -> Callable[[str], None]:
    """A progress logger that passes at most one message per ``seconds`` on to ``log``."""
    last = [0.0]

    def tick(message: str) -> None:
        now = time.time()
        if now - last[0] >= seconds:
            last[0] = now
            log(message)

    return tick
