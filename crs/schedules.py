"""Noise schedules in the ``sigmas`` convention, and the continuous-schedule object.

Conventions (``docs/method.md`` section 1):

* ``sigma`` is the VE noise level, ``x_sigma = x0 + sigma * eps``.
* ``alpha = 1 / sqrt(1 + sigma^2)`` is the VP signal coefficient, ``logsnr = -2 log sigma``.
* A continuous schedule maps ``t`` in [0, 1] to ``sigma(t)``, increasing, with
  ``sigma(0) = sigma_min`` and ``sigma(1) = sigma_max``.
* A sampling schedule ``sigmas`` is a 1-D float64 tensor of ``n`` strictly descending values from
  ``sigma_max`` to ``sigma_min`` followed by a final 0 (``n`` steps), obtained as
  ``sigmas_i = sigma(1 - i / (n - 1))``.

Every baseline below is such a continuous map ``t -> sigma`` (``baseline_sigma_fn``); the step
lists are its discretisation, which is how diffusers and k-diffusion build them too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.interpolate import PchipInterpolator
from scipy.stats import beta as beta_dist

from crs.args import check_int
from crs.io import atomic_write_json, read_json
from crs.protocols import Denoiser

__all__ = [
    "BASELINES",
    "FLOW_BASELINES",
    "Schedule",
    "alpha_to_sigma",
    "ays_sigmas",
    "baseline_sigma_fn",
    "baseline_sigmas",
    "baseline_t_fn",
    "check_sigma_range",
    "check_steps",
    "fit_model_range",
    "fit_range",
    "fit_schedule",
    "log_gap",
    "logsnr_to_sigma",
    "sigma_to_alpha",
    "sigma_to_logsnr",
]

# Baselines of docs/method.md section 6 that are defined on any [sigma_min, sigma_max].
# Align Your Steps (`ays`) is separate: its published lists fix their own range.
BASELINES = ("karras", "exponential", "vp", "cosine", "kl_optimal", "beta")
# The shipped schedules of flow-matching models (crs.flow): uniform in flow time, shifted. Accepted wherever a
# baseline is named, but not in the default lists above (the unconditional suite's grids stay as they are).
FLOW_BASELINES = ("flow", "sd3", "flux")
_FLOW_PRESETS = {"flow": {}, "sd3": {"shift": 3.0}, "flux": {"mu": 1.15}}  # flux: Flux.1 at 1024 px (4096 tokens)


# ----------------------------------------------------------------------------- conversions
def sigma_to_alpha(sigma):
    """VP signal coefficient ``alpha = 1/sqrt(1 + sigma^2)``; works on floats, arrays and tensors."""
    return 1.0 / (1.0 + sigma**2) ** 0.5


def alpha_to_sigma(alpha):
    """Inverse of :func:`sigma_to_alpha`: ``sigma = sqrt(1 - alpha^2) / alpha`` for alpha in (0, 1]."""
    return (1.0 - alpha**2) ** 0.5 / alpha


def sigma_to_logsnr(sigma):
    """``logsnr = -2 log sigma`` (= log(alpha^2 / (1 - alpha^2)))."""
    if isinstance(sigma, torch.Tensor):
        return -2.0 * torch.log(sigma)
    return -2.0 * np.log(sigma)


def logsnr_to_sigma(logsnr):
    """Inverse of :func:`sigma_to_logsnr`: ``sigma = exp(-logsnr / 2)``."""
    if isinstance(logsnr, torch.Tensor):
        return torch.exp(-0.5 * logsnr)
    return np.exp(-0.5 * np.asarray(logsnr, dtype=np.float64))


# ----------------------------------------------------------------------------- validation
def log_gap(a, b) -> float:
    """The largest gap in log sigma between two discretised schedules of the same length (descending levels, final 0
    left out): how far apart two schedules place their steps."""
    a, b = (torch.as_tensor(x, dtype=torch.float64) for x in (a, b))
    if a.shape != b.shape:
        raise ValueError(f"Schedules of {len(a)} and {len(b)} levels cannot be compared level by level.")
    return float((a[:-1].log() - b[:-1].log()).abs().max())


def check_sigma_range(sigma_min: float, sigma_max: float) -> None:
    """Raise ``ValueError`` unless ``0 < sigma_min < sigma_max`` are finite numbers."""
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
        if value <= 0:
            raise ValueError(f"`{name}` must be positive, got {value!r}.")
    if sigma_min >= sigma_max:
        raise ValueError(f"`sigma_min` ({sigma_min}) must be smaller than `sigma_max` ({sigma_max}).")


def check_steps(n: int) -> None:
    """Raise ``ValueError`` unless ``n`` is an integer step count of at least 2."""
    check_int("steps", n, 2, what="A step count")


def _finish(sigmas_desc: np.ndarray) -> torch.Tensor:
    """Append the final 0 and return a float64 tensor."""
    return torch.tensor(np.append(np.asarray(sigmas_desc, dtype=np.float64), 0.0), dtype=torch.float64)


# ----------------------------------------------------------------------------- baselines
def _vp_t(sigma, beta_d: float = 19.9, beta_min: float = 0.1):
    """Time of the VP SDE with linear betas (DDPM): inverse of sigma(t)^2 = exp(beta_d t^2/2 + beta_min t) - 1."""
    return (
        np.sqrt(beta_min**2 + 2.0 * beta_d * np.log1p(np.asarray(sigma, dtype=np.float64) ** 2)) - beta_min
    ) / beta_d


def _cosine_t(sigma, s: float = 0.008):
    """Time of the iDDPM cosine schedule alpha_bar(t) = f(t)/f(0), f(t) = cos^2((t+s)/(1+s) pi/2)."""
    f0 = math.cos(s / (1.0 + s) * math.pi / 2.0) ** 2
    alpha_bar = 1.0 / (1.0 + np.asarray(sigma, dtype=np.float64) ** 2)
    return np.arccos(np.sqrt(alpha_bar * f0)) * (1.0 + s) * 2.0 / math.pi - s


def _baseline_pair(name: str, lo: float, hi: float, kwargs: dict):
    """Closed forms ``(t -> sigma, sigma -> t)`` of a baseline on [lo, hi] (see baseline_sigma_fn)."""
    if name == "karras":
        rho = float(kwargs.pop("rho", 7.0))
        a, b = lo ** (1.0 / rho), hi ** (1.0 / rho)
        return (lambda t: (a + t * (b - a)) ** rho), (lambda s: (s ** (1.0 / rho) - a) / (b - a))
    if name == "exponential":
        a, b = math.log(lo), math.log(hi)
        return (lambda t: np.exp(a + t * (b - a))), (lambda s: (np.log(s) - a) / (b - a))
    if name == "vp":
        beta_d, beta_min = float(kwargs.pop("beta_d", 19.9)), float(kwargs.pop("beta_min", 0.1))
        a, b = _vp_t(lo, beta_d, beta_min), _vp_t(hi, beta_d, beta_min)

        def vp(t):
            u = a + t * (b - a)
            return np.sqrt(np.expm1(0.5 * beta_d * u**2 + beta_min * u))

        return vp, (lambda s: (_vp_t(s, beta_d, beta_min) - a) / (b - a))
    if name == "cosine":
        s_off = float(kwargs.pop("s", 0.008))
        f0 = math.cos(s_off / (1.0 + s_off) * math.pi / 2.0) ** 2
        a, b = _cosine_t(lo, s_off), _cosine_t(hi, s_off)

        def cosine(t):
            u = (a + t * (b - a) + s_off) / (1.0 + s_off) * math.pi / 2.0
            return np.sqrt(f0 / np.cos(u) ** 2 - 1.0)

        return cosine, (lambda s: (_cosine_t(s, s_off) - a) / (b - a))
    if name == "kl_optimal":
        a, b = math.atan(lo), math.atan(hi)
        return (lambda t: np.tan(a + t * (b - a))), (lambda s: (np.arctan(s) - a) / (b - a))
    if name == "beta":
        a, b = float(kwargs.pop("a", 0.6)), float(kwargs.pop("b", 0.6))
        return (lambda t: lo + beta_dist.ppf(t, a, b) * (hi - lo)), (
            lambda s: beta_dist.cdf((s - lo) / (hi - lo), a, b)
        )
    if name in FLOW_BASELINES:
        from crs.flow import flow_shift_scale

        given = {k: kwargs.pop(k) for k in ("shift", "mu") if k in kwargs}
        preset = given or _FLOW_PRESETS[name]
        c = flow_shift_scale(preset.get("shift"), preset.get("mu"))
        u_lo, u_hi = lo / (c + lo), hi / (c + hi)  # the ends in unshifted flow time: sigma = c u / (1 - u)

        def shifted(t):
            u = u_lo + t * (u_hi - u_lo)
            return c * u / (1.0 - u)

        return shifted, (lambda s: (s / (c + s) - u_lo) / (u_hi - u_lo))
    raise ValueError(f"Unknown baseline {name!r}; valid choices: {', '.join(BASELINES + FLOW_BASELINES + ('ays',))}.")


def _baseline(name: str, sigma_min: float, sigma_max: float, kwargs: dict):
    check_sigma_range(sigma_min, sigma_max)
    kwargs = dict(kwargs)
    pair = _baseline_pair(name, float(sigma_min), float(sigma_max), kwargs)
    if kwargs:
        raise ValueError(f"Unknown keyword(s) {sorted(kwargs)} for baseline {name!r}.")
    return pair


def baseline_sigma_fn(name: str, sigma_min: float, sigma_max: float, **kwargs) -> Callable[[np.ndarray], np.ndarray]:
    """Continuous form ``t -> sigma(t)`` of a baseline schedule on ``[sigma_min, sigma_max]``.

    Args:
        name: one of :data:`BASELINES`:
            ``karras`` (EDM, Karras et al. 2022, kwarg ``rho=7``), ``exponential`` (uniform in
            log sigma = uniform logsnr), ``vp`` (uniform time of the VP SDE with DDPM's linear betas,
            kwargs ``beta_d=19.9``, ``beta_min=0.1``), ``cosine`` (uniform time of the iDDPM cosine
            schedule, kwarg ``s=0.008``; with ``s=0`` it coincides with ``kl_optimal``),
            ``kl_optimal`` (tan interpolation, Align Your Steps), ``beta`` (Beta(a, b) quantiles,
            diffusers ``use_beta_sigmas``, kwargs ``a=0.6``, ``b=0.6``); or one of :data:`FLOW_BASELINES`, the
            schedules flow-matching models ship with (:mod:`crs.flow`), uniform in flow time and shifted: ``flow``
            (no shift), ``sd3`` (Stable Diffusion 3's static ``shift=3``), ``flux`` (Flux's exponential shift,
            ``mu=1.15``, 1024 px; :func:`crs.flow.flux_mu` gives other sizes'); kwarg ``shift`` or ``mu`` instead.
        sigma_min, sigma_max: the range; ``sigma(0) = sigma_min``, ``sigma(1) = sigma_max``.

    Returns:
        A function of a float64 array ``t`` in [0, 1] returning ``sigma(t)`` of the same shape.
    """
    fn, _ = _baseline(name, sigma_min, sigma_max, kwargs)
    lo, hi = float(sigma_min), float(sigma_max)

    def sigma_fn(t):
        t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
        out = np.asarray(fn(t), dtype=np.float64)
        # pin the end points exactly (round-off in the closed forms otherwise moves them by ~1e-16)
        return np.where(t <= 0.0, lo, np.where(t >= 1.0, hi, out))

    return sigma_fn


def baseline_t_fn(name: str, sigma_min: float, sigma_max: float, **kwargs) -> Callable[[np.ndarray], np.ndarray]:
    """Closed-form inverse ``sigma -> t`` of :func:`baseline_sigma_fn` (sigma clipped to the range)."""
    _, inv = _baseline(name, sigma_min, sigma_max, kwargs)
    lo, hi = float(sigma_min), float(sigma_max)

    def t_fn(sigma):
        s = np.clip(np.asarray(sigma, dtype=np.float64), lo, hi)
        return np.clip(np.asarray(inv(s), dtype=np.float64), 0.0, 1.0)

    return t_fn


# Published Align Your Steps lists for 10 steps (10 noise levels, then the final 0), exactly as
# diffusers.schedulers.AysSchedules holds them (tests/test_schedules.py checks).
_AYS = {
    "StableDiffusion": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152],
    "StableDiffusionXL": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.38, 0.234, 0.113],
    "StableDiffusionVideo": [700.0, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034],
}


def ays_sigmas(n: int, model: str = "StableDiffusion") -> torch.Tensor:
    """Align Your Steps sigmas (Sabour et al. 2024) for ``n`` steps.

    The published 10-step lists are used as they are for ``n = 10`` and log-linearly interpolated
    (the paper's recipe) for other step counts. The range is the list's own, not a parameter.

    Args:
        n: number of steps (>= 2).
        model: ``StableDiffusion``, ``StableDiffusionXL`` or ``StableDiffusionVideo``.

    Returns:
        float64 tensor of ``n + 1`` values, descending, final 0.
    """
    check_steps(n)
    if model not in _AYS:
        raise ValueError(f"Unknown Align Your Steps model {model!r}; valid choices: {', '.join(_AYS)}.")
    ref = np.asarray(_AYS[model], dtype=np.float64)
    if n == len(ref):
        return _finish(ref)
    xs = np.linspace(0.0, 1.0, len(ref))
    new = np.exp(np.interp(np.linspace(0.0, 1.0, n), xs, np.log(ref[::-1])))[::-1]
    return _finish(new)


def baseline_sigmas(name: str, n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, **kwargs) -> torch.Tensor:
    """A baseline sampling schedule with ``n`` steps.

    Args:
        name: one of :data:`BASELINES`, or ``ays`` (kwarg ``model``; ignores the range).
        n: number of steps (>= 2); ``n`` noise levels then a final 0.
        sigma_min, sigma_max: the range (EDM's 0.002 / 80 by default).
        **kwargs: the baseline's own parameters, see :func:`baseline_sigma_fn`.

    Returns:
        float64 tensor of ``n + 1`` values: ``sigma_max`` ... ``sigma_min`` strictly descending, then 0.
    """
    check_steps(n)
    if name == "ays":
        return ays_sigmas(n, **kwargs)
    fn = baseline_sigma_fn(name, sigma_min, sigma_max, **kwargs)
    return _finish(fn(1.0 - np.arange(n) / (n - 1)))


# ----------------------------------------------------------------------------- continuous schedule
def fit_range(
    lo: float,
    hi: float,
    range_min: float | None,
    range_max: float | None,
    subject: str = "The noise range",
    owner: str | None = None,
    stacklevel: int = 2,
) -> tuple[float, float]:
    """The one rule for fitting noise levels ``[lo, hi]`` into a model's range ``[range_min, range_max]``.

    Inside the range (to a relative 1e-6, so that a range read back from JSON or float32 fits) it is returned
    unchanged; reaching outside, it is cut to the range with a warning naming ``subject`` and ``owner`` (default:
    the range itself). ``None`` for an end of the range leaves that end free. Everything fitted to a model's range
    follows it: numbers (here), a model's range (:func:`fit_model_range`), a schedule (:meth:`Schedule.fit`) and a
    schedule for several models (:func:`fit_schedule`).
    """
    new_lo = lo if range_min is None or lo >= range_min * (1 - 1e-6) else float(range_min)
    new_hi = hi if range_max is None or hi <= range_max * (1 + 1e-6) else float(range_max)
    if (new_lo, new_hi) != (lo, hi):
        owner = owner or f"[{range_min or 0.0:.4g}, {range_max or math.inf:.4g}]"
        warnings.warn(
            f"{subject} [{lo:.4g}, {hi:.4g}] reaches outside the noise range of {owner}: "
            f"clipped to [{new_lo:.4g}, {new_hi:.4g}].",
            stacklevel=stacklevel + 1,
        )
    return new_lo, new_hi


def fit_model_range(
    denoiser: Denoiser, sigma_min: float | None = None, sigma_max: float | None = None
) -> tuple[float, float]:
    """The noise range to use with a model, fitted into its ``[denoiser.sigma_min, denoiser.sigma_max]`` by
    :func:`fit_range` (with a warning when that cuts it).

    A None end takes the model's own, or EDM's 0.002 / 80 for a model without a range (exact denoisers).
    Returns ``(sigma_min, sigma_max)`` as floats.
    """
    lo, hi = denoiser.sigma_min, denoiser.sigma_max
    new_min = float(sigma_min) if sigma_min is not None else (lo if lo is not None else 0.002)
    new_max = float(sigma_max) if sigma_max is not None else (hi if hi is not None else 80.0)
    owner = f"the model [{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else "the model"
    return fit_range(new_min, new_max, lo, hi, "The noise range", owner, stacklevel=2)


class Schedule:
    """A continuous noise schedule ``t -> sigma(t)``, monotone increasing on [0, 1].

    It is stored as a table of knots ``(t_j, sigma_j)`` (``t`` from 0 to 1, ``sigma`` from
    ``sigma_min`` to ``sigma_max``, both strictly increasing) and interpolated with PCHIP in
    ``log sigma``, which keeps it monotone. The same object gives the sampling schedule for any
    step count (:meth:`discretize`) and the training distribution of noise levels
    (:meth:`sample_sigmas`, :meth:`density`).

    Args:
        t: knots in time, strictly increasing from 0 to 1.
        sigma: noise levels at the knots, strictly increasing and positive.
        meta: free-form JSON-serialisable metadata saved with the schedule (e.g. ``xi``, measure).
    """

    def __init__(self, t: Sequence[float], sigma: Sequence[float], meta: dict | None = None):
        t = np.asarray(t, dtype=np.float64)
        sigma = np.asarray(sigma, dtype=np.float64)
        if t.ndim != 1 or t.shape != sigma.shape or len(t) < 2:
            raise ValueError("`t` and `sigma` must be 1-D arrays of the same length (>= 2).")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(sigma))):
            raise ValueError("`t` and `sigma` must be finite.")
        if abs(t[0]) > 1e-12 or abs(t[-1] - 1.0) > 1e-12 or np.any(np.diff(t) <= 0):
            raise ValueError("`t` must increase strictly from 0 to 1.")
        if sigma[0] <= 0 or np.any(np.diff(sigma) <= 0):
            raise ValueError("`sigma` must be positive and strictly increasing.")
        t[0], t[-1] = 0.0, 1.0
        self.t, self.sigma, self.meta = t, sigma, dict(meta or {})
        self._log_sigma = PchipInterpolator(t, np.log(sigma))
        self._dlog_sigma = self._log_sigma.derivative()

    @property
    def sigma_min(self) -> float:
        return float(self.sigma[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigma[-1])

    @classmethod
    def from_function(
        cls, sigma_fn: Callable[[np.ndarray], np.ndarray], knots: int = 1025, meta: dict | None = None
    ) -> Schedule:
        """Tabulate a continuous map ``t -> sigma`` on ``knots`` uniform times."""
        t = np.linspace(0.0, 1.0, knots)
        return cls(t, sigma_fn(t), meta)

    @classmethod
    def from_baseline(
        cls, name: str, sigma_min: float = 0.002, sigma_max: float = 80.0, knots: int = 1025, **kwargs
    ) -> Schedule:
        """The continuous form of a baseline (see :func:`baseline_sigma_fn`), tabulated."""
        fn = baseline_sigma_fn(name, sigma_min, sigma_max, **kwargs)
        return cls.from_function(fn, knots, meta={"baseline": name, **kwargs})

    def __call__(self, t) -> torch.Tensor:
        """``sigma(t)`` for ``t`` in [0, 1] (tensor or array); float64 tensor of the same shape."""
        t = np.clip(np.asarray(t.cpu() if isinstance(t, torch.Tensor) else t, dtype=np.float64), 0.0, 1.0)
        return torch.from_numpy(np.exp(self._log_sigma(t)))

    def inverse(self, sigma) -> torch.Tensor:
        """``t(sigma)``, the exact inverse of :meth:`__call__` (bisection on the interpolant).

        Values outside [sigma_min, sigma_max] map to 0 or 1. Float64 tensor of the same shape.
        """
        s = np.asarray(sigma.cpu() if isinstance(sigma, torch.Tensor) else sigma, dtype=np.float64)
        target = np.log(np.clip(s, self.sigma_min, self.sigma_max))
        j = np.clip(np.searchsorted(self.sigma, np.exp(target)) - 1, 0, len(self.t) - 2)
        lo, hi = self.t[j], self.t[j + 1]
        for _ in range(60):  # interval length halves each time: 2^-60 of a knot spacing
            mid = 0.5 * (lo + hi)
            below = self._log_sigma(mid) < target
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        t = np.where(s <= self.sigma_min, 0.0, np.where(s >= self.sigma_max, 1.0, 0.5 * (lo + hi)))
        return torch.from_numpy(np.asarray(t, dtype=np.float64))

    def discretize(self, n: int) -> torch.Tensor:
        """Sampling schedule with ``n`` steps: ``sigma(1 - i/(n-1))`` for i = 0..n-1, then 0 (float64)."""
        check_steps(n)
        sig = self(1.0 - np.arange(n) / (n - 1)).numpy()
        sig[0], sig[-1] = self.sigma_max, self.sigma_min
        return _finish(sig)

    def _restrict(self, sigma_min: float, sigma_max: float) -> Schedule:
        """The part of the schedule inside [sigma_min, sigma_max], re-timed to t in [0, 1] (silent; see :meth:`fit`).

        Within the kept range the spacing is unchanged (a constant-rate schedule stays constant-rate);
        a range covering the whole schedule returns it unchanged.
        """
        lo, hi = max(float(sigma_min), self.sigma_min), min(float(sigma_max), self.sigma_max)
        if not lo < hi:
            raise ValueError(
                f"The range [{sigma_min:g}, {sigma_max:g}] does not overlap the schedule's [{self.sigma_min:g}, "
                f"{self.sigma_max:g}]."
            )
        if lo == self.sigma_min and hi == self.sigma_max:
            return self
        t_lo, t_hi = float(self.inverse(lo)), float(self.inverse(hi))
        sig = self(t_lo + np.linspace(0.0, 1.0, len(self.t)) * (t_hi - t_lo)).numpy()
        sig[0], sig[-1] = lo, hi
        return Schedule(np.linspace(0.0, 1.0, len(self.t)), sig, {**self.meta, "clipped_to": [lo, hi]})

    def fit(self, sigma_min: float, sigma_max: float, what: str | None = None) -> Schedule:
        """The schedule fitted to a model's noise range ``[sigma_min, sigma_max]`` by :func:`fit_range`.

        A schedule inside the range is returned as it is; one reaching outside is cut to the part inside and
        re-timed to t in [0, 1], keeping its spacing there (a constant-rate schedule stays constant-rate, and no
        two levels fall on the same cut value), with a warning. Used by ``apply_schedule`` and :func:`fit_schedule`.

        Args:
            what: names the range and its owner in the warning (default: the range itself).

        Raises:
            ValueError: the range does not overlap the schedule.
        """
        lo, hi = fit_range(self.sigma_min, self.sigma_max, sigma_min, sigma_max, "The schedule", what, stacklevel=3)
        return self if (lo, hi) == (self.sigma_min, self.sigma_max) else self._restrict(lo, hi)

    def sample_sigmas(self, shape: int | Sequence[int], generator: torch.Generator) -> torch.Tensor:
        """Training noise levels: ``sigma(t)`` with ``t ~ U(0, 1)`` drawn from ``generator`` (float64)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        t = torch.rand(shape, generator=generator, dtype=torch.float64)
        return self(t)

    def density(self, sigma, wrt: str = "sigma") -> torch.Tensor:
        """Density of the training noise levels :meth:`sample_sigmas` draws.

        Args:
            sigma: noise levels in [sigma_min, sigma_max].
            wrt: ``"sigma"`` for p(sigma) = dt/dsigma, ``"log_sigma"`` for dt/dlog(sigma).
        """
        if wrt not in ("sigma", "log_sigma"):
            raise ValueError(f"Unknown `wrt` {wrt!r}; valid choices: sigma, log_sigma.")
        s = torch.as_tensor(sigma, dtype=torch.float64)
        dlog = torch.from_numpy(self._dlog_sigma(self.inverse(s).numpy()))
        dens = 1.0 / dlog
        return dens / s if wrt == "sigma" else dens

    def to_dict(self) -> dict:
        """JSON-serialisable form: ``t``, ``sigma`` (ascending knots), ``sigma_min``, ``sigma_max``, ``meta``."""
        return {
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "t": self.t.tolist(),
            "sigma": self.sigma.tolist(),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Schedule:
        for key in ("t", "sigma"):
            if key not in data:
                raise ValueError(f"A schedule needs the key {key!r}; found {sorted(data)}.")
        return cls(data["t"], data["sigma"], data.get("meta"))

    def save(self, path, **extra) -> None:
        """Write the schedule as JSON (atomically); ``extra`` keys are stored beside it."""
        atomic_write_json(path, {**self.to_dict(), **extra})

    @classmethod
    def load(cls, path) -> Schedule:
        """Read a schedule JSON file (ValueError when it is missing keys or malformed)."""
        data = read_json(path, "schedule file")
        if not isinstance(data, dict):
            raise ValueError(f"The schedule file {str(path)!r} must hold a JSON object.")
        return cls.from_dict(data)

    def __repr__(self) -> str:
        return (
            f"Schedule(sigma_min={self.sigma_min:.4g}, sigma_max={self.sigma_max:.4g}, knots={len(self.t)}, "
            f"meta={self.meta})"
        )


def fit_schedule(schedule: Schedule, denoisers: dict[str, Denoiser]) -> Schedule:
    """The schedule fitted to the noise range every model covers (:meth:`Schedule.fit`, the rule :func:`fit_range`).

    The range is the intersection of the models' ``[sigma_min, sigma_max]``; the warning names the models. Models
    without a range (exact denoisers) accept any schedule; with none ranged the schedule is returned as it is.
    """
    ranged = {name: m for name, m in denoisers.items() if m.sigma_min is not None}
    if not ranged:
        return schedule
    lo = max(m.sigma_min for m in ranged.values())
    hi = min(m.sigma_max for m in ranged.values())
    names = ", ".join(f"{n} [{m.sigma_min:.4g}, {m.sigma_max:.4g}]" for n, m in ranged.items())
    return schedule.fit(lo, hi, what=f"the models ({names})")
