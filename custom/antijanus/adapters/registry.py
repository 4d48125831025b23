"""Registration with threestudio and config conversion, shared by the adapters."""

from __future__ import annotations

import functools
import inspect
from dataclasses import fields
from typing import Any, Callable, Dict, Optional, Type, TypeVar

import threestudio
from omegaconf import OmegaConf

from ..utils.errors import ConfigError

T = TypeVar("T")


def register(name: str):
    """``threestudio.register`` that tolerates this plugin being imported twice (e.g. once as
    an installed package and once by the launcher from ``custom/``): threestudio itself raises
    on a second registration of a name."""

    def decorator(cls):
        existing = threestudio.__modules__.get(name)
        if existing is not None and existing.__qualname__ == cls.__qualname__ and getattr(
            existing, "_antijanus_module", None
        ) == name:
            return existing
        cls._antijanus_module = name
        _name_full_keys(cls, config_block(name))
        return threestudio.register(name)(cls)

    return decorator


def config_block(name: str) -> str:
    """Where a module of this registered name sits in a run's config."""
    return "system.guidance" if name.endswith("-guidance") else "system.prompt_processor"


def _name_full_keys(cls, block: str) -> None:
    """ConfigErrors raised while the module is configured name the key's full path
    (``system.guidance.clip_start``), so that a user knows which block of the config it means."""
    original = getattr(cls, "configure", None)
    if original is None or getattr(original, "_antijanus_block", None):
        return

    @functools.wraps(original)
    def configure(self, *args, **kwargs):
        try:
            return original(self, *args, **kwargs)
        except ConfigError as error:
            raise error.within(block) from None

    configure._antijanus_block = block
    cls.configure = configure


def core_config(core_type: Type[T], cfg: Any) -> T:
    """The threestudio (OmegaConf) config of a module as the core's plain dataclass."""
    container: Dict[str, Any] = OmegaConf.to_container(OmegaConf.create(dict(cfg)), resolve=True)
    names = {f.name for f in fields(core_type)}
    return core_type(**{k: v for k, v in container.items() if k in names})


def calling_system(is_system: Callable[[Any], bool], depth: Optional[int] = None) -> Optional[Any]:
    """The nearest object up the call stack (a frame's ``self``, from the caller of this function
    up, at most ``depth`` frames; None: the whole stack) for which ``is_system`` holds, else None.

    threestudio gives a module only its own config block; what else a module needs of the run
    (the trainer's ``max_steps``, the trial folder) belongs to the threestudio system, a
    LightningModule that creates the module and calls it, so it is on the call stack."""
    frame = inspect.currentframe()
    try:
        frame = frame.f_back if frame is not None else None  # from the caller up
        looked = 0
        while frame is not None and (depth is None or looked < depth):
            owner = frame.f_locals.get("self")
            if owner is not None and is_system(owner):
                return owner
            frame = frame.f_back
            looked += 1
        return None
    finally:
        del frame
