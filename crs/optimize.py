"""From an estimated rate to a constant-rate schedule (docs/method.md section 3, steps 4 to 7).

With the velocity ``v`` with respect to alpha (piecewise constant on the grid) and the exponent
``xi``, the schedule's time is ``t = F(sigma) = int_{sigma_min}^{sigma} v^xi |d alpha| / Z`` and the
schedule is its inverse, ``sigma(t) = F^{-1}(t)``: PCHIP in log sigma through the grid knots
``(F(sigma_k), sigma_k)``, tabulated densely. At xi = 1 every step of any discretisation covers
the same discrepancy; :func:`step_discrepancy` measures that for any schedule.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from functools import partial

import numpy as np
import torch
from scipy.interpolate import PchipInterpolator
from scipy.ndimage import gaussian_filter1d

from crs.args import check_number
from crs.rate import RateEstimate
from crs.schedules import BASELINES, Schedule, baseline_sigmas, check_steps, sigma_to_alpha

__all__ = [
    "check_xi",
    "optimize_schedule",
    "sampling_schedules",
    "schedule_functions",
    "schedule_kinds",
    "schedule_from_velocity",
    "step_discrepancy",
]


def check_xi(xi) -> float:
    """Raise ``ValueError`` unless ``xi`` is a finite positive number; return it as float."""
    return check_number("xi", xi, positive=True)


def schedule_from_velocity(
    sigma: np.ndarray,
    velocity: np.ndarray,
    xi: float = 1.0,
    smoothing: float = 0.0,
    knots: int = 1025,
    meta: dict | None = None,
) -> Schedule:
    """Continuous schedule whose rate ``v^xi |d alpha / dt|`` is constant.

    Args:
        sigma: ascending grid (K + 1,).
        velocity: velocity with respect to alpha per interval (K,), non-negative, not all zero.
        xi: exponent; 1 is exactly constant rate.
        smoothing: standard deviation, in logsnr units, of a Gaussian kernel applied to ``log v``
            before integrating (0: none).
        knots: uniform times of the dense table the returned schedule holds (the grid knots are added).
        meta: stored with the schedule.

    Returns:
        A :class:`~crs.schedules.Schedule` on [sigma[0], sigma[-1]].
    """
    xi = check_xi(xi)
    check_number("smoothing", smoothing, minimum=0)
    sigma, v = np.asarray(sigma, dtype=np.float64), np.asarray(velocity, dtype=np.float64)
    if v.shape != (len(sigma) - 1,):
        raise ValueError(f"`velocity` needs one value per interval ({len(sigma) - 1}), got shape {v.shape}.")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError("`velocity` must be finite and non-negative.")
    if not v.max() > 0:
        raise ValueError("The velocity is zero everywhere: it defines no schedule.")
    if np.any(v <= 0):
        warnings.warn(
            f"{int(np.sum(v <= 0))} interval(s) have zero velocity; floored at 1e-9 of the maximum.", stacklevel=2
        )
        v = np.maximum(v, 1e-9 * v.max())
    log_v = np.log(v)
    if smoothing > 0:
        step = abs(math.log(sigma[1] / sigma[0])) * 2.0  # logsnr spacing of the grid (uniform)
        log_v = gaussian_filter1d(log_v, smoothing / step, mode="nearest")
    increments = np.exp(xi * log_v) * np.abs(np.diff(sigma_to_alpha(sigma)))
    cdf = np.concatenate([[0.0], np.cumsum(increments)])
    coarse = Schedule(cdf / cdf[-1], sigma)  # knots (F(sigma_k), sigma_k), PCHIP in log sigma
    # dense table: uniform times plus the grid knots themselves, so that intervals holding less
    # than 1/knots of the time (where the rate is small) keep their shape and density
    t = np.union1d(np.linspace(0.0, 1.0, knots), coarse.t)
    t = t[np.concatenate([[True], np.diff(t) > 1e-12])]
    table = coarse(t).numpy()
    table[0], table[-1] = sigma[0], sigma[-1]  # exact end points
    info = {"xi": xi, "smoothing": float(smoothing), **(meta or {})}
    return Schedule(t, table, meta=info)


def optimize_schedule(rate: RateEstimate, xi: float = 1.0, smoothing: float = 0.0, knots: int = 1025) -> Schedule:
    """The CRS schedule of an estimated rate (see :func:`schedule_from_velocity`)."""
    return schedule_from_velocity(
        rate.sigma, rate.velocity("alpha"), xi=xi, smoothing=smoothing, knots=knots, meta={"measure": rate.measure}
    )


def step_discrepancy(rate: RateEstimate, sigmas) -> np.ndarray:
    """Discrepancy covered by each step of a discretised schedule, under the rate's measure.

    The cumulative discrepancy ``L(sigma)`` (the sum of ``d_k`` up to sigma, interpolated between
    grid levels by PCHIP in log sigma, as the schedule itself is) is evaluated at the schedule's
    non-zero levels; step i covers
    ``|L(sigmas_i) - L(sigmas_{i+1})|``. The last step, to sigma = 0, lies outside the grid and is
    not counted, so n levels give n - 1 values.

    Args:
        rate: the estimated rate.
        sigmas: a schedule (descending, optional final 0), inside the rate's grid range.

    Returns:
        float64 array (n - 1,).

    Raises:
        ValueError: levels that are not 1-D, strictly descending and positive (with an optional final 0), fewer
            than two non-zero levels, or levels outside the rate's grid.
    """
    s = np.asarray(sigmas.cpu() if isinstance(sigmas, torch.Tensor) else sigmas, dtype=np.float64)
    s = s[:-1] if s.ndim == 1 and s.size and s[-1] == 0 else s
    if s.ndim != 1 or np.any(s <= 0) or np.any(np.diff(s) >= 0):
        raise ValueError("`sigmas` must be 1-D, strictly descending and positive, with an optional final 0.")
    lo, hi = rate.sigma[0], rate.sigma[-1]
    if s.size < 2:
        raise ValueError("A schedule needs at least two non-zero levels.")
    if s.min() < lo * (1 - 1e-9) or s.max() > hi * (1 + 1e-9):
        raise ValueError(
            f"The schedule spans [{s.min():.6g}, {s.max():.6g}], outside the rate's grid [{lo:.6g}, {hi:.6g}]; "
            "estimate the rate over the schedule's range."
        )
    cumulative = np.concatenate([[0.0], np.cumsum(rate.discrepancy)])
    level = PchipInterpolator(np.log(rate.sigma), cumulative)(np.log(np.clip(s, lo, hi)))
    return np.abs(np.diff(level))


def schedule_functions(schedule: Schedule, baselines: Iterable[str] = BASELINES, crs_name: str = "crs") -> dict:
    """``{name: steps -> sigmas}`` for the CRS schedule and each baseline on the CRS schedule's range.

    The form :func:`crs.run.jobs.sample_grid` takes; every baseline name is checked here.
    """
    out = {crs_name: schedule.discretize}
    for name in baselines:
        baseline_sigmas(name, 2, schedule.sigma_min, schedule.sigma_max)  # validate the name now
        out[name] = partial(baseline_sigmas, name, sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max)
    return out


def schedule_kinds(baselines: Iterable[str] = BASELINES, crs_name: str = "crs") -> dict[str, str]:
    """``{name: kind}`` of the schedules :func:`schedule_functions` makes with the same arguments: ``crs`` for the
    CRS schedule, ``baseline`` for each fixed baseline (the roles :data:`crs.search.KINDS` names)."""
    return {crs_name: "crs", **dict.fromkeys(baselines, "baseline")}


def sampling_schedules(
    schedule: Schedule,
    steps: Iterable[int],
    baselines: Iterable[str] = BASELINES,
    baseline_kwargs: Mapping[str, dict] | None = None,
) -> dict[str, dict[int, torch.Tensor]]:
    """CRS and baseline sampling schedules on the CRS schedule's range.

    Returns:
        ``{"crs": {n: sigmas}, "<baseline>": {n: sigmas}, ...}`` for every step count.
    """
    steps = list(steps)
    for n in steps:
        check_steps(n)
    baseline_kwargs = baseline_kwargs or {}
    out = {"crs": {n: schedule.discretize(n) for n in steps}}
    for name in baselines:
        kwargs = baseline_kwargs.get(name, {})
        out[name] = {n: baseline_sigmas(name, n, schedule.sigma_min, schedule.sigma_max, **kwargs) for n in steps}
    return out
