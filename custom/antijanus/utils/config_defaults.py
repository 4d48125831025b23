"""The class defaults of a registered threestudio module's Config, when threestudio is imported
(looked up, never imported here: the CPU mode reads them before and after its stand-ins)."""

from __future__ import annotations

import sys
from typing import Any, Dict

from omegaconf import OmegaConf


def module_defaults(type_name: Any) -> Dict:
    """A registered module's Config defaults as a plain dict ({} if unknown)."""
    threestudio = sys.modules.get("threestudio")
    if threestudio is None or not isinstance(type_name, str):
        return {}
    try:
        config = threestudio.find(type_name).Config
        return OmegaConf.to_container(OmegaConf.structured(config), resolve=False)
    except Exception:  # not registered, or a Config OmegaConf cannot read
        return {}
