"""Known harmless third-party warnings of a threestudio run on a CPU, filtered in one place.

Each entry is (category, the start of the message, who raises it). They come from threestudio's
and its dependencies' imports and first steps (deprecations of APIs they call, optional packages
that are absent, registry overwrites) and say nothing about the run. Our own messages and any
other warning still show; ``--verbose`` shows these too.
"""

from __future__ import annotations

import re
import warnings
from typing import Tuple, Type

KNOWN_HARMLESS: Tuple[Tuple[Type[Warning], str, str], ...] = (
    (UserWarning, "pkg_resources is deprecated", "lightning_fabric (lightning 2.0)"),
    (FutureWarning, "`torch.cuda.amp.custom_fwd(args...)` is deprecated", "threestudio/utils/ops.py"),
    (FutureWarning, "`torch.cuda.amp.custom_bwd(args...)` is deprecated", "threestudio/utils/ops.py"),
    (FutureWarning, "`torch.cuda.amp.autocast(args...)` is deprecated", "threestudio's guidances and networks"),
    (UserWarning, "The module 'mediapipe' is not installed", "controlnet_aux"),
    (FutureWarning, "Importing from timm.models.layers is deprecated", "controlnet_aux via timm"),
    (FutureWarning, "Importing from timm.models.registry is deprecated", "controlnet_aux via timm"),
    (UserWarning, "Overwriting tiny_vit_", "controlnet_aux's segment_anything (timm registry)"),
    (UserWarning, "Using torch.cross without specifying the dim arg is deprecated", "threestudio/data/uncond.py"),
    (FutureWarning, "`isinstance(treespec, LeafSpec)` is deprecated", "pytorch_lightning 2.0 with torch >= 2.5"),
    (UserWarning, "Total length of `CombinedLoader` across ranks is zero", "lightning: threestudio's empty loaders"),
)


def filter_known_warnings() -> None:
    """Ignore the KNOWN_HARMLESS warnings in this process (ranks started later do the same)."""
    for category, start, _ in KNOWN_HARMLESS:
        warnings.filterwarnings("ignore", message=_escaped(start), category=category)


def _escaped(start: str) -> str:
    """A message prefix as the regular expression ``filterwarnings`` expects."""
    return re.escape(start)
