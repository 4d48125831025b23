"""Small on-disk caches: keys that hash everything that affects the value, atomic writes.

A file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a reader (another rank, a resumed run, a run killed mid-write) sees either
the old file or the complete new one, never a partial file. Written files get the mode an
ordinary ``open()`` gives under the current umask (0644 under the usual 022), as threestudio's
own cache files. A run killed mid-write leaves its temporary file (``.tmp-antijanus-...``)
behind; a later write into that folder removes it once it is an hour old (see
``remove_stale_temporaries``; no other file is touched). A cache file that cannot
be read (truncated, garbage, another format) is a cache miss with one warning naming the file,
so the value is computed again and the file rewritten; so is a file that reads but does not hold
what its reader expects (``invalid_content``: a key missing, a tensor of another shape).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from safetensors.torch import save

CACHE_VERSION = 1
# Temporary files of atomic writes: "<prefix><random>-<target name>" in the target's folder.
TEMP_PREFIX = ".tmp-antijanus-"
# A temporary file untouched for this long is a killed writer's: atomic writes here take seconds
# (JSON, embeddings, a PNG), and a writer that is alive keeps its file's mtime fresh.
STALE_TEMP_AGE_S = 3600.0

logger = logging.getLogger(__name__)


def cache_key(**parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (order of keyword arguments does not matter)."""
    payload = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder: str, max_age_s: float = STALE_TEMP_AGE_S) -> List[str]:
    """Remove the temporary files killed writers left in ``folder``: only this module's names
    (``TEMP_PREFIX``), only those untouched for ``max_age_s`` (a live writer's file is fresh).
    Other files, other tools' temporary files included, are never touched. Returns the paths
    removed."""
    removed = []
    try:
        names = [name for name in os.listdir(folder) if name.startswith(TEMP_PREFIX)]
    except OSError:
        return removed
    now = time.time()
    for name in names:
        path = os.path.join(folder, name)
        try:
            if os.path.isfile(path) and now - os.path.getmtime(path) >= max_age_s:
                os.remove(path)
                removed.append(path)
        except OSError:  # gone already (another process cleaned it), or not ours to remove
            continue
    return removed


def atomic_write(path: str, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write ``path`` through ``write(file)`` atomically, with the umask's mode; stale temporary
    files of killed writers in the folder are removed first."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix="-" + os.path.basename(path))
    try:
        _chmod(fd, tmp, 0o666 & ~current_umask())  # mkstemp creates 0600
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_safetensors(tensors: Dict[str, torch.Tensor], path: str, metadata: Optional[Dict[str, str]] = None) -> None:
    """``safetensors.torch.save_file`` written atomically and with the umask's mode (save_file
    itself creates the file 0600: another user of a shared model folder could not read it)."""
    data = save(tensors, metadata=metadata)
    atomic_write(path, lambda f: f.write(data), binary=True)


def _chmod(fd: int, path: str, mode: int) -> None:
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:  # Windows
        os.chmod(path, mode)


def _unreadable(path: str, error: BaseException) -> None:
    text = str(error).strip().splitlines()
    reason = f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__
    logger.warning("antijanus: cache file %s is unreadable (%s); computing it again", path, reason)


def write_json(path: str, data: Dict) -> None:
    atomic_write(path, lambda f: json.dump(data, f, indent=2, ensure_ascii=False))


def read_json(path: str) -> Optional[Dict]:
    """The JSON object in ``path``; None when there is no file, or (with one warning naming the
    file) when it cannot be read as a JSON object: the caller computes the value again."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        _unreadable(path, error)
        return None
    if not isinstance(data, dict):
        _unreadable(path, ValueError(f"a JSON {type(data).__name__}, not an object"))
        return None
    return data


def save_tensor(path: str, tensor: torch.Tensor) -> None:
    atomic_write(path, lambda f: torch.save(tensor, f), binary=True)


def load_torch(path: str, is_valid: Callable[[Any], bool], description: str, map_location=None) -> Any:
    """The object ``torch.save`` wrote to ``path``; None when there is no file, or (with one warning
    naming the file) when it cannot be loaded or ``is_valid`` rejects it (``description`` says what
    was expected). An unreadable file is also removed, so that code which only checks whether the
    file exists (threestudio's prompt processors) computes it again."""
    if not os.path.exists(path):
        return None
    try:
        value = torch.load(path, map_location=map_location)
    except Exception as error:  # torch.load raises many kinds: RuntimeError, EOFError, UnpicklingError...
        _unreadable(path, error)
        _remove_quietly(path)
        return None
    if not is_valid(value):
        _unreadable(path, ValueError(f"holds a {type(value).__name__}, not {description}"))
        _remove_quietly(path)
        return None
    return value


def load_tensor(path: str, map_location=None) -> Optional[torch.Tensor]:
    """The tensor in ``path`` (``load_torch``)."""
    return load_torch(path, lambda value: isinstance(value, torch.Tensor), "a tensor", map_location)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def invalid_content(path: str, problem: str) -> None:
    """One warning naming a cache file that reads but does not hold what it should (a key
    missing, a tensor of another shape, another model's result): the caller computes it again."""
    logger.warning("antijanus: cache file %s is not valid (%s); computing it again", path, problem)


def load_torch_checked(path: str, problem: Callable[[Any], Optional[str]], map_location=None) -> Any:
    """``load_torch`` with a check that says what is wrong: ``problem(value)`` is None for a
    valid value, else the reason, in the one warning naming the file (which is then removed, so
    that threestudio's existence check computes it again too)."""
    value = load_torch(path, lambda _: True, "anything", map_location)
    if value is None:
        return None
    reason = problem(value)
    if reason is not None:
        invalid_content(path, reason)
        _remove_quietly(path)
        return None
    return value


def tensor_problem(value: Any, shape: Sequence[Optional[int]]) -> Optional[str]:
    """Why ``value`` is not a finite tensor of ``shape`` (None in ``shape``: any size), or None."""
    if not isinstance(value, torch.Tensor):
        return f"holds a {type(value).__name__}, not a tensor"
    expected = "(" + ", ".join("*" if n is None else str(n) for n in shape) + ")"
    if value.dim() != len(shape) or any(n is not None and n != m for n, m in zip(shape, value.shape)):
        return f"holds a tensor of shape {tuple(value.shape)}, not {expected}"
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        return "holds a tensor with inf or nan values"
    return None


def load_tensor_of_shape(path: str, shape: Sequence[Optional[int]], map_location=None) -> Optional[torch.Tensor]:
    """The finite tensor of ``shape`` in ``path``; anything else is a cache miss with one warning
    naming the file (``load_torch_checked``)."""
    return load_torch_checked(path, lambda value: tensor_problem(value, shape), map_location)
