"""Making ``import threestudio`` work on a CPU-only machine.

threestudio imports ``tinycudann`` and ``nvdiffrast`` at module level although a CPU run with
pure-PyTorch encodings never calls them, and torchmetrics imports torchvision, whose PyPI wheel
(a CUDA build) cannot load its C extension next to a CPU torch. Both are dealt with here without
changing any installed file: import-only stand-ins (``standins/``, put at the END of sys.path so
that real packages always win) and torchvision's op schemas declared by hand.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

STANDINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standins")


def install_standins() -> None:
    """Import-only stand-ins for tinycudann / nvdiffrast where the real ones are missing."""
    missing = [m for m in ("tinycudann", "nvdiffrast") if importlib.util.find_spec(m) is None]
    if missing and STANDINS not in sys.path:
        sys.path.append(STANDINS)


def declare_torchvision_op_schemas() -> None:
    """A torchvision wheel built for another torch (PyPI's CUDA wheel next to a CPU torch) fails
    to load its C extension and then cannot even be imported (it registers fake kernels for
    ``torchvision::nms``). Declaring the two op schemas lets ``import torchvision`` succeed;
    its pure-PyTorch parts (transforms) work, its C ops (nms, roi_align, ...) stay unavailable."""
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401  (optional: torchvision, probed)
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        declare_torchvision_op_schemas._keep = library  # the schemas live as long as the library object


def prepare_threestudio_import() -> None:
    """Call before ``import threestudio`` in your own script on a CPU-only machine."""
    install_standins()
    declare_torchvision_op_schemas()
