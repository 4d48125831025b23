"""Where the committed lab models live, and their checksums.

The trained folders are committed inside the package, ``janus_lab/models/{prior,mlm,judge}``
(``locations.lab_root``; ``JANUS_LAB_MODELS`` points elsewhere).
``checksums.json`` beside them records the SHA-256 of every file; ``verify_checksums`` tells
which files differ.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List

from .locations import lab_root

CHECKSUMS = "checksums.json"
MODELS = ("prior", "mlm", "judge")
# earlier models kept beside the current ones, for the figures made with them (README), and
# candidates (judge-v9 ... judge-v12); judge-v8 is also the DNP captioner's judge: in the checksums where present, never loaded by default
ARCHIVED_MODELS = ("judge-v5", "judge-v6", "judge-v8", "judge-v9", "judge-v10", "judge-v11", "judge-v12", "judge-v13", "mlm-v1", "prior-v3", "prior-v4")


def model_path(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"unknown lab model {name!r}; one of {MODELS}")
    return os.path.join(lab_root(), name)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_checksums(folder: str) -> Dict[str, str]:
    """SHA-256 of every file under ``folder``, by path relative to it ('/'-separated), sorted."""
    sums = {}
    for parent, _, files in os.walk(folder):
        for file in files:
            path = os.path.join(parent, file)
            sums[os.path.relpath(path, folder).replace(os.sep, "/")] = sha256(path)
    return dict(sorted(sums.items()))


def file_checksums(root: str) -> Dict[str, str]:
    """SHA-256 of every file under the model folders, by path relative to ``root``."""
    names = MODELS + tuple(a for a in ARCHIVED_MODELS if os.path.isdir(os.path.join(root, a)))
    return dict(sorted((f"{name}/{path}", digest) for name in names
                       for path, digest in folder_checksums(os.path.join(root, name)).items()))


def folder_fingerprint(folder: str) -> str:
    """One SHA-256 over every file of a model folder (names and contents): results computed with
    a model are tied to its weights, not to its path."""
    digest = hashlib.sha256()
    for path, file_digest in folder_checksums(folder).items():
        digest.update(path.encode() + b"\0" + file_digest.encode())
    return digest.hexdigest()


def write_checksums(root: str) -> str:
    path = os.path.join(root, CHECKSUMS)
    with open(path, "w") as f:
        json.dump(file_checksums(root), f, indent=2)
        f.write("\n")
    return path


def verify_checksums(root: str) -> List[str]:
    """Files whose checksum differs from checksums.json, or that are missing or extra."""
    with open(os.path.join(root, CHECKSUMS)) as f:
        recorded = json.load(f)
    actual = file_checksums(root)
    return sorted(k for k in set(recorded) | set(actual) if recorded.get(k) != actual.get(k))
