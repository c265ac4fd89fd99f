"""Deliver a schedule to diffusers: sigmas, integer timesteps, and ``apply_schedule``.

* ``EulerDiscreteScheduler`` takes continuous ``sigmas=`` (n levels and the final 0): a CRS
  schedule goes in exactly.
* ``HeunDiscreteScheduler``, ``DPMSolverMultistepScheduler``, ``DPMSolverSinglestepScheduler`` and
  ``DDPMScheduler`` take integer ``timesteps=`` only. The sigmas are mapped to the scheduler's
  training timesteps by log-sigma interpolation and rounded, so a continuous schedule is
  *quantised* to the nearest of the model's discrete noise levels (and close levels may merge).
* ``FlowMatchEulerDiscreteScheduler`` (flow-matching models: SD3, Flux, ...) takes flow times ``sigmas=`` and
  shifts them itself (static ``shift``, or Flux's ``mu`` at call time): the CRS levels are mapped to flow time
  (:mod:`crs.flow`) and un-shifted first, so the levels the model sees are exactly the CRS levels.
* :func:`apply_schedule` makes a scheduler (or a pipeline's scheduler) use the CRS schedule for
  every later ``set_timesteps(n)`` call, which is what pipelines do inside ``__call__``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from crs.schedules import Schedule, check_steps

__all__ = [
    "EXPORT_FORMATS",
    "UNSCALED_SCHEDULERS",
    "apply_schedule",
    "calls_scale_model_input",
    "export_schedule",
    "as_schedule",
    "check_flow_scheduler",
    "is_flow_scheduler",
    "partial_levels",
    "scheduler_sigma_range",
    "sigmas_to_timesteps",
    "to_trained_betas",
    "unshift_flow_times",
]


def _training_sigmas(scheduler) -> np.ndarray:
    """VE sigma of each training timestep t = 0..T-1 (ascending), from ``alphas_cumprod``."""
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(
            f"{type(scheduler).__name__} has no `alphas_cumprod`: not a discrete-time diffusers scheduler."
        )
    ac = np.asarray(torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64))
    return np.sqrt((1.0 - ac) / ac)


def is_flow_scheduler(scheduler) -> bool:
    """Whether a diffusers scheduler is a flow-matching one (``FlowMatchEulerDiscreteScheduler`` and its kin: flow
    times in ``sigmas``, a ``shift`` in its config, no ``alphas_cumprod``)."""
    return not hasattr(scheduler, "alphas_cumprod") and "shift" in getattr(scheduler, "config", {})


def scheduler_sigma_range(scheduler) -> tuple[float, float]:
    """The smallest and largest training sigma of a discrete-time scheduler; for a flow-matching scheduler, its
    smallest shifted flow time and :data:`crs.flow.S_MAX` (flow time 1 is sigma infinity), as VE sigmas."""
    if is_flow_scheduler(scheduler):
        from crs.flow import S_MAX, flow_to_sigma

        return flow_to_sigma(float(scheduler.sigma_min)), flow_to_sigma(S_MAX)
    table = _training_sigmas(scheduler)
    return float(table.min()), float(table.max())


FLOW_REFUSED = ("shift_terminal", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas")


def check_flow_scheduler(scheduler) -> None:
    """ValueError for a flow-matching scheduler configured to move given levels further (``shift_terminal``, karras /
    exponential / beta conversion, inverted sigmas): it could not sample on a CRS schedule."""
    changed = [k for k in FLOW_REFUSED if scheduler.config.get(k)]
    if changed:
        raise ValueError(
            f"{type(scheduler).__name__} with {', '.join(changed)} changes given levels further; set "
            f"{', '.join(f'{k}=False' if k != 'shift_terminal' else 'shift_terminal=None' for k in changed)} to "
            "sample on a CRS schedule."
        )


def unshift_flow_times(s, scheduler, mu: float | None = None) -> np.ndarray:
    """The flow times to give a flow-matching scheduler's ``set_timesteps(sigmas=...)`` so that after its own shift
    they are ``s``: the inverse of its static shift ``c u / (1 + (c - 1) u)``, or of its dynamic shift at ``mu``
    (``exponential``: ``e^mu / (e^mu + 1/u - 1)``; ``linear``: ``mu / (mu + 1/u - 1)``).

    Raises:
        ValueError: a scheduler that changes given sigmas further (``shift_terminal``, karras / exponential / beta
            conversion, inverted sigmas), or dynamic shifting without ``mu``.
    """
    from crs.flow import unshift

    check_flow_scheduler(scheduler)
    cfg = scheduler.config
    if cfg.get("use_dynamic_shifting"):
        if mu is None:
            raise ValueError(f"{type(scheduler).__name__} shifts dynamically: `mu` is needed (the pipeline gives it).")
        c = math.exp(mu) if cfg.get("time_shift_type", "exponential") == "exponential" else float(mu)
    else:
        c = float(scheduler.shift)
    return unshift(s, c)  # the exponential shift is the static one with c = e^mu, the linear one with c = mu


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
    name = type(scheduler).__name__
    if "sigmas" not in params and "timesteps" not in params:
        raise ValueError(
            f"{name} takes neither `sigmas` nor `timesteps`"
            + (" (its update assumes uniformly spaced timesteps)" if name == "DDIMScheduler" else "")
            + f"; supported: {', '.join(SIGMA_SCHEDULERS + TIMESTEP_SCHEDULERS)}. {SWAP_HINT}"
        )
    if scheduler is not scheduler_or_pipeline and not calls_scale_model_input(scheduler_or_pipeline):
        if float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0:
            raise ValueError(
                f"{type(scheduler_or_pipeline).__name__} does not both call `scheduler.scale_model_input` and scale "
                f"its starting noise by `init_noise_sigma`, which {name} needs: it would sample wrongly on any "
                f"schedule. Keep a scheduler here that scales nothing ({', '.join(UNSCALED_SCHEDULERS)}: the CRS "
                "levels quantised to timesteps), or sample on the exact CRS levels with crs.sampling.generate("
                "crs.load_denoiser(folder), shape, n, sigmas, sampler='euler') (DDIM's deterministic update on them)."
            )
    lo, hi = scheduler_sigma_range(scheduler)
    sched = sched.fit(lo, hi, what=f"the scheduler ({type(scheduler).__name__} [{lo:.4g}, {hi:.4g}])")
    flow = is_flow_scheduler(scheduler)
    if flow:
        check_flow_scheduler(scheduler)

    def set_timesteps(
        num_inference_steps: int | None = None, device=None, sigmas=None, mu=None, timesteps=None, **kwargs
    ):
        # flow pipelines (SD3, Flux) pass their own default `sigmas` (and `mu`): only their count is kept
        given = sigmas if sigmas is not None else timesteps
        n = num_inference_steps or (len(given) if given is not None else None) or steps
        check_steps(n)
        levels = sched.discretize(n)
        if flow:  # n flow times, the scheduler appends the final 0 and shifts them: un-shift first
            from crs.flow import sigma_to_flow

            u = unshift_flow_times(sigma_to_flow(levels[:-1].numpy()), scheduler, mu)
            return original(sigmas=u.tolist(), device=device, mu=mu)
        sigmas = levels
        if "sigmas" in params:
            return original(sigmas=sigmas.tolist(), device=device)
        return original(timesteps=sigmas_to_timesteps(sigmas, scheduler).tolist(), device=device)

    scheduler.set_timesteps = set_timesteps
    scheduler.crs_schedule = sched
    if steps is not None:
        scheduler.set_timesteps(steps)
    return scheduler


SIGMA_SCHEDULERS = ("EulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler")  # the CRS levels exactly
TIMESTEP_SCHEDULERS = (  # the CRS levels quantised to integer timesteps
    "HeunDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DDPMScheduler",
)
UNSCALED_SCHEDULERS = (  # init_noise_sigma 1: any pipeline samples with them as it samples with DDIM
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
)
SWAP_HINT = (
    "In a pipeline that scales its inputs and starting noise (LDMPipeline, the Stable Diffusion pipelines: "
    "crs.export.calls_scale_model_input), swap in pipe.scheduler = EulerDiscreteScheduler.from_config("
    "pipe.scheduler.config): Euler on the CRS levels is DDIM's deterministic update on them. Elsewhere (DDPMPipeline, "
    "DDIMPipeline, DiTPipeline) swap in DPMSolverMultistepScheduler (the CRS levels quantised), or sample on the exact "
    "CRS levels with crs.sampling.generate(crs.load_denoiser(folder), shape, n, sigmas, sampler='euler')."
)


def calls_scale_model_input(pipeline) -> bool:
    """Whether a diffusers pipeline both calls ``scheduler.scale_model_input`` and scales its starting noise to the
    scheduler's (by ``scheduler.init_noise_sigma``, or through ``scheduler.add_noise`` for img2img), as Euler-type
    schedulers (whose ``init_noise_sigma`` is not 1) need: LDM and the Stable Diffusion pipelines do;
    ``DDPMPipeline`` and ``DDIMPipeline`` do neither, and ``DiTPipeline`` scales its inputs but not its starting
    noise. Read from the pipeline class's source; True when the source cannot be read (no
    refusal on a guess)."""
    try:
        source = inspect.getsource(type(pipeline))
    except (OSError, TypeError):
        return True
    # the starting noise: scaled by init_noise_sigma (text-to-image), or added by the scheduler's add_noise (img2img)
    return "scale_model_input" in source and ("init_noise_sigma" in source or "add_noise" in source)


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


# ----------------------------------------------------------------------------- export for sampler front ends
EXPORT_FORMATS = ("json", "comfyui", "a1111", "diffusers")


def partial_levels(levels, denoise: float = 1.0) -> torch.Tensor:
    """The levels an img2img run at denoise strength ``denoise`` samples: of a schedule of ``N`` steps (``levels``,
    ``N + 1`` values ending in 0), the last ``int(N * denoise)`` steps, as diffusers' img2img pipelines cut their
    schedules (``init_timestep = min(int(N * strength), N)``, ``timesteps[N - init_timestep:]``). ValueError for a
    strength outside (0, 1] or one that leaves no step."""
    levels = torch.as_tensor(levels, dtype=torch.float64)
    if not isinstance(denoise, (int, float)) or isinstance(denoise, bool) or not 0.0 < float(denoise) <= 1.0:
        raise ValueError(f"`denoise` must be in (0, 1], got {denoise!r}.")
    n = len(levels) - 1
    keep = min(int(n * float(denoise)), n)
    if keep < 1:
        raise ValueError(f"denoise {denoise} of {n} steps leaves no step (int({n} x {denoise}) = 0): give more steps.")
    return levels[n - keep :]


def _decimal(v: float) -> str:
    """A level in plain positional notation (no exponent: ComfyUI's ManualSigmas parses numbers with a regular
    expression that reads ``1e-05`` as 1 and -5), to 7 significant digits."""
    text = np.format_float_positional(float(v), precision=7, unique=False, fractional=False, trim="-")
    return text if text not in ("-0",) else "0"


def export_schedule(
    schedule,
    steps: int,
    fmt: str = "json",
    denoise: float = 1.0,
    flow: bool = False,
    shift: float | None = None,
    mu: float | None = None,
) -> str:
    """A schedule's levels for ``steps`` steps in the form a sampler front end takes (``python -m crs export``).

    Args:
        schedule: a :class:`~crs.schedules.Schedule` or the path of a ``schedule.json`` (its own range).
        steps: the number of steps (>= 2) of the whole schedule.
        fmt: ``json`` (everything below, machine-readable), ``comfyui`` (the comma-separated list ComfyUI's
            ``ManualSigmas`` node, or KJNodes' ``CustomSigmas``, turns into a SIGMAS input for ``SamplerCustom``),
            ``a1111`` (the ``[s0, s1, ..., 0.0]`` list the *custom* scheduler of the Extra Schedulers extension of
            A1111 / Forge takes and uses as it is) or ``diffusers`` (JSON with the ``sigmas=`` to give
            ``set_timesteps``: the ``n + 1`` levels for ``EulerDiscreteScheduler``, or for a flow model the ``n`` flow
            times un-shifted for a ``FlowMatchEulerDiscreteScheduler`` with ``shift`` / ``mu``).
        denoise: img2img strength in (0, 1]: the partial schedule :func:`partial_levels` (json and comfyui only:
            diffusers and A1111 / Forge cut a full schedule by their own strength setting).
        flow: a flow-matching model: levels as flow times ``s = sigma / (1 + sigma)`` (ComfyUI's and Forge's
            sigmas of flow models), final 0.
        shift, mu: diffusers format of a flow model: the scheduler's static shift, or the ``mu`` its pipeline passes.

    Raises:
        ValueError: an unknown format, a bad step count or strength, ``--denoise`` for a front end that cuts by its
            own strength, or shift options where they mean nothing.
    """
    from crs.args import check_choice

    check_choice("format", fmt, EXPORT_FORMATS, what="export format")
    check_steps(steps)
    sched = as_schedule(schedule)
    if denoise != 1.0 and fmt in ("diffusers", "a1111"):
        how = (
            "diffusers' img2img pipelines cut a full schedule by their `strength` (the levels then are those of "
            "`--format json --denoise d`)"
            if fmt == "diffusers"
            else "A1111 / Forge img2img cut a full schedule by their own denoising strength, by their own convention"
        )
        raise ValueError(f"{how}: export it without `denoise` and set the strength there.")
    if (shift is not None or mu is not None) and not (flow and fmt == "diffusers"):
        raise ValueError("`shift` / `mu` are for the diffusers format of a flow model (`--flow --format diffusers`).")
    full = sched.discretize(steps)
    levels = partial_levels(full, denoise)
    if flow:
        from crs.flow import flow_shift_scale, sigma_to_flow, unshift

    values = sigma_to_flow(levels) if flow else levels  # flow times, final 0
    if fmt == "comfyui":
        return ", ".join(_decimal(v) for v in values.tolist())
    if fmt == "a1111":
        # the extension rescales a list that starts at exactly 1.0 and ends at 0.0: never the case here (flow
        # times stop at crs.flow.S_MAX), and a list that ends at 0.0 is used as it is
        return "[" + ", ".join(_decimal(v) for v in values[:-1].tolist()) + ", 0.0]"
    import json

    if fmt == "diffusers":
        if flow:
            u = unshift(values[:-1].numpy(), flow_shift_scale(shift, mu))
            doc = {"sigmas": [float(x) for x in u], "scheduler": "FlowMatchEulerDiscreteScheduler"}
            doc.update({"shift": shift} if shift is not None else {"mu": mu} if mu is not None else {"shift": 1.0})
        else:
            doc = {"sigmas": [float(x) for x in values], "scheduler": "EulerDiscreteScheduler"}
        return json.dumps(doc, indent=1)
    doc = {
        "steps": int(steps),
        "denoise": float(denoise),
        "sigmas": [float(x) for x in levels],
        "range": [sched.sigma_min, sched.sigma_max],
        "convention": "partial: the last int(steps * denoise) steps of the steps-step schedule (diffusers' img2img)",
    }
    if flow:
        doc["flow_times"] = [float(x) for x in values]
    return json.dumps(doc, indent=1)
