"""Samplers on any schedule: one signature ``sample_x(denoiser, x, sigmas)`` (k-diffusion style).

``sigmas`` is a descending schedule with a final 0 (see :mod:`crs.schedules`); ``x`` starts as
``sigmas[0] * noise``. The samplers are plain functions with no hidden randomness; gradients are
not disabled here (use :func:`generate`, which does, for inference).
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm import tqdm

from crs.schedules import check_steps

__all__ = ["SAMPLERS", "generate", "sample_euler", "sample_heun"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if sigmas.ndim != 1 or len(sigmas) < 2 or sigmas[-1] != 0 or torch.any(sigmas[:-2] <= sigmas[1:-1]) or sigmas[-2] <= 0:
        raise ValueError("`sigmas` must be 1-D, strictly descending and positive, then a final 0.")
    return sigmas


def _level(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-sample noise level (B,) matching ``x``."""
    return torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)


def sample_euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, progress: bool = False) -> torch.Tensor:
    """Euler's method on the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma``; nfe = n."""
    sigmas = _check_sigmas(sigmas)
    for i in tqdm(range(len(sigmas) - 1), disable=not progress, desc="euler", leave=False):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - denoiser(x, _level(x, s))) / s  # slope at sigma_i
        x = x + (s_next - s) * d  # step to sigma_{i+1}
    return x


def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, progress: bool = False) -> torch.Tensor:
    """Heun's second-order method (EDM Algorithm 1, no churn); nfe = 2n - 1 (Euler on the last step)."""
    sigmas = _check_sigmas(sigmas)
    for i in tqdm(range(len(sigmas) - 1), disable=not progress, desc="heun", leave=False):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - denoiser(x, _level(x, s))) / s
        x_next = x + (s_next - s) * d  # Euler predictor
        if s_next > 0:  # trapezoidal corrector, except on the final step to sigma = 0
            d_next = (x_next - denoiser(x_next, _level(x, s_next))) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = x_next
    return x


SAMPLERS = {"euler": sample_euler, "heun": sample_heun}


def generate(denoiser: Denoiser, shape: tuple[int, ...], n: int, sigmas: torch.Tensor, seed: int = 0, sampler: str = "heun", dtype=torch.float32) -> torch.Tensor:
    """Draw ``n`` samples: initial noise from ``torch.Generator().manual_seed(seed)``, then ``sampler``.

    Returns:
        tensor (n, *shape) of ``dtype``, on the CPU.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; valid choices: {', '.join(SAMPLERS)}.")
    check_steps(len(sigmas) - 1)
    sigmas = _check_sigmas(sigmas)
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn((n, *shape), generator=gen, dtype=dtype) * float(sigmas[0])
    with torch.no_grad():
        out = SAMPLERS[sampler](denoiser, x, sigmas)
    if not torch.all(torch.isfinite(out)):
        raise ValueError("Sampling produced non-finite values (NaN or inf): check the model and the schedule.")
    return out.cpu()
