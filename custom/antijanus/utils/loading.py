"""Loading models by hub id or folder, with configuration errors a user can act on.

``from_pretrained`` failures surface as OSErrors whose text suggests a missing file, whatever the
real cause. Every place that loads a model goes through ``load_pretrained``, which turns them into
a ``ConfigError`` naming the key, the value and the likely cause: no network / offline hub for a
hub id, or a folder of the wrong kind (a BERT folder given as Stable Diffusion).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def looks_local(name_or_path: str) -> bool:
    """A filesystem path (absolute, ./, ../, ~) rather than a hub id or a name."""
    return name_or_path.startswith(("/", "./", "../", "~")) or os.path.isabs(name_or_path)


def is_local_folder(name_or_path: str) -> bool:
    return os.path.isdir(os.path.expanduser(name_or_path))


def check_model_path(key: str, name_or_path: str) -> None:
    """A clear config-time error for a local model folder that does not exist.

    Hub ids ("org/name") are passed on to ``from_pretrained``; a value that looks like a
    filesystem path (absolute, ./, ../, ~) must exist.
    """
    if not name_or_path:
        raise ConfigError(key, name_or_path, "must name a model folder or a hub id")
    if looks_local(name_or_path) and not is_local_folder(name_or_path):
        raise ConfigError(key, name_or_path, "model folder does not exist")


def require_layout(key: str, folder: str, what: str, entries: Sequence[str]) -> None:
    """A local folder must hold ``entries`` (files or subfolders) to be a ``what`` folder."""
    if not is_local_folder(folder):
        return
    root = os.path.expanduser(folder)
    missing = [e for e in entries if not os.path.exists(os.path.join(root, e))]
    if missing:
        present = sorted(os.listdir(root))[:8]
        raise ConfigError(key, folder, f"is not a {what} folder: missing {', '.join(missing)} "
                          f"(it holds {present})")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def load_pretrained(key: str, name_or_path: str, what: str, load: Callable[[], T]) -> T:
    """Run ``load()`` (a ``from_pretrained`` call on ``name_or_path``); a failure becomes a
    ConfigError for ``key`` that says what was expected and the likely cause."""
    try:
        return load()
    except ConfigError:  # already names its key (e.g. a check inside the loader)
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:  # hub errors subclass OSError/ValueError
        if is_local_folder(name_or_path):
            cause = (f"could not be loaded as a {what} from this folder (a folder of another kind, "
                     f"or incomplete?): {_first_line(error)}")
        elif looks_local(name_or_path):
            cause = "model folder does not exist"
        else:
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
            cause = (f"could not be loaded as a {what} from the model hub{offline}: no network, "
                     f"an unknown id, or a gated model? Download it and give the folder path. "
                     f"({_first_line(error)})")
        raise ConfigError(key, name_or_path, cause) from error
