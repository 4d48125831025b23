"""Registration with threestudio and config conversion, shared by the adapters."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Dict, Type, TypeVar

import threestudio
from omegaconf import OmegaConf

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
        return threestudio.register(name)(cls)

    return decorator


def core_config(core_type: Type[T], cfg: Any) -> T:
    """The threestudio (OmegaConf) config of a module as the core's plain dataclass."""
    container: Dict[str, Any] = OmegaConf.to_container(OmegaConf.create(dict(cfg)), resolve=True)
    names = {f.name for f in fields(core_type)}
    return core_type(**{k: v for k, v in container.items() if k in names})
