"""crs: Constant Rate Scheduling for diffusion models (Okada et al., arXiv 2411.12188).

The public API is re-exported here lazily, so ``import crs`` is instant and pulls in torch only
when a function is first used::

    import crs
    data = crs.make_dataset("gmm")
    rate = crs.estimate_rate("data", data, denoiser=data.denoiser)
    schedule = crs.optimize_schedule(rate, xi=1.0)
    sigmas = schedule.discretize(10)          # 10 levels, descending, then a final 0
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "crs.schedules": [
        "BASELINES",
        "Schedule",
        "alpha_to_sigma",
        "ays_sigmas",
        "baseline_sigma_fn",
        "baseline_sigmas",
        "logsnr_to_sigma",
        "sigma_to_alpha",
        "sigma_to_logsnr",
    ],
    "crs.analytic": ["GaussianMixture", "gaussian_discrepancy", "gaussian_velocity"],
    "crs.data": ["DATASETS", "make_dataset"],
    "crs.measures": ["BASE_MEASURES", "parse_measure"],
    "crs.distances": ["fid_from_features", "fid_from_stats"],
    "crs.rate": ["RateEstimate", "check_rate_inputs", "estimate_rate", "logsnr_grid"],
    "crs.models": ["load_denoiser"],
    "crs.export": ["apply_schedule"],
    "crs.quality": ["solve_teacher", "teacher_error"],
    "crs.conditioning": ["Guided", "Labels"],
    "crs.search": ["SearchCache", "SearchResult", "search_schedule"],
    "crs.optimize": [
        "check_xi",
        "optimize_schedule",
        "sampling_schedules",
        "schedule_from_velocity",
        "step_discrepancy",
    ],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


_SUBMODULES = (
    "adapters",
    "analytic",
    "args",
    "conditioning",
    "data",
    "distances",
    "export",
    "flow",
    "io",
    "measures",
    "metrics",
    "model_data",
    "models",
    "networks",
    "optimize",
    "prompts",
    "protocols",
    "quality",
    "rate",
    "run",
    "sampling",
    "schedules",
    "search",
    "seeds",
    "training",
)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"crs.{name}")
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'crs' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
