"""antijanus: fight the Janus problem in score-distillation text-to-3D (a threestudio plugin).

Parts, imports flowing one way (each only imports those above it):

    utils/       errors (ConfigError), atomic cache files, images, progress bars, model loading, names
    testing/     tiny random-weight model folders in the real layouts
    backbones/   Stable Diffusion and DeepFloyd IF behind one small interface, their noise schedules
    core/        the guidance maths (Perp-Neg, views, SDS, SJC, D-SDS clipping) and the guidance path
    prompting/   BERT-PMI prompt debiasing, diffusion-negative sampling / prompting, captioning
    adapters/    the registered threestudio modules (the only part importing threestudio at module level)
    tools/       research tools: metrics, 2D view experiment, ablation sweeps
    cpu/         threestudio on a CPU (stand-ins, kernels, overrides, model folders, runner; imports
                 threestudio and registers the adapters inside functions only)

The Janus lab is a package of its own beside this one (``janus_lab``): it imports antijanus,
antijanus never imports it.

Everything but ``adapters`` and ``cpu`` is pure PyTorch + diffusers/transformers and never
imports threestudio. The adapters are imported here (``register_threestudio_modules``, which
imports threestudio inside the function) when threestudio is already imported, which is the
case when threestudio's launcher loads this package from ``custom/``. Elsewhere call
``register_threestudio_modules()`` after importing threestudio.
"""

import sys as _sys

from packaging.version import InvalidVersion, Version

from .utils.errors import ConfigError  # noqa: F401

__version__ = "0.3.0"

#: the oldest threestudio whose interfaces the adapters use (tested: commit 28d9d80, 0.2.3)
MIN_THREESTUDIO_VERSION = "0.2.3"


def check_threestudio_version(threestudio) -> None:
    """A clear error for a threestudio older than the interfaces we use, as extensions do."""
    version = getattr(threestudio, "__version__", None)
    try:
        too_old = version is None or Version(version) < Version(MIN_THREESTUDIO_VERSION)
    except InvalidVersion:
        too_old = True
    if too_old:
        raise ImportError(f"antijanus needs threestudio >= {MIN_THREESTUDIO_VERSION} (tested with "
                          f"commit 28d9d80), found {version or 'a version without __version__'}: "
                          "update threestudio (git pull)")


def register_threestudio_modules():
    """Register antijanus's modules with threestudio (idempotent); returns the adapters package."""
    import threestudio  # threestudio: only when registering

    check_threestudio_version(threestudio)
    from . import adapters  # imports threestudio at module level

    adapters.model_keys.check_launch_command(_sys.argv)  # launch.py --train: every model loadable?
    return adapters


if _sys.modules.get("threestudio") is not None:
    register_threestudio_modules()
