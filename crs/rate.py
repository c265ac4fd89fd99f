"""Rate estimation: the discrepancy per interval of a logsnr-uniform grid, and the velocity.

``estimate_rate`` draws one batch of data and noise (common random numbers), runs the chosen
measure over the grid ``sigma_0 < ... < sigma_K`` (uniform in logsnr) and returns a
:class:`RateEstimate`: discrepancy and standard error per interval, the velocity with respect to
alpha ``v_k = d_k / |alpha(sigma_k) - alpha(sigma_{k+1})|``, and what it cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from crs.args import check_int, check_number
from crs.conditioning import conditioning_of, guidance_evaluations, guidance_of
from crs.io import atomic_write_json, read_json
from crs.measures import (
    MODEL_MEASURES,
    SOLVER_MEASURES,
    combine_velocities,
    fid_pass,
    format_measure,
    model_pass,
    parse_measure,
    rms_with_stderr,
    schedule_pass,
    solver_discrepancy,
    solver_pass,
)
from crs.protocols import Denoiser, check_data_matches
from crs.schedules import check_sigma_range, fit_model_range, sigma_to_alpha, sigma_to_logsnr

__all__ = ["RateEstimate", "check_rate_inputs", "estimate_rate", "logsnr_grid"]


def logsnr_grid(sigma_min: float, sigma_max: float, grid_size: int) -> np.ndarray:
    """Ascending grid of ``grid_size + 1`` noise levels, uniform in logsnr (= uniform in log sigma)."""
    check_sigma_range(sigma_min, sigma_max)
    check_int("grid_size", grid_size, 2)
    grid = np.exp(np.linspace(math.log(sigma_min), math.log(sigma_max), grid_size + 1))
    grid[0], grid[-1] = sigma_min, sigma_max
    return grid


@dataclass
class RateEstimate:
    """Discrepancy of a measure between neighbouring levels of an ascending sigma grid.

    Attributes:
        measure: canonical measure spec (e.g. ``"data"`` or ``"data:0.5+cosine:0.5"``).
        sigma: ascending grid, float64 (K + 1,).
        discrepancy: metric-like discrepancy per interval, float64 (K,), non-negative.
        stderr: its standard error, float64 (K,).
        evaluations: denoiser (network) evaluations spent.
        feature_evaluations: feature-extractor evaluations spent (``fid``).
        seconds: wall time of the estimation.
        floor: finite-sample floor of the ``fid`` measure (median over levels), else None.
        components: per-part ``{"discrepancy", "stderr"}`` of a combined measure.
        meta: provenance (dataset, model, n_samples, seed, ...).
    """

    measure: str
    sigma: np.ndarray
    discrepancy: np.ndarray
    stderr: np.ndarray
    evaluations: int = 0
    feature_evaluations: int = 0
    seconds: float = 0.0
    floor: float | None = None
    components: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        self.discrepancy = np.asarray(self.discrepancy, dtype=np.float64)
        self.stderr = np.asarray(self.stderr, dtype=np.float64)
        k = len(self.sigma) - 1
        if self.sigma.ndim != 1 or k < 2:
            raise ValueError(f"A rate needs a 1-D sigma grid of at least 3 values, got shape {self.sigma.shape}.")
        if self.discrepancy.shape != (k,) or self.stderr.shape != (k,):
            raise ValueError(
                f"`discrepancy` and `stderr` need one value per interval ({k}), "
                f"got {self.discrepancy.shape} and {self.stderr.shape}."
            )
        for name in ("sigma", "discrepancy", "stderr"):
            values = getattr(self, name)
            if not np.all(np.isfinite(values)):
                raise ValueError(
                    f"The rate's `{name}` holds non-finite values (at index {int(np.argmin(np.isfinite(values)))})."
                )
            if np.any(values < 0):
                raise ValueError(f"The rate's `{name}` holds negative values (at index {int(np.argmax(values < 0))}).")
        if self.sigma[0] <= 0 or np.any(np.diff(self.sigma) <= 0):
            raise ValueError("The rate's `sigma` grid must be positive and strictly ascending.")

    @property
    def alpha(self) -> np.ndarray:
        """alpha at the grid levels (K + 1,), descending."""
        return sigma_to_alpha(self.sigma)

    @property
    def logsnr(self) -> np.ndarray:
        """logsnr at the grid levels (K + 1,), descending."""
        return sigma_to_logsnr(self.sigma)

    @property
    def logsnr_mid(self) -> np.ndarray:
        """logsnr at the interval midpoints (K,)."""
        return 0.5 * (self.logsnr[1:] + self.logsnr[:-1])

    @property
    def sigma_mid(self) -> np.ndarray:
        """Geometric midpoints of the intervals (K,)."""
        return np.sqrt(self.sigma[1:] * self.sigma[:-1])

    def velocity(self, wrt: str = "alpha") -> np.ndarray:
        """Velocity per interval: discrepancy over the interval's length in ``alpha``, ``sigma`` or ``logsnr``."""
        grids = {"alpha": self.alpha, "sigma": self.sigma, "logsnr": self.logsnr}
        if wrt not in grids:
            raise ValueError(f"Unknown `wrt` {wrt!r}; valid choices: {', '.join(grids)}.")
        return self.discrepancy / np.abs(np.diff(grids[wrt]))

    def velocity_stderr(self, wrt: str = "alpha") -> np.ndarray:
        """Standard error of :meth:`velocity`."""
        return self.stderr * self.velocity(wrt) / np.where(self.discrepancy > 0, self.discrepancy, np.inf)

    def to_dict(self) -> dict:
        """JSON form: the keys of the dataclass, plus ``velocity`` (w.r.t. alpha) and ``grid_size``."""
        return {
            "measure": self.measure,
            "grid_size": len(self.sigma) - 1,
            "sigma": self.sigma.tolist(),
            "discrepancy": self.discrepancy.tolist(),
            "stderr": self.stderr.tolist(),
            "velocity": self.velocity().tolist(),
            "evaluations": int(self.evaluations),
            "feature_evaluations": int(self.feature_evaluations),
            "seconds": float(self.seconds),
            "floor": self.floor,
            "components": {
                k: {kk: np.asarray(vv).tolist() for kk, vv in v.items()} for k, v in self.components.items()
            },
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> RateEstimate:
        missing = [k for k in ("measure", "sigma", "discrepancy", "stderr") if k not in data]
        if missing:
            raise ValueError(f"A rate file needs the keys {missing}; found {sorted(data)}.")
        comps = {
            k: {kk: np.asarray(vv, dtype=np.float64) for kk, vv in v.items()}
            for k, v in data.get("components", {}).items()
        }
        return cls(
            measure=data["measure"],
            sigma=data["sigma"],
            discrepancy=data["discrepancy"],
            stderr=data["stderr"],
            evaluations=data.get("evaluations", 0),
            feature_evaluations=data.get("feature_evaluations", 0),
            seconds=data.get("seconds", 0.0),
            floor=data.get("floor"),
            components=comps,
            meta=data.get("meta", {}),
        )

    def save(self, path) -> None:
        """Write ``rate.json`` atomically."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path) -> RateEstimate:
        """Read and validate a rate file (ValueError on non-finite or negative values)."""
        return cls.from_dict(read_json(path, "rate file"))


def estimate_rate(
    measure: str | Mapping[str, float],
    data,
    denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    grid_size: int = 64,
    n_samples: int = 4096,
    seed: int = 0,
    batch_size: int = 4096,
    feature_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    jackknife_groups: int = 10,
    progress: bool = False,
) -> RateEstimate:
    """Estimate the discrepancy rate of ``measure`` on a logsnr-uniform grid.

    Args:
        measure: ``fid``, ``data``, ``noise``, a baseline name (its implied velocity) or a
            combination (see :func:`crs.measures.parse_measure`).
        data: a dataset (``sample(n, generator)``, ``shape``), e.g. from :func:`crs.make_dataset`;
            None is allowed for baseline-implied measures, which need no samples.
        denoiser: x0-prediction ``D(x, sigma)``; needed by ``data`` and ``noise``. For analytic
            data pass ``data.denoiser`` (the exact one). A conditional model (plain, or guided:
            :class:`crs.conditioning.Guided`) is evaluated at each x0's own class label, drawn with it from labelled
            data (``data.sample_labeled``): the rate of the conditional marginals averaged over the data's classes,
            under the guidance the denoiser applies (docs/method.md, section 10); guided with scale 0, it is the
            model's unconditional branch, and the data need no labels. For a text-conditional model, label ``k`` is
            prompt ``k`` of its table.
        sigma_min, sigma_max: grid range, ``0 < sigma_min < sigma_max``. None takes the model's own end
            (:func:`crs.schedules.fit_model_range`, which then fits a given other end into the model's range, with a
            warning), EDM's 0.002 / 80 without a model or for one without a range (exact denoisers).
        grid_size: number of intervals K (>= 2); the grid has K + 1 levels.
        n_samples: M, samples of x0 and eps shared by every level (common random numbers).
        seed: seeds the one torch.Generator that draws x0 and eps.
        batch_size: samples per network call.
        feature_fn: feature map for ``fid`` (identity by default, for low-dimensional data).
        jackknife_groups: groups for the ``fid`` standard error.
        progress: show tqdm progress bars.

    Returns:
        A :class:`RateEstimate`; model measures cost (K + 1) * M network evaluations in total.

    Raises:
        ValueError: on bad input (a model that takes samples of another shape than the data's among it),
            before any work.
    """
    parsed = parse_measure(measure)
    sigma_min, sigma_max = _grid_range(denoiser, sigma_min, sigma_max)
    sigma = logsnr_grid(sigma_min, sigma_max, grid_size)
    check_int("jackknife_groups", jackknife_groups, 2)
    check_rate_inputs(measure, sigma_min, sigma_max, grid_size, n_samples, jackknife_groups)
    check_int("batch_size", batch_size, 1)
    needs_model = [name for name in parsed if name in MODEL_MEASURES + SOLVER_MEASURES]
    if needs_model and denoiser is None:
        raise ValueError(
            f"The measure {format_measure(parsed)!r} needs a model (`denoiser`); only 'fid' and baselines do not."
        )
    needs_data = bool(needs_model) or "fid" in parsed
    if needs_data and data is None:
        raise ValueError(f"The measure {format_measure(parsed)!r} needs data; only baseline-implied measures do not.")
    # a conditional model is evaluated at each x0's own label; at guidance 0 (its unconditional branch, the rate of
    # the data distribution itself) unlabelled data will do
    conditional = bool(needs_model) and conditioning_of(denoiser) is not None
    if conditional and guidance_of(denoiser) == 0.0 and getattr(data, "num_classes", None) is None:
        conditional = False
    if needs_model:
        check_data_matches(denoiser, data.shape)
    if conditional and getattr(data, "num_classes", None) is None:
        raise ValueError(
            f"The model is conditional but the dataset {getattr(data, 'name', data)!r} has no class labels to "
            "condition it on."
        )
    start = time.perf_counter()
    cond = None
    if needs_data:
        gen = torch.Generator().manual_seed(int(seed))
        x0, cond = data.sample_labeled(n_samples, gen) if conditional else (data.sample(n_samples, gen), None)
        eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    evaluations = feature_evaluations = 0
    floor = None
    if any(name in MODEL_MEASURES for name in parsed):
        ms, evaluations = model_pass(denoiser, x0, eps, sigma, batch_size, progress, cond)
        for name in MODEL_MEASURES:
            if name in parsed:
                parts[name] = rms_with_stderr(ms[name])
    for name in parsed:
        if name in SOLVER_MEASURES:
            sampler = name.removeprefix("solver-")
            ms, spent = solver_pass(
                denoiser, x0, eps, sigma, sampler, batch_size=batch_size, progress=progress, cond=cond
            )
            evaluations += spent
            parts[name] = solver_discrepancy(sampler, ms)
    if "fid" in parsed:
        disc, se, floors, feature_evaluations = fid_pass(
            x0, eps, sigma, feature_fn, batch_size, jackknife_groups, progress
        )
        parts["fid"] = (disc, se)
        floor = float(np.median(floors))
    evaluations *= guidance_evaluations(denoiser)  # network calls: two per evaluation under guidance
    for name in parsed:
        if name not in parts:
            parts[name] = (schedule_pass(name, sigma), np.zeros(len(sigma) - 1))
    if len(parsed) == 1:
        disc, se = parts[next(iter(parsed))]
    else:
        disc, se = combine_velocities(parsed, parts)
    if not disc.sum() > 0:
        raise ValueError(
            f"The measure {format_measure(parsed)!r} is zero over the whole grid: the noised marginals do not change "
            "under it (e.g. `fid` on N(0, I) data), so it defines no schedule."
        )
    return RateEstimate(
        measure=format_measure(parsed),
        sigma=sigma,
        discrepancy=disc,
        stderr=se,
        evaluations=evaluations,
        feature_evaluations=feature_evaluations,
        seconds=time.perf_counter() - start,
        floor=floor,
        components={k: {"discrepancy": v[0], "stderr": v[1]} for k, v in parts.items()} if len(parsed) > 1 else {},
        meta={
            "n_samples": int(n_samples),
            "seed": int(seed),
            "dataset": data.name if data is not None else None,
            **({"guidance": guidance_of(denoiser)} if needs_model and conditioning_of(denoiser) is not None else {}),
        },
    )


def _grid_range(denoiser, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    """The rate's range: a None end is the model's own (:func:`crs.schedules.fit_model_range`), or EDM's 0.002 / 80
    without a model, for a plain callable, or for a model without a range."""
    ranged = isinstance(denoiser, Denoiser) and (denoiser.sigma_min is not None or denoiser.sigma_max is not None)
    if (sigma_min is None or sigma_max is None) and ranged:
        return fit_model_range(denoiser, sigma_min, sigma_max)
    return (0.002 if sigma_min is None else sigma_min), (80.0 if sigma_max is None else sigma_max)


def check_rate_inputs(
    measures,
    sigma_min: float | None,
    sigma_max: float | None,
    grid_size: int,
    n_samples: int,
    jackknife_groups: int = 10,
) -> None:
    """Validate everything a rate-estimation run takes, before any work (ValueError naming the problem).

    Args:
        measures: one measure spec or a list of them.
        sigma_min, sigma_max: the range; None stands for a model's own end (not known yet), then only
            the other end is checked (positive, finite).
        n_samples: at least 2; at least ``4 * jackknife_groups`` when a spec uses ``fid``.
    """
    specs = [measures] if isinstance(measures, (str, Mapping)) else list(measures)
    uses_fid = any("fid" in parse_measure(spec) for spec in specs)
    if sigma_min is not None and sigma_max is not None:
        logsnr_grid(sigma_min, sigma_max, grid_size)
    else:
        for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            if value is not None:
                check_number(name, value, positive=True)
        check_int("grid_size", grid_size, 2)
    check_int("n_samples", n_samples, 4 * jackknife_groups if uses_fid else 2)
