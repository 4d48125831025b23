"""Small on-disk caches: keys that hash everything that affects the value, atomic writes.

A file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a reader (another rank, a resumed run, a run killed mid-write) sees either
the old file or the complete new one, never a partial file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Callable, Dict, Optional

import torch

CACHE_VERSION = 1


def cache_key(**parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (order of keyword arguments does not matter)."""
    payload = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def atomic_write(path: str, write: Callable[[Any], None], binary: bool = False) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, data: Dict) -> None:
    atomic_write(path, lambda f: json.dump(data, f, indent=2, ensure_ascii=False))


def read_json(path: str) -> Optional[Dict]:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_tensor(path: str, tensor: torch.Tensor) -> None:
    atomic_write(path, lambda f: torch.save(tensor, f), binary=True)
