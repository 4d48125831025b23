"""Pure-PyTorch versions of the nerfacc 0.5 CUDA kernels on threestudio's ``importance``
estimator path (the occupancy grid itself needs CUDA and is replaced by that estimator)."""

from __future__ import annotations

import torch


def pack_info(ray_indices, n_rays=None):
    """nerfacc.pack_info: [n_rays, 2] (start, count) of each ray's samples."""
    if n_rays is None:
        n_rays = int(ray_indices.max()) + 1
    counts = torch.zeros(n_rays, dtype=ray_indices.dtype, device=ray_indices.device)
    counts.index_add_(0, ray_indices, torch.ones_like(ray_indices))
    return torch.stack([counts.cumsum(0) - counts, counts], dim=-1)


def exclusive_sum(inputs, packed_info=None):
    """nerfacc.scan.exclusive_sum (packed rays must be contiguous, as nerfacc's)."""
    if packed_info is None:
        return torch.cumsum(torch.cat([torch.zeros_like(inputs[..., :1]), inputs[..., :-1]], -1), -1)
    starts, counts = packed_info.unbind(-1)
    inclusive = torch.cumsum(inputs, 0)
    ray = torch.repeat_interleave(torch.arange(len(starts), device=inputs.device), counts)
    before = torch.where(starts > 0, inclusive[(starts - 1).clamp_min(0)],
                         torch.zeros_like(starts, dtype=inputs.dtype))
    return inclusive - inputs - before[ray]


def exclusive_prod(inputs, packed_info=None):
    """nerfacc.scan.exclusive_prod (transmittance from alphas on the NeuS/VolSDF path): rays padded
    with ones to a [n_rays, longest + 1] grid, shifted by one, cumprod along each ray."""
    if packed_info is None:
        return torch.cumprod(torch.cat([torch.ones_like(inputs[..., :1]), inputs[..., :-1]], -1), -1)
    starts, counts = packed_info.unbind(-1)
    ray = torch.repeat_interleave(torch.arange(len(starts), device=inputs.device), counts)
    position = torch.arange(len(inputs), device=inputs.device) - starts[ray]
    padded = inputs.new_ones(len(starts), int(counts.max()) + 1 if len(starts) else 1)
    padded = padded.index_put((ray, position + 1), inputs)  # out of place: differentiable
    return torch.cumprod(padded, 1)[ray, position]


def importance_sampling(intervals, cdfs, n_intervals_per_ray, stratified=False):
    """nerfacc.pdf.importance_sampling for dense rays ([n_rays, M+1] edges, int count), by
    piecewise-linear inversion of the CDF; returns (RayIntervals, RaySamples)."""
    from nerfacc.data_specs import RayIntervals, RaySamples  # threestudio dependency, imported after its stand-ins

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
