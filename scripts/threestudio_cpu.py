#!/usr/bin/env python
"""Run threestudio's own, unchanged ``launch.py`` on a CPU-only machine.

For integration tests and quick checks without a GPU. Run it from the working folder the
launcher should use (it must contain ``custom/`` with antijanus linked in); threestudio must be
importable (PYTHONPATH) and ``--launch`` names its launch.py (default: next to the package).

    python $ANTIJANUS/scripts/threestudio_cpu.py --config configs/x.yaml --train [overrides...]

What it changes, at run time only (threestudio's files are not touched):
- ``Trainer(accelerator="gpu", devices=-1)`` in launch.py -> CPU, one device;
- ``threestudio.utils.misc.get_device()`` (always cuda:<rank>) -> cpu, in every module that
  imported it;
- nerfacc 0.5's CUDA-only kernels on the ``importance`` estimator path -> pure PyTorch:
  ``pack_info`` and the packed ``exclusive_sum`` used by ``render_weight_from_density``, and
  ``importance_sampling`` used by threestudio's ``ImportanceEstimator`` (dense rays only);
- missing ``tinycudann`` / ``nvdiffrast`` -> import-only stand-ins (scripts/cpu_standins);
- a torchvision wheel whose C extension cannot load -> its op schemas are declared so that
  ``import torchvision`` (pulled in by torchmetrics) succeeds.
The configs still need CPU-capable overrides: pure-PyTorch encodings (no hash grid),
``system.renderer.estimator=importance`` with near/far planes, ``trainer.precision=32``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

#: Overrides that make the shipped NeRF configs CPU-capable: pure-PyTorch encodings instead of
#: tiny-cuda-nn, nerfacc's importance estimator with near/far planes (threestudio's occupancy grid
#: needs CUDA; without near/far planes all losses are NaN), small renders, fp32.
CPU_OVERRIDES = [
    "trainer.precision=32", "data.width=32", "data.height=32", "data.eval_width=32",
    "data.eval_height=32", "data.n_test_views=2",
    "system.geometry.pos_encoding_config.otype=ProgressiveBandFrequency",
    "system.geometry.pos_encoding_config.n_frequencies=4",
    "system.background.dir_encoding_config.otype=ProgressiveBandFrequency",
    "system.background.dir_encoding_config.n_frequencies=2",
    "system.renderer.estimator=importance", "system.renderer.num_samples_per_ray=16",
    "system.renderer.near_plane=0.1", "system.renderer.far_plane=4.0",
    "system.prompt_processor.spawn=false", "system.guidance.half_precision_weights=false",
]


def install_standins() -> None:
    if importlib.util.find_spec("tinycudann") is None or importlib.util.find_spec("nvdiffrast") is None:
        sys.path.append(os.path.join(HERE, "cpu_standins"))
    declare_torchvision_op_schemas()


def declare_torchvision_op_schemas() -> None:
    """A torchvision wheel built for another torch (PyPI's CUDA wheel next to a CPU torch) fails
    to load its C extension and then cannot even be imported (it registers fake kernels for
    ``torchvision::nms``). Declaring the two op schemas lets ``import torchvision`` succeed;
    its pure-PyTorch parts (transforms) work, its C ops (nms, roi_align, ...) stay unavailable."""
    if importlib.util.find_spec("torchvision") is None:
        return
    import torch

    try:
        import torchvision  # noqa: F401
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        declare_torchvision_op_schemas._keep = library  # the schemas live as long as the library object


def pack_info(ray_indices, n_rays=None):
    import torch

    if n_rays is None:
        n_rays = int(ray_indices.max()) + 1
    counts = torch.zeros(n_rays, dtype=ray_indices.dtype, device=ray_indices.device)
    counts.index_add_(0, ray_indices, torch.ones_like(ray_indices))
    return torch.stack([counts.cumsum(0) - counts, counts], dim=-1)


def exclusive_sum(inputs, packed_info=None):
    """nerfacc.scan.exclusive_sum, pure PyTorch (packed rays must be contiguous, as nerfacc's)."""
    import torch

    if packed_info is None:
        return torch.cumsum(torch.cat([torch.zeros_like(inputs[..., :1]), inputs[..., :-1]], -1), -1)
    starts, counts = packed_info.unbind(-1)
    inclusive = torch.cumsum(inputs, 0)
    ray = torch.repeat_interleave(torch.arange(len(starts), device=inputs.device), counts)
    before = torch.where(starts > 0, inclusive[(starts - 1).clamp_min(0)], torch.zeros_like(starts, dtype=inputs.dtype))
    return inclusive - inputs - before[ray]


def importance_sampling(intervals, cdfs, n_intervals_per_ray, stratified=False):
    """nerfacc.pdf.importance_sampling for dense rays ([n_rays, M+1] edges, int count), by
    piecewise-linear inversion of the CDF; returns (RayIntervals, RaySamples)."""
    import torch
    from nerfacc.data_specs import RayIntervals, RaySamples

    if not isinstance(n_intervals_per_ray, int) or intervals.vals.dim() != 2:
        raise NotImplementedError("CPU importance_sampling supports dense rays only")
    vals, n = intervals.vals, n_intervals_per_ray
    steps = torch.arange(n + 1, device=vals.device, dtype=vals.dtype).expand(vals.shape[0], n + 1)
    # edges at i/n, or jittered within their strata: (i + U[0, 1)) / (n + 1), still increasing
    u = (steps + torch.rand_like(steps)) / (n + 1) if stratified else steps / n
    low, high = cdfs[:, :1], cdfs[:, -1:]
    u = low + u * (high - low)
    index = torch.searchsorted(cdfs.contiguous(), u.contiguous(), right=True).clamp(1, cdfs.shape[1] - 1)
    c0, c1 = cdfs.gather(1, index - 1), cdfs.gather(1, index)
    v0, v1 = vals.gather(1, index - 1), vals.gather(1, index)
    t = torch.where(c1 > c0, (u - c0) / (c1 - c0).clamp_min(1e-10), torch.zeros_like(u))
    edges = v0 + t.clamp(0, 1) * (v1 - v0)
    return RayIntervals(vals=edges), RaySamples(vals=(edges[:, 1:] + edges[:, :-1]) / 2)


def patch_threestudio() -> None:
    import nerfacc.volrend
    import pytorch_lightning
    import torch

    import threestudio  # noqa: F401  (imports every threestudio module)
    import threestudio.models.estimators as estimators

    cpu = lambda: torch.device("cpu")  # noqa: E731
    for name, module in list(sys.modules.items()):
        if name.startswith("threestudio") and hasattr(module, "get_device"):
            module.get_device = cpu
    nerfacc.volrend.pack_info = pack_info
    nerfacc.volrend.exclusive_sum = exclusive_sum
    estimators.importance_sampling = importance_sampling

    original_init = pytorch_lightning.Trainer.__init__

    def cpu_trainer(self, *args, **kwargs):
        kwargs.update(accelerator="cpu", devices=1)
        original_init(self, *args, **kwargs)

    pytorch_lightning.Trainer.__init__ = cpu_trainer


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--launch", help="threestudio's launch.py (default: beside the package)")
    known, rest = parser.parse_known_args()
    install_standins()
    patch_threestudio()
    import threestudio

    launch = known.launch or os.path.join(os.path.dirname(os.path.dirname(threestudio.__file__)), "launch.py")
    sys.argv = [launch] + rest
    runpy.run_path(launch, run_name="__main__")


if __name__ == "__main__":
    main()
