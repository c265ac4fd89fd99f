"""Discrepancy measures between noised marginals at neighbouring noise levels (docs/method.md section 4).

Every measure is metric-like (a distance, not a squared distance) and is estimated with common
random numbers: one batch of data ``x0`` and one batch of noise ``eps`` are used at every level of
the grid, so neighbouring estimates share their noise. Per grid interval each estimator returns the
discrepancy and its standard error.

* ``fid``: Frechet distance (square root of FID) between Gaussian fits of features of the VP-scaled
  noised data ``alpha * (x0 + sigma * eps)``. Needs data and a feature map, no diffusion model.
  The noise comes in antithetic pairs (eps, -eps) per data point. Standard error: grouped
  jackknife. The finite-sample floor (two independent halves of the samples at the same level) is
  reported alongside.
* ``data``: RMS over samples and dimensions of ``D(x_a; sigma_a) - D(x_b; sigma_b)``.
* ``noise``: the same with the eps-prediction ``(x - D) / sigma``.
  Standard error of both: delta method on the mean of per-sample squared differences.
* ``solver-euler``, ``solver-heun``, ``solver-dpmpp_2m``: the local error of one step of that sampler over the
  interval, from the noised data at its upper end, against a fine Heun solve of the same interval: RMS over
  samples and dimensions, raised to the power ``1 / (p + 1)`` for a method of order ``p`` (the local error
  scales as ``h^(p+1)``), so that it is additive along the grid like a distance and at xi = 1 every step
  carries the same local error (docs/method.md section 8). DPM-Solver++(2M) steps with its history: the
  previous level of the grid, reached by a fine solve. Standard error: delta method.
* a baseline name (e.g. ``cosine``): the velocity implied by that fixed schedule, i.e. the measure
  under which it has constant rate at xi = 1: the discrepancy of an interval is the time the
  schedule spends in it. For ``kl_optimal`` (alpha = cos(pi t / 2)) this is
  ``v proportional to 1 / sqrt(1 - alpha^2)``.
* combinations such as ``"data+cosine"`` or ``{"data": 0.7, "cosine": 0.3}``: weighted geometric
  mean of the velocities, each first normalised to unit total discrepancy over the grid (the
  combination itself does not sum to 1; only its shape matters, as the schedule normalises ``F``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from tqdm import tqdm

from crs.conditioning import bind
from crs.distances import fid_from_features
from crs.sampling import ORDER, STEPS, heun_step
from crs.schedules import BASELINES, baseline_t_fn, sigma_to_alpha

__all__ = [
    "BASE_MEASURES",
    "MODEL_MEASURES",
    "SOLVER_MEASURES",
    "combine_velocities",
    "fid_pass",
    "format_measure",
    "model_pass",
    "parse_measure",
    "rms_with_stderr",
    "schedule_pass",
    "solver_discrepancy",
    "solver_pass",
    "valid_measure_names",
]

BASE_MEASURES = ("fid", "data", "noise")
MODEL_MEASURES = ("data", "noise")
SOLVER_MEASURES = ("solver-euler", "solver-heun", "solver-dpmpp_2m")
SOLVER_SUBSTEPS = 8  # Heun substeps of the fine solve each local error is measured against


def valid_measure_names() -> tuple[str, ...]:
    """Every name a measure spec may contain: the base measures, the baselines and the solver measures."""
    return BASE_MEASURES + BASELINES + SOLVER_MEASURES


def parse_measure(spec: str | Mapping[str, float]) -> dict[str, float]:
    """Parse a measure spec into ``{name: weight}`` with weights summing to 1.

    Accepted: ``"data"``; ``"data+cosine"`` (equal weights); ``"data:0.7+cosine:0.3"``;
    ``{"data": 0.7, "cosine": 0.3}``.

    Raises:
        ValueError: unknown name, repeated name, or a weight that is not a positive number.
    """
    if isinstance(spec, Mapping):
        items = list(spec.items())
    elif isinstance(spec, str) and spec.strip():
        items = []
        for part in spec.split("+"):
            name, _, weight = part.strip().partition(":")
            try:
                items.append((name.strip(), float(weight) if weight else 1.0))
            except ValueError:
                raise ValueError(
                    f"Bad weight {weight!r} in measure {spec!r}; write e.g. 'data:0.7+cosine:0.3'."
                ) from None
    else:
        raise ValueError(f"A measure must be a non-empty string or a mapping, got {spec!r}.")
    valid = valid_measure_names()
    out: dict[str, float] = {}
    for name, weight in items:
        if name not in valid:
            raise ValueError(f"Unknown measure {name!r}; valid choices: {', '.join(valid)} (combine with '+').")
        if name in out:
            raise ValueError(f"Measure {name!r} appears twice in {spec!r}.")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight <= 0:
            raise ValueError(f"The weight of measure {name!r} must be a positive number, got {weight!r}.")
        out[name] = float(weight)
    total = sum(out.values())
    return {name: weight / total for name, weight in out.items()}


def format_measure(parsed: Mapping[str, float]) -> str:
    """Canonical string of a parsed spec: ``"data"`` or ``"data:0.5+cosine:0.5"``."""
    if len(parsed) == 1:
        return next(iter(parsed))
    return "+".join(f"{name}:{weight:.6g}" for name, weight in parsed.items())


# ----------------------------------------------------------------------------- statistics
def rms_with_stderr(per_sample_ms: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Root of the mean over samples of per-sample mean squares, with its delta-method standard error.

    Args:
        per_sample_ms: (K, M) non-negative values: for each of K intervals, M samples.

    Returns:
        ``(rms, stderr)``, each a float64 array (K,).
    """
    ms = per_sample_ms.double()
    m = ms.shape[1]
    mean = ms.mean(1)
    se_mean = ms.std(1, unbiased=True) / np.sqrt(m)
    rms = torch.sqrt(mean)
    se = torch.where(rms > 0, se_mean / (2 * rms.clamp_min(1e-300)), torch.sqrt(se_mean))
    return rms.numpy(), se.numpy()


def _fd_jackknife(a: np.ndarray, b: np.ndarray, group_of: np.ndarray, groups: int) -> tuple[float, float]:
    """Frechet distance between two levels' features (same samples) and its grouped-jackknife standard error."""
    value = np.sqrt(fid_from_features(a, b))
    leave_out = np.array([np.sqrt(fid_from_features(a[group_of != g], b[group_of != g])) for g in range(groups)])
    se = np.sqrt((groups - 1) / groups * ((leave_out - leave_out.mean()) ** 2).sum())
    return float(value), float(se)


# ----------------------------------------------------------------------------- passes over the grid
def _batches(m: int, batch_size: int):
    for start in range(0, m, batch_size):
        yield slice(start, min(start + batch_size, m))


def model_pass(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    eps: torch.Tensor,
    sigma: np.ndarray,
    batch_size: int = 4096,
    progress: bool = False,
    cond: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Evaluate the denoiser once per sample at every grid level and collect squared differences.

    Args:
        denoiser: ``D(x, sigma)`` with x (B, *shape) and sigma (B,) -> (B, *shape); a conditional one with ``cond``.
        x0, eps: common random numbers (M, *shape).
        sigma: the ascending grid (K + 1,).
        cond: the condition of each x0 (M,) for a conditional denoiser (its class label), or None.

    Returns:
        ``({"data": ms, "noise": ms}, evaluations)``: per-interval, per-sample mean squares over
        dimensions (K, M) for both model measures (they share every evaluation), and the number of
        network evaluations spent, (K + 1) * M.

    Raises:
        ValueError: when the model returns non-finite values (naming the level).
    """
    m, k = x0.shape[0], len(sigma) - 1
    out = {"data": torch.zeros(k, m, dtype=torch.float64), "noise": torch.zeros(k, m, dtype=torch.float64)}
    evaluations = 0
    bar = tqdm(total=(k + 1) * m, desc="rate (model)", unit="eval", disable=not progress, leave=False)
    for sl in _batches(m, batch_size):
        prev = None
        den = bind(denoiser, cond, sl)
        for j, s in enumerate(sigma):
            s_b = torch.full((sl.stop - sl.start,), float(s), dtype=torch.float64)
            x = x0[sl] + float(s) * eps[sl]
            with torch.no_grad():
                d = den(x, s_b).to(torch.float64)
            if not torch.all(torch.isfinite(d)):
                raise ValueError(f"The model returned non-finite values at sigma={float(s):.6g}.")
            e = (x.to(torch.float64) - d) / float(s)
            evaluations += d.shape[0]
            bar.update(d.shape[0])
            if prev is not None:
                out["data"][j - 1, sl] = (d - prev[0]).flatten(1).pow(2).mean(1)
                out["noise"][j - 1, sl] = (e - prev[1]).flatten(1).pow(2).mean(1)
            prev = (d, e)
    bar.close()
    return out, evaluations


def _fine(denoiser, x: torch.Tensor, a: float, b: float, substeps: int) -> torch.Tensor:
    levels = np.exp(np.linspace(np.log(a), np.log(b), substeps + 1))
    for s, s_next in zip(levels[:-1], levels[1:], strict=True):
        x, _ = heun_step(denoiser, x, float(s), float(s_next))
    return x


def solver_pass(
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    eps: torch.Tensor,
    sigma: np.ndarray,
    sampler: str,
    substeps: int = SOLVER_SUBSTEPS,
    batch_size: int = 4096,
    progress: bool = False,
    cond: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Local errors of one ``sampler`` step over every grid interval (the ``solver-<sampler>`` measures).

    For the interval ``[sigma[j-1], sigma[j]]`` the step runs from ``x_a = x0 + sigma[j] eps`` down to
    ``sigma[j-1]`` and is compared with ``substeps`` Heun steps (uniform in log sigma) from the same point.
    For ``dpmpp_2m`` the step has its history: ``x_a`` is reached by a fine solve from ``x0 + sigma[j+1] eps``,
    whose prediction is the previous one (first order on the top interval, as the sampler's first step).

    Returns:
        ``(ms, evaluations)``: per-interval, per-sample mean squares of the local error over dimensions (K, M),
        and the network evaluations spent.
    """

    step = STEPS[sampler]
    m, k = x0.shape[0], len(sigma) - 1
    ms = torch.zeros(k, m, dtype=torch.float64)
    evaluations = 0
    per_step = {"euler": 1, "heun": 2, "dpmpp_2m": 1}[sampler]
    bar = tqdm(total=k * m, desc=f"rate (solver-{sampler})", unit="sample", disable=not progress, leave=False)
    for sl in _batches(m, batch_size):
        x0b, eb = x0[sl].double(), eps[sl].double()
        rows = x0b.shape[0]
        denoiser_b = bind(denoiser, cond, sl)
        with torch.no_grad():
            for j in range(k, 0, -1):
                a, b = float(sigma[j]), float(sigma[j - 1])
                carry = None
                if sampler == "dpmpp_2m" and j < k:
                    p = float(sigma[j + 1])
                    x_p = x0b + p * eb
                    carry = (p, denoiser_b(x_p, torch.full((rows,), p, dtype=torch.float64)))
                    x_a = _fine(denoiser_b, x_p, p, a, substeps)
                    evaluations += rows * (1 + 2 * substeps)
                else:
                    x_a = x0b + a * eb
                stepped, _ = step(denoiser_b, x_a, a, b, carry)
                fine = _fine(denoiser_b, x_a, a, b, substeps)
                if not (torch.all(torch.isfinite(stepped)) and torch.all(torch.isfinite(fine))):
                    raise ValueError(f"The model returned non-finite values between sigma={b:.6g} and {a:.6g}.")
                ms[j - 1, sl] = (stepped - fine).flatten(1).pow(2).mean(1)
                evaluations += rows * (per_step + 2 * substeps)
                bar.update(rows)
    bar.close()
    return ms, evaluations


def solver_discrepancy(sampler: str, ms: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The ``solver-<sampler>`` measure from :func:`solver_pass`'s mean squares (K, M): the RMS local error raised
    to ``1 / (p + 1)`` for the sampler's order ``p`` (the local error scales as ``h^(p+1)``, its root is additive
    like a distance), with its delta-method standard error; ``(discrepancy (K,), stderr (K,))``, float64."""
    rms, rms_se = rms_with_stderr(ms)
    power = 1.0 / (ORDER[sampler] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.where(rms > 0, power * rms ** (power - 1.0) * rms_se, 0.0)
    return rms**power, se


def fid_pass(
    x0: torch.Tensor,
    eps: torch.Tensor,
    sigma: np.ndarray,
    feature_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 4096,
    groups: int = 10,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The ``fid`` measure on the grid.

    The first M/2 draws are used as antithetic pairs ``(x0, eps)``, ``(x0, -eps)``, so M features
    are computed per level.

    Args:
        x0, eps: common random numbers (M, *shape); M >= 4 * groups.
        sigma: the ascending grid (K + 1,).
        feature_fn: features of VP-scaled data (B, *shape) -> (B, F) tensor or array; identity
            (flatten) if None. For images, a :class:`crs.metrics.FeatureExtractor` (it clips the
            noised images to [-1, 1], as saving them as images would).
        groups: jackknife groups (contiguous blocks of samples).

    Returns:
        ``(discrepancy (K,), stderr (K,), floor (K + 1,), feature_evaluations)``; ``floor`` is the
        Frechet distance between two independent halves of the samples at the same level.
    """
    k = len(sigma) - 1
    if x0.shape[0] < 4 * groups:
        raise ValueError(f"The fid measure needs at least {4 * groups} samples, got {x0.shape[0]}.")
    # Antithetic pairs (x0, eps), (x0, -eps): the sample cross-covariance of data and noise is then
    # exactly zero, which removes the upward bias it causes where the true change is small.
    pairs = x0.shape[0] // 2
    x0 = x0[:pairs].repeat_interleave(2, dim=0)
    eps = torch.stack([eps[:pairs], -eps[:pairs]], dim=1).flatten(0, 1)
    m = 2 * pairs
    feature_fn = feature_fn or (lambda x: x.flatten(1))
    group_of = np.minimum((np.arange(m) // 2) * groups // pairs, groups - 1)  # pairs stay in one group
    half = np.arange(groups) < groups // 2
    disc, se, floor, prev = np.zeros(k), np.zeros(k), np.zeros(k + 1), None
    evaluations = 0
    for j, s in enumerate(tqdm(sigma, desc="rate (fid)", unit="level", disable=not progress, leave=False)):
        parts = []
        for sl in _batches(m, batch_size):
            with torch.no_grad():
                feats = feature_fn(float(sigma_to_alpha(s)) * (x0[sl] + float(s) * eps[sl]))
            feats = np.asarray(
                feats.detach().to(torch.float64).cpu() if isinstance(feats, torch.Tensor) else feats, dtype=np.float64
            )
            if not np.all(np.isfinite(feats)):
                raise ValueError(f"The feature extractor returned non-finite values at sigma={float(s):.6g}.")
            parts.append(feats.reshape(len(feats), -1))
            evaluations += len(feats)
        cur = np.concatenate(parts)
        in_half = half[group_of]
        floor[j] = np.sqrt(fid_from_features(cur[in_half], cur[~in_half]))
        if prev is not None:
            disc[j - 1], se[j - 1] = _fd_jackknife(prev, cur, group_of, groups)
        prev = cur
    return disc, se, floor, evaluations


def schedule_pass(name: str, sigma: np.ndarray) -> np.ndarray:
    """Discrepancy implied by a fixed baseline schedule: the time it spends in each interval (K,)."""
    return np.abs(np.diff(baseline_t_fn(name, float(sigma[0]), float(sigma[-1]))(sigma)))


def combine_velocities(
    weights: Mapping[str, float], parts: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted geometric mean of per-interval discrepancies, each first normalised to unit total.

    On one grid the velocity of interval k is ``d_k / |delta alpha_k|`` for every measure, so the
    geometric mean of normalised discrepancies is the discrepancy of the geometric mean of
    normalised velocities. Relative standard errors combine as independent (an approximation).

    Args:
        weights: ``{name: weight}`` summing to 1.
        parts: ``{name: (discrepancy (K,), stderr (K,))}``.

    Returns:
        ``(discrepancy (K,), stderr (K,))`` of the combination. By the inequality of the means its
        total is at most 1 (1 only when the parts are proportional): it is not normalised, since a
        schedule depends only on the shape of the discrepancy (``F`` is normalised to ``F(sigma_max) = 1``).
    """
    log_d = 0.0
    rel_var = 0.0
    for name, w in weights.items():
        d, se = parts[name]
        total = d.sum()
        if not total > 0:
            raise ValueError(f"The measure {name!r} is zero over the whole grid; it cannot be combined.")
        log_d = log_d + w * np.log(np.clip(d / total, 1e-300, None))
        rel_var = rel_var + (w * np.divide(se, d, out=np.zeros_like(se), where=d > 0)) ** 2
    d = np.exp(log_d)
    return d, d * np.sqrt(rel_var)
