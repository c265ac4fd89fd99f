"""Deliver a schedule to diffusers: sigmas, integer timesteps, and ``apply_schedule``.

* ``EulerDiscreteScheduler`` takes continuous ``sigmas=`` (n levels and the final 0): a CRS
  schedule goes in exactly.
* ``HeunDiscreteScheduler``, ``DPMSolverMultistepScheduler``, ``DPMSolverSinglestepScheduler`` and
  ``DDPMScheduler`` take integer ``timesteps=`` only. The sigmas are mapped to the scheduler's
  training timesteps by log-sigma interpolation and rounded, so a continuous schedule is
  *quantised* to the nearest of the model's discrete noise levels (and close levels may merge).
* :func:`apply_schedule` makes a scheduler (or a pipeline's scheduler) use the CRS schedule for
  every later ``set_timesteps(n)`` call, which is what pipelines do inside ``__call__``.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import numpy as np
import torch

from crs.schedules import Schedule, check_steps

__all__ = ["apply_schedule", "as_schedule", "scheduler_sigma_range", "sigmas_to_timesteps", "to_trained_betas"]


def _training_sigmas(scheduler) -> np.ndarray:
    """VE sigma of each training timestep t = 0..T-1 (ascending), from ``alphas_cumprod``."""
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(
            f"{type(scheduler).__name__} has no `alphas_cumprod`: not a discrete-time diffusers scheduler."
        )
    ac = np.asarray(torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64))
    return np.sqrt((1.0 - ac) / ac)


def scheduler_sigma_range(scheduler) -> tuple[float, float]:
    """The smallest and largest training sigma of a discrete-time scheduler."""
    table = _training_sigmas(scheduler)
    return float(table.min()), float(table.max())


def sigmas_to_timesteps(sigmas, scheduler) -> np.ndarray:
    """Integer timesteps (descending, unique) nearest in log sigma to the non-zero ``sigmas``.

    Levels outside the scheduler's range map to its end timesteps; levels that round to the same
    timestep merge (a warning says how many remain).
    """
    table = _training_sigmas(scheduler)
    s = np.asarray(torch.as_tensor(sigmas, dtype=torch.float64))
    s = s[s > 0]
    t = np.interp(np.log(s), np.log(table), np.arange(len(table), dtype=np.float64))
    steps = np.unique(np.rint(t).astype(np.int64))[::-1]
    if len(steps) < len(s):
        warnings.warn(
            f"Integer timesteps quantise the schedule: {len(s)} levels became {len(steps)} distinct timesteps.",
            stacklevel=2,
        )
    return steps.copy()


def as_schedule(schedule) -> Schedule:
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, (str, Path)):
        if not Path(schedule).is_file():
            raise ValueError(f"No schedule file at {str(schedule)!r}.")
        return Schedule.load(schedule)
    raise ValueError(
        f"`schedule` must be a crs.Schedule or the path of a schedule.json, got {type(schedule).__name__}."
    )


def apply_schedule(scheduler_or_pipeline, schedule, steps: int | None = None):
    """Make a diffusers scheduler sample on a CRS schedule.

    After this call, every ``scheduler.set_timesteps(n)`` (as pipelines call it) sets the CRS
    schedule discretised for ``n`` steps: as ``sigmas=`` where the scheduler takes them, otherwise
    as quantised integer ``timesteps=``. ``set_timesteps`` is called once now with ``steps`` if given.
    A schedule reaching outside the scheduler's training range is clipped to it with a warning, keeping
    its spacing inside (:meth:`crs.Schedule.fit`, as notebook 04 does for models). Undo with
    ``del scheduler.set_timesteps``.

    Args:
        scheduler_or_pipeline: a diffusers scheduler, or a pipeline with a ``scheduler``.
        schedule: a :class:`~crs.schedules.Schedule` or the path of a ``schedule.json``.
        steps: optional step count to set right away (>= 2).

    Returns:
        The scheduler.
    """
    scheduler = getattr(scheduler_or_pipeline, "scheduler", scheduler_or_pipeline)
    sched = as_schedule(schedule)
    original = type(scheduler).set_timesteps.__get__(scheduler)
    params = inspect.signature(original).parameters
    if "sigmas" not in params and "timesteps" not in params:
        raise ValueError(
            f"{type(scheduler).__name__} takes neither `sigmas` nor `timesteps`; supported: EulerDiscreteScheduler, "
            "HeunDiscreteScheduler, DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, DDPMScheduler."
        )
    lo, hi = scheduler_sigma_range(scheduler)
    sched = sched.fit(lo, hi, what=f"the scheduler ({type(scheduler).__name__} [{lo:.4g}, {hi:.4g}])")

    def set_timesteps(num_inference_steps: int | None = None, device=None, **kwargs):
        n = num_inference_steps or steps
        check_steps(n)
        sigmas = sched.discretize(n)
        if "sigmas" in params:
            return original(sigmas=sigmas.tolist(), device=device)
        return original(timesteps=sigmas_to_timesteps(sigmas, scheduler).tolist(), device=device)

    scheduler.set_timesteps = set_timesteps
    scheduler.crs_schedule = sched
    if steps is not None:
        scheduler.set_timesteps(steps)
    return scheduler


def to_trained_betas(schedule, num_train_timesteps: int = 1000) -> np.ndarray:
    """A CRS schedule as ``trained_betas`` for diffusers' discrete-time schedulers (``DDPMScheduler``).

    Training timestep ``i`` gets ``sigma_i = sigma(i / (T - 1))`` (uniform t, as in CRS training), so
    ``alphas_cumprod_i = 1 / (1 + sigma_i^2)`` and ``beta_i = 1 - alphas_cumprod_i / alphas_cumprod_{i-1}``.

    Returns:
        float64 array (T,) of betas in (0, 1).
    """
    sched = as_schedule(schedule)
    check_steps(num_train_timesteps)
    sigma = sched(np.linspace(0.0, 1.0, num_train_timesteps)).numpy()
    ac = 1.0 / (1.0 + sigma**2)
    betas = 1.0 - ac / np.concatenate([[1.0], ac[:-1]])
    return np.clip(betas, 1e-12, 1.0 - 1e-12)
