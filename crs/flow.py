"""Flow-matching models as denoisers on sigma (docs/method.md, section 11).

Flow matching (rectified flow: Stable Diffusion 3, Flux, Wan, Sana; diffusers' ``FlowMatchEulerDiscreteScheduler``)
noises as ``x_s = (1 - s) x0 + s eps`` with flow time ``s`` in [0, 1], and its network predicts the velocity
``v = eps - x0``. Dividing by ``1 - s`` gives the suite's VE convention ``x = x0 + sigma eps`` exactly:

    sigma = s / (1 - s),    s = sigma / (1 + sigma),    x_s = (1 - s) x,    x0 = x_s - s v.

So a velocity model is a denoiser like any other (:class:`FlowDenoiser`): rates, schedules, samplers, searches and
teacher errors apply unchanged, and a schedule found on sigma maps to flow time level by level. :class:`VelocityModel`
writes any denoiser as a velocity model (the inverse map), which the tests use for an exact equivalence: a model
through the flow adapter gives the same rates, samples and teacher errors as through the suite's own path, to
round-off.

The shifted schedules flow models ship with are uniform in flow time ``u`` and shifted: SD3's static shift
``s = c u / (1 + (c - 1) u)`` and Flux's resolution-dependent ``s = e^mu / (e^mu + 1/u - 1)`` are both
``sigma = c u / (1 - u)`` in sigma (``c = shift``, or ``c = e^mu``): a shift multiplies every level's sigma by ``c``.
:func:`flow_sigmas` gives them; they are the baselines ``flow`` (no shift), ``sd3`` (shift 3) and ``flux``
(``mu`` 1.15, Flux at 1024 px) of :mod:`crs.schedules`.

Flow time 1 is pure noise, sigma infinite: a flow model's range in sigma stops at ``S_MAX`` = 0.999 of flow time
(sigma 999), where the noised sample differs from pure noise by 0.1 % of ``x0``; a pipeline starting at ``s = 1``
and the suite's samplers starting at ``S_MAX`` begin from the same noise up to that.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from crs.args import check_number

__all__ = [
    "S_MAX",
    "FlowDenoiser",
    "VelocityModel",
    "flow_shift_scale",
    "flow_sigmas",
    "flow_denoise",
    "flow_to_sigma",
    "flux_mu",
    "sigma_to_flow",
    "unshift",
]

S_MAX = 0.999  # the largest flow time a flow model's range in sigma reaches: sigma 999


def flow_to_sigma(s):
    """Flow time ``s`` in [0, 1) -> the VE noise level ``s / (1 - s)`` (float64 for arrays and tensors)."""
    if isinstance(s, torch.Tensor):
        s = s.to(torch.float64)
        return s / (1.0 - s)
    if isinstance(s, np.ndarray):
        s = s.astype(np.float64)
        return s / (1.0 - s)
    return float(s) / (1.0 - float(s))


def sigma_to_flow(sigma):
    """VE noise level ``sigma`` >= 0 -> flow time ``sigma / (1 + sigma)`` (float64 for arrays and tensors)."""
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.to(torch.float64)
        return sigma / (1.0 + sigma)
    if isinstance(sigma, np.ndarray):
        sigma = sigma.astype(np.float64)
        return sigma / (1.0 + sigma)
    return float(sigma) / (1.0 + float(sigma))


def flux_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Flux's resolution-dependent shift ``mu`` (diffusers' ``calculate_shift``, the defaults of Flux.1's scheduler
    config): linear in the number of packed latent tokens, 0.5 at 256 tokens (256 px) and 1.15 at 4096 (1024 px)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return float(image_seq_len * m + (base_shift - m * base_seq_len))


def flow_shift_scale(shift: float | None = None, mu: float | None = None) -> float:
    """The factor ``c`` by which a shifted flow schedule multiplies sigma: ``shift`` (SD3's static shift), or
    ``e^mu`` (Flux's exponential time shift ``e^mu / (e^mu + 1/u - 1)``); 1 for neither."""
    if shift is not None and mu is not None:
        raise ValueError("Give `shift` or `mu`, not both.")
    if mu is not None:
        return math.exp(check_number("mu", mu))
    return 1.0 if shift is None else check_number("shift", shift, positive=True)


def unshift(s, c: float):
    """The unshifted flow times ``u`` whose shift ``c u / (1 + (c - 1) u)`` is ``s`` (float64 array): what a
    scheduler that shifts the times it is given must be given (:func:`crs.export.unshift_flow_times`)."""
    s = np.asarray(s, dtype=np.float64)
    return s / (c - (c - 1.0) * s)


def flow_denoise(velocity: Callable, x: torch.Tensor, sigma) -> torch.Tensor:
    """The x0-prediction of a velocity model at the VE input ``x`` and level ``sigma`` (scalar or (B,)): ``s = sigma
    / (1 + sigma)``, ``x_s = (1 - s) x``, ``x0 = x_s - s velocity(x_s, s)`` (``s`` float64 (B,)), in ``x``'s dtype.
    The one place the map is written: :class:`FlowDenoiser` and the diffusers adapter's SD3 path use it."""
    s = sigma_to_flow(torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0]))
    sb = s.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    x_s = (1.0 - sb) * x
    return x_s - sb * velocity(x_s, s).to(x.dtype)


def flow_sigmas(n: int, sigma_min: float, sigma_max: float, shift: float | None = None, mu: float | None = None):
    """A shifted flow schedule with ``n`` levels on ``[sigma_min, sigma_max]``: uniform in unshifted flow time
    ``u`` between the ends' ``u``, each level ``sigma = c u / (1 - u)`` (:func:`flow_shift_scale`), as
    ``FlowMatchEulerDiscreteScheduler`` spaces its levels (uniform timesteps, then shifted). float64 (n,),
    descending, no final 0."""
    c = flow_shift_scale(shift, mu)
    lo, hi = sigma_to_flow(sigma_min / c), sigma_to_flow(sigma_max / c)
    u = np.linspace(hi, lo, int(n))
    return c * u / (1.0 - u)


class FlowDenoiser(nn.Module):
    """A flow-matching velocity model as an x0-denoiser on sigma: ``D(x; sigma) = x_s - s v(x_s, s)`` with
    ``s = sigma / (1 + sigma)`` and ``x_s = (1 - s) x``.

    Args:
        velocity: ``velocity(x_s, s)`` -> ``v = eps - x0`` (``s`` a float64 (B,) tensor of flow times), or
            ``velocity(x_s, s, cond)`` for a conditional model.
        shape: one sample's shape.
        s_min, s_max: the flow times the model is meant for (its range in sigma: ``s / (1 - s)``); ``s_max`` at
            most :data:`S_MAX`.
        conditioning: a conditional model's :class:`crs.conditioning.Conditioning` (None: unconditional).
        sigma_data: the data standard deviation (loss weighting only).
    """

    is_latent = False

    def __init__(
        self,
        velocity: Callable,
        shape,
        s_min: float = 1e-3,
        s_max: float = S_MAX,
        conditioning=None,
        sigma_data: float = 0.5,
    ):
        super().__init__()
        if not 0.0 < s_min < s_max <= S_MAX:
            raise ValueError(f"Flow times need 0 < s_min < s_max <= {S_MAX}, got s_min={s_min!r}, s_max={s_max!r}.")
        self.velocity = velocity
        self.shape = self.pixel_shape = tuple(shape)
        self.sigma_min, self.sigma_max = flow_to_sigma(s_min), flow_to_sigma(s_max)
        self.conditioning = conditioning
        self.sigma_data = float(sigma_data)

    def forward(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, *shape) VE, sigma scalar or (B,) -> the x0-prediction, same dtype and device as ``x``."""
        if cond is None and self.conditioning is None:
            return flow_denoise(self.velocity, x, sigma)
        return flow_denoise(lambda x_s, s: self.velocity(x_s, s, cond), x, sigma)

    def decode(self, latents, batch_size: int = 64, quantize: bool = True):
        raise ValueError("This flow model works on data, not latents: there is nothing to decode.")


class VelocityModel(nn.Module):
    """Any denoiser written as a flow-matching velocity model: ``v(x_s, s) = (x_s - D(x_s / (1 - s); s / (1 - s)))
    / s`` (the inverse of :class:`FlowDenoiser`). ``FlowDenoiser(VelocityModel(D), ...)`` is ``D`` to round-off:
    the tests' exact equivalence of the two paths."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x_s: torch.Tensor, s, cond: torch.Tensor | None = None) -> torch.Tensor:
        s = torch.as_tensor(s, dtype=torch.float64, device=x_s.device).reshape(-1).expand(x_s.shape[0])
        sb = s.reshape(-1, *([1] * (x_s.ndim - 1))).to(x_s.dtype)
        x = x_s / (1.0 - sb)
        sigma = flow_to_sigma(s)
        x0 = self.denoiser(x, sigma) if cond is None else self.denoiser(x, sigma, cond)
        return (x_s - x0.to(x_s.dtype)) / sb
