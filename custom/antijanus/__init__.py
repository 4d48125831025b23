"""antijanus: fight the Janus problem in score-distillation text-to-3D (a threestudio plugin).

Parts, imports flowing one way (each only imports those above it):

    utils/       errors (ConfigError), atomic cache files, images, progress bars
    core/        the guidance maths: Perp-Neg, views, SDS, SJC, D-SDS clipping, the guidance path
    backbones/   Stable Diffusion and DeepFloyd IF behind one small interface
    prompting/   BERT-PMI prompt debiasing, diffusion-negative sampling / prompting, captioning
    adapters/    the registered threestudio modules (the only part that imports threestudio)
    tools/       research tools: metrics, 2D view experiment, ablation sweeps
    testing/     tiny random-weight model folders in the real layouts
    lab/         the Janus lab: a small world where the Janus problem is measured

Everything but ``adapters`` is pure PyTorch + diffusers/transformers and never imports
threestudio. The adapters are imported here when threestudio is already imported, which is the
case when threestudio's launcher loads this package from ``custom/``. Elsewhere call
``register_threestudio_modules()`` after importing threestudio.
"""

import sys as _sys

from .utils.errors import ConfigError  # noqa: F401

__version__ = "0.2.0"


def register_threestudio_modules():
    """Register antijanus's modules with threestudio (idempotent); returns the adapters package."""
    from . import adapters

    return adapters


if _sys.modules.get("threestudio") is not None:
    register_threestudio_modules()
