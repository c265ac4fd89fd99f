"""Teacher error: how far a sampler's endpoint lands from the converged solution of the same ODE
(docs/method.md section 8).

For a deterministic sampler (``euler``, ``heun``, ``dpmpp_2m``) every sample is a function of its starting
noise ``x_T = sigma_max * z``: the sampler integrates the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) /
sigma`` from ``sigma_max`` to ``sigma_min`` in a few steps and lands on ``D(x; sigma_min)``. The *teacher* is the
same computation done finely: Heun's method on a dense grid (EDM's rho = 7 spacing) to ``sigma_min``, then the
same final denoising. The teacher error of a schedule is the RMS distance, over samples and elements, between
the sampler's endpoints and the teacher's, from the same ``x_T``. It judges the solver and the schedule
together, which a distributional metric at a few thousand samples cannot resolve.

The teacher's own error is estimated by Richardson extrapolation (Heun is second order: halving the step
divides the error by about 4, so ``|x_fine - x_half| / 3`` estimates the fine solution's error) and is
reported; :func:`teacher_error` refines the teacher until that error is below 1 % of the error it judges.

Seeds: sample ``i`` of a teacher with ``seed`` starts from the noise of :func:`crs.seeds.sample_seed`, the same
noise :func:`crs.sampling.generate` gives sample ``i``, so a teacher error belongs to the very samples a
sampling run draws. Schedule search uses :func:`crs.seeds.search_seed`, disjoint from those.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from crs.args import check_choice, check_int
from crs.conditioning import bind, check_conditions, conditioning_of, guidance_evaluations
from crs.protocols import check_data_matches
from crs.sampling import STEPS, SampleNoise, check_sigmas, nfe_of, run_steps, sample_conditions
from crs.schedules import baseline_sigmas, check_sigma_range
from crs.seeds import sample_seed

__all__ = ["Teacher", "TeacherError", "solve_teacher", "teacher_error", "check_deterministic_sampler"]

ACCURACY = 0.01  # the teacher's own error must stay below this share of the error it judges


def check_deterministic_sampler(sampler: str) -> str:
    """ValueError unless ``sampler`` is one of the deterministic samplers (teacher error needs one)."""
    if sampler == "edm":
        raise ValueError(
            "Teacher error needs a deterministic sampler (euler, heun, dpmpp_2m); 'edm' adds fresh noise, so its "
            "endpoint is not a function of x_T."
        )
    return check_choice("sampler", sampler, STEPS, what="deterministic sampler")


@dataclass
class Teacher:
    """Reference solutions of the probability-flow ODE from fixed starting noise.

    Attributes:
        x_T: starting points (n, *shape), ``sigma_max * z``.
        endpoint: the teacher's endpoints ``D(x(sigma_min); sigma_min)`` (n, *shape).
        error: estimated RMS error of ``endpoint`` (Richardson, see the module docstring).
        steps: Heun steps of the fine solve.
        evaluations: network evaluations per sample spent (fine and half solves).
        sigma: the levels of the fine solve, descending from sigma_max to sigma_min (steps + 1,).
        states: the solution at every level (steps + 1, n, *shape) when kept, else None.
        cond: each sample's condition (n,) for a conditional model (drawn from the sample's seed), else None.
    """

    x_T: torch.Tensor
    endpoint: torch.Tensor
    error: float
    steps: int
    evaluations: int
    sigma: np.ndarray
    sigma_min: float
    sigma_max: float
    seed: int
    states: torch.Tensor | None = field(default=None, repr=False)
    cond: torch.Tensor | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return len(self.x_T)


@dataclass
class TeacherError:
    """The teacher error of one schedule: ``value`` (RMS over samples and elements) and the per-sample RMS."""

    value: float
    per_sample: np.ndarray
    teacher_error: float
    evaluations: int

    def interval(self, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
        """Percentile bootstrap interval of ``value`` over the samples."""
        sq = self.per_sample**2
        idx = np.random.default_rng(seed).integers(0, len(sq), size=(n_boot, len(sq)))
        boot = np.sqrt(sq[idx].mean(1))
        lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
        return float(lo), float(hi)


def _start(shape, n: int, seed: int, sigma_max: float, noise_dtype, dtype) -> torch.Tensor:
    """``sigma_max * z`` as :func:`crs.sampling.generate` draws it (noise in ``noise_dtype``), held in ``dtype``."""
    noise = SampleNoise([sample_seed(seed, i) for i in range(n)], shape, noise_dtype)
    return noise().to(dtype) * sigma_max


def _heun_levels(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """EDM's rho = 7 levels from sigma_max down to sigma_min (steps + 1 of them); halving ``steps`` keeps every
    other level (the levels are uniform in a time variable)."""
    return torch.as_tensor(baseline_sigmas("karras", steps + 1, sigma_min, sigma_max), dtype=torch.float64)[:-1].clone()


def _fine_solve(denoiser, x: torch.Tensor, levels: torch.Tensor, keep: bool, batch_size: int, cond=None):
    heun = STEPS["heun"]
    ends, states = [], []
    model = denoiser
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        denoiser = bind(model, cond, slice(start, start + batch_size))
        traj = [xb] if keep else None
        with torch.no_grad():
            for i in range(len(levels) - 1):
                xb, _ = heun(denoiser, xb, float(levels[i]), float(levels[i + 1]))
                if keep:
                    traj.append(xb)
            ends.append(denoiser(xb, torch.full((len(xb),), float(levels[-1]), dtype=xb.dtype)))
        if keep:
            states.append(torch.stack(traj))
    return torch.cat(ends), (torch.cat(states, dim=1) if keep else None)


def _rms(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-sample RMS over elements of a - b, float64 (n,)."""
    return (a.double() - b.double()).flatten(1).pow(2).mean(1).sqrt().cpu().numpy()


def solve_teacher(
    denoiser,
    shape: tuple[int, ...],
    n: int = 256,
    seed: int = 0,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    steps: int = 256,
    keep_states: bool = False,
    batch_size: int = 1024,
    dtype=torch.float64,
    noise_dtype=torch.float32,
    device: str | torch.device = "cpu",
    conditions=None,
) -> Teacher:
    """Solve the probability-flow ODE finely from ``n`` seeded starts (see the module docstring).

    Args:
        shape: one sample's shape (the denoiser's).
        steps: Heun steps of the fine solve (even; the error estimate solves again with ``steps // 2``).
        keep_states: keep the trajectory at every level (GITS needs it).
        dtype: of the solve (float64 by default; a float32 network computes in float32 and returns float64).
        noise_dtype: of the starting noise draws: float32, as :func:`crs.sampling.generate` draws by default, so
            that the teacher starts where sampling runs do (a float64 draw gives other numbers).
        conditions: a conditional model's condition source (:class:`crs.conditioning.Labels`): sample ``i`` gets
            the condition :func:`crs.sampling.generate` gives it, kept in :attr:`Teacher.cond`.
    """
    check_sigma_range(sigma_min, sigma_max)
    check_conditions(denoiser, conditions)
    check_int("n", n, 1)
    check_int("steps", steps, 2)
    if steps % 2:
        raise ValueError(f"`steps` must be even (the error estimate halves it), got {steps}.")
    x_T = _start(tuple(shape), n, seed, sigma_max, noise_dtype, dtype).to(device)
    cond = None if conditions is None else sample_conditions(conditions, n, seed)
    levels = _heun_levels(steps, sigma_min, sigma_max)
    fine, states = _fine_solve(denoiser, x_T, levels, keep_states, batch_size, cond)
    half, _ = _fine_solve(denoiser, x_T, levels[::2], False, batch_size, cond)
    if not (torch.all(torch.isfinite(fine)) and torch.all(torch.isfinite(half))):
        raise ValueError("The teacher solve produced non-finite values (NaN or inf): check the model.")
    error = float(np.sqrt((_rms(fine, half) ** 2).mean())) / 3.0
    evaluations = ((2 * steps + 1) + (steps + 1)) * guidance_evaluations(denoiser)
    return Teacher(
        x_T=x_T,
        endpoint=fine,
        error=error,
        steps=steps,
        evaluations=evaluations,
        sigma=levels.numpy(),
        sigma_min=float(sigma_min),
        sigma_max=float(sigma_max),
        seed=int(seed),
        states=states,
        cond=cond,
    )


def endpoints(
    denoiser, sampler: str, sigmas, x_T: torch.Tensor, batch_size: int = 1024, cond: torch.Tensor | None = None
) -> torch.Tensor:
    """The sampler's endpoints from given starts ``x_T`` (no gradients); ``cond``: their conditions (n,), for a
    conditional model."""
    sigmas = check_sigmas(sigmas)
    out = []
    with torch.no_grad():
        for start in range(0, len(x_T), batch_size):
            bound = bind(denoiser, cond, slice(start, start + batch_size))
            out.append(run_steps(STEPS[sampler], bound, x_T[start : start + batch_size], sigmas))
    return torch.cat(out)


def teacher_error(
    denoiser,
    data,
    sampler: str,
    sigmas,
    n: int = 256,
    seed: int = 0,
    teacher: Teacher | None = None,
    steps: int = 256,
    max_steps: int = 4096,
    batch_size: int = 1024,
    conditions=None,
) -> TeacherError:
    """The teacher error of the schedule ``sigmas`` (n levels descending, then 0) for ``sampler``.

    Args:
        data: the data the denoiser models (its ``shape`` is the samples' shape).
        n, seed: the samples (sample ``i`` starts from the noise of seed ``sample_seed(seed, i)``).
        teacher: a :class:`Teacher` to reuse (its starts and range must match ``sigmas[0]``); when None one is
            solved with ``steps`` Heun steps and refined (doubling, up to ``max_steps``) until its own error is
            below 1 % of the error it judges.
        conditions: a conditional model's condition source (sample ``i`` gets the condition
            :func:`crs.sampling.generate` gives it); a given ``teacher`` brings its own conditions.

    Returns:
        :class:`TeacherError`; a warning when the teacher's error is not below 1 % of the value.

    Raises:
        ValueError: a stochastic or unknown sampler, a bad schedule, a teacher from another range, a model that
            takes samples of another shape than the data's.
    """
    check_deterministic_sampler(sampler)
    sig = check_sigmas(sigmas)
    shape = tuple(data.shape)
    check_data_matches(denoiser, shape)
    if teacher is None:
        check_conditions(denoiser, conditions)
        while True:
            teacher = solve_teacher(
                denoiser,
                shape,
                n,
                seed,
                float(sig[-2]),
                float(sig[0]),
                steps,
                batch_size=batch_size,
                conditions=conditions,
            )
            result = _judge(denoiser, sampler, sig, teacher, batch_size)
            if teacher.error < ACCURACY * result.value or 2 * steps > max_steps:
                break
            steps *= 2
    else:
        if not math.isclose(float(sig[0]), teacher.sigma_max, rel_tol=1e-9):
            raise ValueError(
                f"The schedule starts at sigma {float(sig[0]):.6g}, the teacher at {teacher.sigma_max:.6g}: "
                "they must start from the same x_T."
            )
        result = _judge(denoiser, sampler, sig, teacher, batch_size)
    if not teacher.error < ACCURACY * result.value:
        warnings.warn(
            f"The teacher's own error ({teacher.error:.3g}) is not below 1 % of the teacher error it judges "
            f"({result.value:.3g}); give the teacher more steps.",
            stacklevel=2,
        )
    return result


def _judge(denoiser, sampler: str, sigmas: torch.Tensor, teacher: Teacher, batch_size: int) -> TeacherError:
    if (teacher.cond is None) != (conditioning_of(denoiser) is None):
        raise ValueError("The teacher and the model disagree on conditioning: solve the teacher with this model.")
    x = endpoints(denoiser, sampler, sigmas, teacher.x_T, batch_size, teacher.cond)
    if not torch.all(torch.isfinite(x)):
        raise ValueError(f"The sampler {sampler!r} produced non-finite values on this schedule.")
    per = _rms(x, teacher.endpoint)
    return TeacherError(
        value=float(np.sqrt((per**2).mean())),
        per_sample=per,
        teacher_error=teacher.error,
        evaluations=nfe_of(sampler, len(sigmas) - 1),
    )
