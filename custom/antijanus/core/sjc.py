"""Score Jacobian Chaining (Wang et al., CVPR 2023, arXiv 2212.00774) on the guidance path.

SJC perturbs the render y with noise of standard deviation sigma_t and denoises it:

    sigma_t = sqrt((1 - abar_t) / abar_t)
    z       = y + sigma_t eps,   x_t = z / sqrt(1 + sigma_t^2) = sqrt(abar_t) y + sqrt(1 - abar_t) eps
    D(z)    = z - sigma_t eps_hat(x_t)                       (the denoiser)
    score   = (D(z) - z) / sigma_t^2

The update direction (the negative gradient of the loss, scaled by sigma_t) is, as in
threestudio's ``compute_grad_sjc``:

    var_red=True:   -(D(z) - y) / sigma_t = eps_hat - eps     (variance reduction: the known noise
                                                                eps is subtracted, SJC's "PAAS")
    var_red=False:  -(D(z) - z) / sigma_t = eps_hat

There is no weighting w(t). x_t above is exactly the DDPM forward process, so the guidance path
noises renders with ``add_noise`` as for SDS. threestudio runs SJC on Stable Diffusion's own
scaled-linear schedule (beta 0.00085 -> 0.012), forced whatever the folder's scheduler says;
``sjc_alphas_cumprod`` (``backbones/schedules.py``) is that schedule. D-SDS's official code is
built on SJC and clips this score (no w(t)).
"""

from __future__ import annotations

from torch import Tensor

# SJC's schedule lives with the backbones (they load it); importable from here too.
from ..backbones.schedules import SJC_SCHEDULE, sjc_alphas_cumprod

__all__ = ["SJC_SCHEDULE", "sjc_alphas_cumprod", "sjc_sigma", "sjc_score"]


def sjc_sigma(alphas_cumprod_t: Tensor) -> Tensor:
    """SJC's noise level sigma_t = sqrt((1 - abar_t) / abar_t)."""
    return ((1.0 - alphas_cumprod_t) / alphas_cumprod_t).sqrt()


def sjc_score(eps_hat: Tensor, noise: Tensor, var_red: bool = True) -> Tensor:
    """SJC's update direction: eps_hat - eps with variance reduction, eps_hat without."""
    return eps_hat - noise if var_red else eps_hat
