"""The run folder's tag made from the prompt: always a valid file name, readable, unique per prompt.

threestudio's configs set ``tag: ${rmspace:${system.prompt_processor.prompt},_}``, and the trial
folder is ``<exp_root_dir>/<name>/<tag>@<timestamp>``: a prompt of a few hundred characters
makes a folder name longer than the file system's 255 bytes (``OSError: File name too long``),
a '/' in the prompt makes sub-folders, and an empty ``prompt=`` fails inside the resolver
(``AttributeError`` on None). The shipped configs use ``${antijanus_tag:...}`` instead:

- a prompt whose threestudio tag (spaces -> '_') is a safe name of at most ``MAX_TAG_BYTES``
  keeps exactly that tag (the same folders as threestudio's configs);
- any other prompt gets its slug (lower case, runs of other characters -> '_') cut to
  ``SLUG_BYTES`` and '-' + the first 8 hex digits of the SHA-256 of the whole prompt, so two
  long prompts that share their beginning still get different folders;
- no prompt (``prompt=`` gives None, or only spaces) is a ConfigError naming
  ``system.prompt_processor.prompt``, before anything loads.

``register_tag_resolver`` registers the resolver with OmegaConf (idempotent); the adapters
register it when the plugin is imported, so it is there before threestudio's launcher reads the
config.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

from omegaconf import OmegaConf

from ..utils.errors import ConfigError
from ..utils.naming import slug

RESOLVER = "antijanus_tag"
PROMPT_KEY = "system.prompt_processor.prompt"
# threestudio appends "@YYYYMMDD-HHMMSS" (16 bytes); 255 bytes is the usual limit of one name
MAX_TAG_BYTES = 100
SLUG_BYTES = MAX_TAG_BYTES - 9  # '-' and 8 hex digits
UNSAFE = frozenset('/\\\0')


def threestudio_tag(prompt: str) -> str:
    """threestudio's ``rmspace`` tag: the prompt with every space replaced by '_'."""
    return prompt.replace(" ", "_")


def is_safe_name(name: str) -> bool:
    """A single file-name component of at most MAX_TAG_BYTES bytes: no separator, NUL or
    control character, not '.' or '..'."""
    return (0 < len(name.encode("utf-8")) <= MAX_TAG_BYTES and name not in (".", "..")
            and not any(c in UNSAFE or ord(c) < 32 for c in name))


def cut_to_bytes(text: str, limit: int) -> str:
    """The longest prefix of ``text`` of at most ``limit`` UTF-8 bytes (never half a character)."""
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def prompt_tag(prompt: Any) -> str:
    """The trial folder's tag for ``prompt`` (module docstring)."""
    if prompt is None or not str(prompt).strip():
        raise ConfigError(PROMPT_KEY, prompt, "is empty: give the prompt, e.g. "
                          "system.prompt_processor.prompt=\"a DSLR photo of a corgi\"")
    text = str(prompt)
    tag = threestudio_tag(text)
    if is_safe_name(tag):
        return tag
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    readable = cut_to_bytes(slug(text), SLUG_BYTES).strip("_") or "prompt"
    return f"{readable}-{digest}"


def register_tag_resolver() -> None:
    """``${antijanus_tag:...}`` in configs (idempotent)."""
    if not OmegaConf.has_resolver(RESOLVER):
        with warnings.catch_warnings():  # omegaconf >= 2.4 deprecates the name, 2.3 (threestudio's) has no other
            warnings.simplefilter("ignore")
            OmegaConf.register_new_resolver(RESOLVER, prompt_tag)
