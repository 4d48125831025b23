"""Perp-Neg: perpendicular negative guidance (Armandpour et al. 2023, arXiv 2304.04968).

Notation (docs/algorithms.md section 1.1), per sample, inner products over all latent dimensions:

    e_pos    = eps(x_t, t, c_pos) - eps(x_t, t)
    e_i      = eps(x_t, t, c_neg_i) - eps(x_t, t)
    e_i_perp = e_i - (<e_pos, e_i> / ||e_pos||^2) * e_pos
    eps_PN   = eps(x_t, t) + w * (e_pos - sum_i w_i * e_i_perp)        (w_i >= 0)

Negatives are given as *rows*: ``eps_neg[r]`` belongs to sample ``neg_index[r]`` and carries the
weight ``neg_weight[r]``. A sample may have any number of negatives (zero included), so no dummy
negatives are ever evaluated. Inner products and norms are accumulated in fp32 whatever the
input dtype (an fp16 dot product over a 4x64x64 latent overflows), and a zero positive direction
has projection coefficient 0 (its perpendicular space is everything), never NaN.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def batch_dot(x: Tensor, y: Tensor) -> Tensor:
    """<x_n, y_n> per sample n over all non-batch dimensions, in fp32. Shapes [N, ...] -> [N]."""
    return torch.einsum("nd,nd->n", x.flatten(1).float(), y.flatten(1).float())


def projection_coefficient(x: Tensor, onto: Tensor) -> Tensor:
    """<x, onto> / ||onto||^2 per sample (fp32), and 0 where ``onto`` is exactly zero."""
    squared_norm = batch_dot(onto, onto)
    safe_norm = torch.where(squared_norm > 0, squared_norm, torch.ones_like(squared_norm))
    coefficient = torch.where(
        squared_norm > 0, batch_dot(x, onto) / safe_norm, torch.zeros_like(squared_norm)
    )
    # A finite x projected onto a denormal-small `onto` can still overflow; keep it finite.
    return torch.nan_to_num(coefficient, nan=0.0, posinf=0.0, neginf=0.0)


def per_sample(v: Tensor, like: Tensor) -> Tensor:
    """A per-sample scalar [N] shaped to broadcast against ``like`` [N, ...]."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def perpendicular_component(x: Tensor, onto: Tensor) -> Tensor:
    """x minus its projection onto ``onto``, per sample (the Perp-Neg e_i_perp). fp32 result."""
    coefficient = projection_coefficient(x, onto)
    return x.float() - per_sample(coefficient, x) * onto.float()


def perp_neg_noise(
    eps_uncond: Tensor,
    eps_pos: Tensor,
    eps_neg: Tensor,
    neg_index: Tensor,
    neg_weight: Tensor,
    guidance_scale: float,
) -> Tuple[Tensor, Tensor]:
    """Perp-Neg guided noise eps_PN for a batch, and the projection coefficient of each negative.

    eps_uncond, eps_pos: [B, ...] unconditional and positive predictions.
    eps_neg: [R, ...] negative predictions; neg_index: [R] long, sample of each row;
    neg_weight: [R] weights w_i >= 0 (subtracted). R may be 0.
    Returns eps_PN [B, ...] (fp32) and the coefficients <e_pos, e_i>/||e_pos||^2 [R] (fp32).
    """
    return _negative_guidance(eps_uncond, eps_pos, eps_neg, neg_index, neg_weight, guidance_scale,
                              perpendicular=True)


def composable_noise(
    eps_uncond: Tensor,
    eps_pos: Tensor,
    eps_neg: Tensor,
    neg_index: Tensor,
    neg_weight: Tensor,
    guidance_scale: float,
) -> Tensor:
    """Classic negative prompting (the composable / CEBM form), for comparison with Perp-Neg:

    eps = eps_unc + w * (e_pos - sum_i w_i * e_i)
    """
    return _negative_guidance(eps_uncond, eps_pos, eps_neg, neg_index, neg_weight, guidance_scale,
                              perpendicular=False)[0]


def _negative_guidance(eps_uncond, eps_pos, eps_neg, neg_index, neg_weight, guidance_scale,
                       perpendicular: bool) -> Tuple[Tensor, Tensor]:
    """eps_unc + w * (e_pos - sum_i w_i * d_i), d_i = e_i_perp (Perp-Neg) or e_i (CEBM)."""
    e_pos = eps_pos.float() - eps_uncond.float()
    guided_direction = e_pos.clone()
    if eps_neg.shape[0] == 0:
        return eps_uncond.float() + guidance_scale * guided_direction, e_pos.new_zeros(0)
    e_neg = eps_neg.float() - eps_uncond.float()[neg_index]
    e_pos_of_row = e_pos[neg_index]
    coefficient = projection_coefficient(e_neg, e_pos_of_row)
    if perpendicular:
        e_neg = e_neg - per_sample(coefficient, e_neg) * e_pos_of_row
    guided_direction.index_add_(0, neg_index, per_sample(neg_weight.float(), e_neg) * e_neg, alpha=-1.0)
    return eps_uncond.float() + guidance_scale * guided_direction, coefficient
