"""Samplers on any schedule: one signature ``sample_x(denoiser, x, sigmas, ...)`` (k-diffusion style).

``sigmas`` is a descending schedule with a final 0 (see :mod:`crs.schedules`); ``x`` starts as
``sigmas[0] * noise``. The samplers are plain functions; the stochastic one takes its noise from a
:class:`SampleNoise`, which gives every sample its own ``torch.Generator`` (per-sample seeds), so a
sample does not depend on the batch it was drawn in. :func:`generate` draws many samples in batches.

Network evaluations (nfe) for ``n`` steps (``n`` noise levels, then 0):

==============  =========  =====================================================
sampler         nfe        method
==============  =========  =====================================================
``euler``       n          Euler on the probability-flow ODE
``heun``        2n - 1     EDM Algorithm 1 (Heun, Euler on the last step)
``dpmpp_2m``    n          DPM-Solver++(2M) (Lu et al. 2022), k-diffusion form
``edm``         2n - 1     EDM Algorithm 2: Heun with churn (stochastic)
==============  =========  =====================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

from crs.args import check_choice, check_int
from crs.conditioning import bind, check_conditions
from crs.protocols import check_data_matches
from crs.schedules import check_steps
from crs.seeds import sample_seed

__all__ = [
    "SAMPLERS",
    "SampleNoise",
    "check_nfe_plan",
    "check_sigmas",
    "generate",
    "nfe_of",
    "sample_dpmpp_2m",
    "sample_edm",
    "sample_euler",
    "sample_conditions",
    "sample_heun",
    "steps_for_nfe",
    "ORDER",
    "STEPS",
    "dpmpp_2m_step",
    "euler_step",
    "heun_step",
    "run_steps",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_sigmas(sigmas) -> torch.Tensor:
    """``sigmas`` as float64, checked: 1-D, strictly descending and positive, then a final 0 (ValueError)."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if (
        sigmas.ndim != 1
        or len(sigmas) < 2
        or sigmas[-1] != 0
        or torch.any(sigmas[:-2] <= sigmas[1:-1])
        or sigmas[-2] <= 0
    ):
        raise ValueError("`sigmas` must be 1-D, strictly descending and positive, then a final 0.")
    return sigmas


def _level(x: torch.Tensor, sigma) -> torch.Tensor:
    """Per-sample noise level (B,) matching ``x``; ``sigma`` a float or a 0-dim tensor (kept differentiable)."""
    return torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(1).expand(x.shape[0])


class SampleNoise:
    """Per-sample Gaussian noise: sample i draws from its own generator seeded with ``seeds[i]``.

    Args:
        seeds: one integer per sample.
        shape: shape of one sample.
        dtype: dtype of the draws.
    """

    def __init__(self, seeds: Sequence[int], shape: tuple[int, ...], dtype=torch.float32):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.shape, self.dtype = tuple(shape), dtype

    def __call__(self) -> torch.Tensor:
        """One draw per sample, (B, *shape), on the CPU."""
        return torch.stack([torch.randn(self.shape, generator=g, dtype=self.dtype) for g in self.generators])


EDM_CHURN_PER_STEP = 40 / 256  # EDM's ImageNet-64 S_churn = 40 over 256 steps, as a per-step gamma


def euler_step(denoiser: Denoiser, x: torch.Tensor, s, s_next, carry=None):
    """One Euler step of the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma`` from ``s`` to
    ``s_next`` (1 evaluation). Returns ``(x_next, None)``.

    Every step function takes ``(denoiser, x, s, s_next, carry)`` and returns ``(x_next, carry)``; levels may be
    floats or 0-dim float64 tensors (then the step is differentiable in them, as schedule search needs).
    """
    d = (x - denoiser(x, _level(x, s))) / s  # slope at s
    return x + (s_next - s) * d, None


def heun_step(denoiser: Denoiser, x: torch.Tensor, s, s_next, carry=None):
    """One step of Heun's method (EDM Algorithm 1): Euler predictor, trapezoidal corrector; on the final step to
    ``s_next = 0`` the Euler step alone (2 evaluations, 1 on the final step). Returns ``(x_next, None)``."""
    d = (x - denoiser(x, _level(x, s))) / s
    x_next = x + (s_next - s) * d
    if s_next > 0:
        d_next = (x_next - denoiser(x_next, _level(x, s_next))) / s_next
        x_next = x + (s_next - s) * 0.5 * (d + d_next)
    return x_next, None


def dpmpp_2m_step(denoiser: Denoiser, x: torch.Tensor, s, s_next, carry=None):
    """One step of DPM-Solver++(2M) (Lu et al. 2022) in k-diffusion's form (1 evaluation).

    With ``lambda = -log sigma`` and ``h = log(s / s_next)``: first order without ``carry`` (the first step),
    otherwise the multistep correction ``D' = (1 + 1/(2r)) D - 1/(2r) D_prev``, ``r = log(s_prev / s) / h``; the
    final step to 0 lands on the prediction. ``carry`` is ``(s_prev, D_prev)``; returns ``(x_next, (s, D))``.
    """
    denoised = denoiser(x, _level(x, s))
    if s_next == 0:
        return denoised, (s, denoised)
    s_t, s_next_t = torch.as_tensor(s, dtype=torch.float64), torch.as_tensor(s_next, dtype=torch.float64)
    h = torch.log(s_t / s_next_t)
    if carry is not None:
        s_prev, old = carry
        r = torch.log(torch.as_tensor(s_prev, dtype=torch.float64) / s_t) / h
        denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
    else:
        denoised_d = denoised
    return (s_next_t / s_t) * x - torch.expm1(-h) * denoised_d, (s, denoised)


STEPS = {"euler": euler_step, "heun": heun_step, "dpmpp_2m": dpmpp_2m_step}
ORDER = {"euler": 1, "heun": 2, "dpmpp_2m": 2}  # global order of the deterministic samplers


def run_steps(
    step, denoiser: Denoiser, x: torch.Tensor, sigmas, progress: bool = False, desc: str = ""
) -> torch.Tensor:
    """Apply ``step`` over consecutive levels of ``sigmas`` (levels as 0-dim tensors: differentiable in them)."""
    carry = None
    for i in tqdm(range(len(sigmas) - 1), disable=not progress, desc=desc, leave=False):
        x, carry = step(denoiser, x, sigmas[i], sigmas[i + 1], carry)
    return x


def sample_euler(denoiser: Denoiser, x: torch.Tensor, sigmas, progress: bool = False) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (:func:`euler_step` at each level); nfe = n."""
    return run_steps(euler_step, denoiser, x, check_sigmas(sigmas), progress, "euler")


def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas, progress: bool = False) -> torch.Tensor:
    """Heun's second-order method (EDM Algorithm 1, no churn: :func:`heun_step`); nfe = 2n - 1."""
    return run_steps(heun_step, denoiser, x, check_sigmas(sigmas), progress, "heun")


def sample_edm(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas,
    noise: SampleNoise | None = None,
    s_churn: float | None = None,
    s_min: float = 0.05,
    s_max: float = 50.0,
    s_noise: float = 1.003,
    progress: bool = False,
) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2); nfe = 2n - 1.

    At each level in [s_min, s_max] the noise is raised by ``gamma = min(s_churn / n, sqrt(2) - 1)``
    with fresh noise (scaled by ``s_noise``), then a Heun step (:func:`heun_step`) follows. With
    ``s_churn = 0`` it is :func:`sample_heun`.

    Defaults: EDM's ImageNet-64 setting (``generate.py --S_churn=40 --S_min=0.05 --S_max=50
    --S_noise=1.003`` with 256 steps) kept *per step*: ``s_churn = None`` means ``40 n / 256``, so every
    churned level gets EDM's tuned ``gamma = 40 / 256 = 0.156`` at any step count. ``S_churn = 40``
    itself, tuned for 256 steps, would saturate ``gamma`` at ``sqrt(2) - 1`` on every level at the
    nfe 5-51 studied here, adding 41 % more noise per step than the few remaining steps can remove.
    EDM's ``generate.py`` default, ``S_churn = 0``, is the deterministic :func:`sample_heun`.

    Args:
        noise: source of the fresh noise (per-sample generators); required when there is churn.
        s_churn: EDM's total churn over the ``n`` steps; None: ``40 n / 256`` (see above).
    """
    sigmas = check_sigmas(sigmas)
    n = len(sigmas) - 1
    s_churn = EDM_CHURN_PER_STEP * n if s_churn is None else s_churn
    if s_churn > 0 and noise is None:
        raise ValueError("The stochastic EDM sampler needs `noise` (a SampleNoise) when s_churn > 0.")
    for i in tqdm(range(n), disable=not progress, desc="edm", leave=False):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = min(s_churn / n, math.sqrt(2.0) - 1.0) if s_min <= s <= s_max else 0.0
        s_hat = s * (1.0 + gamma)
        if gamma > 0:  # churn: move up to s_hat with fresh noise
            x = x + math.sqrt(s_hat**2 - s**2) * s_noise * noise().to(x.device, x.dtype)
        x, _ = heun_step(denoiser, x, s_hat, s_next)
    return x


def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas, progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M) (:func:`dpmpp_2m_step` at each level, k-diffusion's form); nfe = n."""
    return run_steps(dpmpp_2m_step, denoiser, x, check_sigmas(sigmas), progress, "dpmpp_2m")


SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m, "edm": sample_edm}
_SECOND_ORDER = ("heun", "edm")


def _check_sampler(sampler: str) -> None:
    check_choice("sampler", sampler, SAMPLERS, what="sampler")


def nfe_of(sampler: str, steps: int) -> int:
    """Network evaluations a sampler spends on ``steps`` steps."""
    _check_sampler(sampler)
    return 2 * steps - 1 if sampler in _SECOND_ORDER else steps


def _nfe_rule(sampler: str) -> str:
    """The sampler's own rule for the budgets it can spend, for error messages."""
    if sampler in _SECOND_ORDER:
        return f"{sampler} spends 2n - 1 evaluations for n steps, so nfe must be odd and >= 3"
    return f"{sampler} spends n evaluations for n steps, so nfe must be >= 2"


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """Steps that spend exactly ``nfe`` evaluations; ValueError when none do (e.g. Heun with even nfe), naming
    the sampler's rule."""
    _check_sampler(sampler)
    check_int("nfe", nfe, what="An nfe")
    steps = (nfe + 1) // 2 if sampler in _SECOND_ORDER else nfe
    if steps < 2 or nfe_of(sampler, steps) != nfe:
        raise ValueError(f"The sampler {sampler!r} cannot spend exactly nfe={nfe}: {_nfe_rule(sampler)}.")
    return steps


def generate(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    n: int,
    sigmas,
    seed: int = 0,
    sampler: str = "heun",
    batch_size: int = 1024,
    dtype=torch.float32,
    device: str | torch.device = "cpu",
    progress: bool = False,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    conditions=None,
    **sampler_kwargs,
) -> torch.Tensor:
    """Draw ``n`` samples; sample i uses seed ``seed + i`` (its initial noise, any fresh noise and its condition).

    Results do not depend on ``batch_size``. Sampling runs without gradients.

    Args:
        decode: applied to each finished batch on ``device`` (a latent model's ``decode``: latents -> images).
        conditions: for a conditional model (plain or :class:`crs.conditioning.Guided`), the seeded source of each
            sample's condition (:class:`crs.conditioning.Labels`); :func:`sample_conditions` gives the conditions
            the samples got. None for an unconditional model.

    Returns:
        tensor (n, *shape) of ``dtype`` (decoded shape with ``decode``), on the CPU.

    Raises:
        ValueError: unknown sampler, bad schedule, a model that takes samples of another shape than ``shape``
            (before any work), or non-finite samples (naming the first batch).
    """
    _check_sampler(sampler)
    check_steps(len(sigmas) - 1)
    sigmas = check_sigmas(sigmas)
    check_data_matches(denoiser, shape, "`shape` is")
    check_conditions(denoiser, conditions)
    out = []
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc=f"sampling ({sampler})", leave=False):
        seeds = range(sample_seed(seed, start), sample_seed(seed, min(start + batch_size, n)))
        noise = SampleNoise(seeds, shape, dtype)
        x = (noise() * float(sigmas[0])).to(device)
        kwargs = dict(sampler_kwargs, noise=noise) if sampler == "edm" else sampler_kwargs
        bound = bind(denoiser, None if conditions is None else conditions(seeds))
        with torch.no_grad():
            x = SAMPLERS[sampler](bound, x, sigmas, **kwargs)
        if not torch.all(torch.isfinite(x)):
            raise ValueError(
                f"Sampling produced non-finite values (NaN or inf) in samples {seeds.start}..{seeds.stop - 1}: "
                "check the model and the schedule."
            )
        if decode is not None:
            x = decode(x)
        out.append(x.to(dtype).cpu())  # the dtype asked, whatever the model computes in
    return torch.cat(out)


def sample_conditions(conditions, n: int, seed: int = 0) -> torch.Tensor:
    """The conditions :func:`generate` gives samples ``0 .. n - 1`` of a run with ``seed`` (for scoring per class)."""
    return conditions([sample_seed(seed, i) for i in range(n)])


def check_nfe_plan(samplers: Sequence[str], nfe) -> dict[str, list[int]]:
    """Normalise ``nfe`` (a list for every sampler, or ``{sampler: list}``) and check each is spendable.

    Raises:
        ValueError: unknown sampler, or every (sampler, nfe) that cannot be spent exactly, at once.
    """
    for name in samplers:
        _check_sampler(name)
    if isinstance(nfe, dict) and set(nfe) ^ set(samplers):
        extra, missing = sorted(set(nfe) - set(samplers)), sorted(set(samplers) - set(nfe))
        raise ValueError(
            f"`nfe` must give budgets for exactly the samplers run ({', '.join(samplers)}): "
            + "; ".join(
                ([f"no budgets for {missing}"] if missing else []) + ([f"samplers not run: {extra}"] if extra else [])
            )
            + "."
        )
    values = [nfe[name] for name in samplers] if isinstance(nfe, dict) else [nfe]
    if any(isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)) or not v for v in values):
        raise ValueError(f"`nfe` must be a non-empty list of budgets, or one per sampler, got {nfe!r}.")
    plan = {name: list(nfe[name]) if isinstance(nfe, dict) else list(nfe) for name in samplers}
    bad = {}  # {sampler: budgets it cannot spend}
    for name, values in plan.items():
        for v in values:
            try:
                steps_for_nfe(name, v)
            except ValueError:
                bad.setdefault(name, []).append(v)
    if bad:
        raise ValueError(
            f"These samplers cannot spend these nfe exactly: {', '.join(f'{s}@{v}' for s in bad for v in bad[s])} "
            f"({'; '.join(_nfe_rule(s) for s in bad)})."
        )
    return plan
