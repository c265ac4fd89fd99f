"""Training and fine-tuning with a chosen distribution of training noise levels.

The loss is EDM's (Karras et al. 2022): ``lambda(sigma) * |D(x0 + sigma eps; sigma) - x0|^2`` with
``lambda = (sigma^2 + sd^2) / (sigma sd)^2``, averaged over elements. Only the distribution of
``sigma`` changes between runs; that is the piece a training schedule replaces:

* ``edm``: log-normal, ``log sigma ~ N(P_mean = -1.2, P_std = 1.2)`` (EDM's default);
* ``logsnr``: uniform in logsnr on [sigma_min, sigma_max];
* ``cosine``: uniform time of the cosine schedule on [sigma_min, sigma_max];
* ``flow``: Stable Diffusion 3's logit-normal flow time, ``logit(s) = log sigma ~ N(0, 1)`` (for a flow-matching
  model, ``precond="flow"``, whose loss is the flow-matching one: the weight ``1 / s^2`` turns
  ``|D - x0|^2`` into ``|v - (eps - x0)|^2``);
* ``crs``: ``t ~ U(0, 1)``, ``sigma = sigma(t)`` of a CRS schedule (a ``schedule.json``);
* ``crs-online``: the same, but every ``online_every`` steps the velocity is re-estimated with the
  current EMA model on a fixed batch and the distribution rebuilt; the time this takes is measured.

:func:`train` runs on one CPU, one GPU or several (``accelerate launch``) through Hugging Face
``accelerate``, keeps an EMA of the weights, clips gradients, uses bf16 autocast on GPUs, shows a
tqdm bar with the running loss, and checkpoints every N steps (model, EMA, optimiser, generator,
noise distribution) atomically, so an interrupted run resumes where it stopped and ends with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from crs.args import check_choice, check_int, check_number
from crs.conditioning import bind, conditioning_of
from crs.io import file_mode
from crs.protocols import check_data_matches
from crs.schedules import Schedule
from crs.seeds import online_seed, process_seed

__all__ = [
    "NOISE_DISTRIBUTIONS",
    "LogNormalNoise",
    "ScheduleNoise",
    "TrainConfig",
    "TrainResult",
    "EDMLoss",
    "loss_by_sigma",
    "loss_weight",
    "make_noise",
    "noise_from_state",
    "train",
    "update_ema",
]

NOISE_DISTRIBUTIONS = ("edm", "logsnr", "cosine", "flow", "crs", "crs-online")
CHECKPOINT = "checkpoint.pt"


class LogNormalNoise:
    """EDM's training distribution: ``log sigma ~ N(p_mean, p_std^2)``."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` noise levels, float64 (n,)."""
        return torch.exp(self.p_mean + self.p_std * torch.randn(n, generator=generator, dtype=torch.float64))

    def density(self, sigma, wrt: str = "log_sigma") -> torch.Tensor:
        """Density over ``log sigma`` (``wrt="log_sigma"``) or over ``sigma``."""
        s = torch.as_tensor(sigma, dtype=torch.float64)
        dens = torch.exp(-0.5 * ((torch.log(s) - self.p_mean) / self.p_std) ** 2) / (
            self.p_std * math.sqrt(2 * math.pi)
        )
        return dens if wrt == "log_sigma" else dens / s

    def state(self) -> dict:
        return {"kind": "lognormal", "p_mean": self.p_mean, "p_std": self.p_std}


class ScheduleNoise:
    """Noise levels ``sigma(t)``, ``t ~ U(0, 1)``, of a continuous schedule."""

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.schedule.sample_sigmas(n, generator)

    def density(self, sigma, wrt: str = "log_sigma") -> torch.Tensor:
        return self.schedule.density(sigma, wrt=wrt)

    def state(self) -> dict:
        return {"kind": "schedule", "schedule": self.schedule.to_dict()}


def noise_from_state(state: dict):
    if state["kind"] == "lognormal":
        return LogNormalNoise(state["p_mean"], state["p_std"])
    return ScheduleNoise(Schedule.from_dict(state["schedule"]))


def make_noise(name: str, sigma_min: float = 0.002, sigma_max: float = 80.0, schedule=None):
    """The training distribution ``name`` (see :data:`NOISE_DISTRIBUTIONS`).

    Args:
        sigma_min, sigma_max: the model's range (for ``logsnr`` and ``cosine``; for ``crs`` the
            schedule must cover it).
        schedule: for ``crs`` / ``crs-online``: a :class:`~crs.schedules.Schedule` or the path of a
            ``schedule.json``.
    """
    check_choice("noise", name, NOISE_DISTRIBUTIONS, what="noise distribution")
    if name == "edm":
        return LogNormalNoise()
    if name == "flow":  # SD3's logit-normal flow time: logit(s) = log(sigma) ~ N(0, 1)
        return LogNormalNoise(0.0, 1.0)
    if name == "logsnr":
        return ScheduleNoise(Schedule.from_baseline("exponential", sigma_min, sigma_max))
    if name == "cosine":
        return ScheduleNoise(Schedule.from_baseline("cosine", sigma_min, sigma_max))
    if schedule is None:
        if name == "crs-online":
            return None  # estimated from the model at the first step
        raise ValueError("The 'crs' noise distribution needs a schedule (a schedule.json from notebook 02).")
    sched = schedule if isinstance(schedule, Schedule) else _load_schedule(schedule)
    tol = 1e-6
    if sched.sigma_min > sigma_min * (1 + tol) or sched.sigma_max < sigma_max * (1 - tol):
        raise ValueError(
            f"The schedule covers sigma in [{sched.sigma_min:g}, {sched.sigma_max:g}], which does not cover the "
            f"model's range [{sigma_min:g}, {sigma_max:g}]; estimate the rate over the model's range."
        )
    return ScheduleNoise(sched)


def _load_schedule(path) -> Schedule:
    if not Path(path).is_file():
        raise ValueError(f"No schedule file at {str(path)!r} (run notebook 02 first).")
    return Schedule.load(path)


@dataclass
class TrainConfig:
    """Settings of one training or fine-tuning run (all saved in its checkpoints).

    Attributes:
        steps: optimiser steps in total.
        batch_size: samples per step (per process).
        lr: Adam learning rate, reached after ``warmup_steps`` of linear warm-up.
        ema_decay: EMA decay (with the usual ``(1 + step) / (10 + step)`` warm-up).
        grad_clip: gradient-norm clipping (0: none).
        noise: training distribution, see :data:`NOISE_DISTRIBUTIONS`.
        schedule: ``schedule.json`` path for ``crs`` (and the start of ``crs-online``).
        online_every, online_measure, online_grid, online_samples, online_xi: the re-estimation of
            ``crs-online`` (every N steps; measure; grid intervals; samples; exponent).
        checkpoint_every: write a checkpoint every N steps (0: only at the end).
        seed: seeds the generator of data, noise levels and noise (offset by the process index).
        mixed_precision: ``auto`` (bf16 on a GPU, none on CPU), ``no``, ``bf16`` or ``fp16``.
        label_dropout: for a class-conditional model, the share of training samples whose label is replaced by the
            null label, which teaches the unconditional branch classifier-free guidance needs (0.1, as EDM2 and DiT);
            unused for an unconditional model.
    """

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    noise: str = "edm"
    schedule: str | None = None
    online_every: int = 200
    online_measure: str = "data"
    online_grid: int = 16
    online_samples: int = 256
    online_xi: float = 1.0
    checkpoint_every: int = 0
    seed: int = 0
    mixed_precision: str = "auto"
    label_dropout: float = 0.1

    def validate(self) -> None:
        """ValueError naming the first bad setting."""
        from crs.measures import MODEL_MEASURES, parse_measure
        from crs.optimize import check_xi

        for name in ("steps", "batch_size", "online_every", "online_grid", "online_samples"):
            check_int(name, getattr(self, name), 1)
        for name in ("warmup_steps", "checkpoint_every", "seed"):
            check_int(name, getattr(self, name), 0)
        check_number("lr", self.lr, positive=True)
        check_number("grad_clip", self.grad_clip, minimum=0)
        if not (check_number("ema_decay", self.ema_decay) >= 0 and self.ema_decay < 1):
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay!r}.")
        check_choice("noise", self.noise, NOISE_DISTRIBUTIONS, what="noise distribution")
        check_choice("mixed_precision", self.mixed_precision, ("auto", "no", "bf16", "fp16"))
        if not (check_number("label_dropout", self.label_dropout, minimum=0) < 1):
            raise ValueError(f"`label_dropout` must be in [0, 1), got {self.label_dropout!r}.")
        if self.noise == "crs-online":
            check_xi(self.online_xi)
            if set(parse_measure(self.online_measure)) - set(MODEL_MEASURES):
                raise ValueError(f"`online_measure` must use the model (data, noise), got {self.online_measure!r}.")


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        ema: the EMA denoiser (eval mode): the model to save and sample from.
        losses: the loss of every step, from step 0 (including steps before a resume).
        steps_done: steps completed.
        seconds: wall time of the steps run in this call (re-estimation included).
        online_seconds: of which re-estimating the rate (``crs-online``).
        online_updates: number of re-estimations in this call.
        noise: the final training distribution (for plotting its density).
        resumed_from: the step the run resumed from (0 for a fresh run).
    """

    ema: Any
    losses: list[float]
    steps_done: int
    seconds: float
    online_seconds: float = 0.0
    online_updates: int = 0
    noise: Any = None
    resumed_from: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def steps_per_second(self) -> float:
        ran = self.steps_done - self.resumed_from
        return ran / max(self.seconds - self.online_seconds, 1e-12)

    @property
    def online_overhead(self) -> float:
        """Re-estimation time as a fraction of the training steps' own time."""
        return self.online_seconds / max(self.seconds - self.online_seconds, 1e-12)


def _atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` through a temporary file moved into place, with the mode a plain write would give it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _online_schedule(ema, data, cfg: TrainConfig, sigma_min: float, sigma_max: float) -> ScheduleNoise:
    """Re-estimate the model-based velocity with the EMA model on a fixed batch; rebuild the distribution."""
    from crs.optimize import optimize_schedule
    from crs.rate import estimate_rate

    rate = estimate_rate(
        cfg.online_measure,
        data,
        denoiser=ema,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        grid_size=cfg.online_grid,
        n_samples=cfg.online_samples,
        seed=online_seed(cfg.seed),
        batch_size=cfg.online_samples,
    )
    return ScheduleNoise(optimize_schedule(rate, xi=cfg.online_xi))


def _restore(path: Path, cfg: TrainConfig, model, ema, opt, gen, rank: int = 0):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    saved, mine, default = dict(ckpt["config"]), asdict(cfg), asdict(TrainConfig())
    # a setting added since the checkpoint was written counts as its default
    differ = sorted(k for k in mine if k not in ("steps", "checkpoint_every") and saved.get(k, default[k]) != mine[k])
    if differ:
        raise ValueError(
            f"The checkpoint {str(path)!r} was made with other settings ({', '.join(differ)}); "
            "use another checkpoint folder or resume=False."
        )
    model.load_state_dict(ckpt["model"])
    ema.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["optimizer"])
    rng_path = path.parent / f"rng-{rank}.pt"
    if rank == 0:
        gen.set_state(ckpt["generator"])
    elif rng_path.is_file():
        gen.set_state(torch.load(rng_path, weights_only=False)["generator"])
    else:
        raise ValueError(f"The checkpoint {str(path)!r} has no generator state for process {rank} ({rng_path.name}).")
    noise = noise_from_state(ckpt["noise"]) if ckpt["noise"] is not None else None
    return ckpt["step"], list(ckpt["losses"]), noise


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's loss weight ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` (Karras et al. 2022, eq. 8).

    Same shape as ``sigma``.
    """
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


class EDMLoss:
    """EDM's loss (Karras et al. 2022, ``training/loss.py``), owning its distribution of training noise levels.

    ``mean(lambda(sigma) |D(x0 + sigma eps; sigma) - x0|^2)`` with :func:`loss_weight`; ``noise`` is the one
    piece a training schedule replaces (``crs-online`` swaps it while training).

    Args:
        noise: the training distribution (:func:`make_noise`: log-normal, a schedule's).
        sigma_data: the data standard deviation of the weighting (EDM: 0.5).
        conditioning: a class-conditional model's :class:`crs.conditioning.Conditioning` (then
            :meth:`draw_labeled` draws labels with the data), or None.
        label_dropout: the share of labels replaced by the null label (classifier-free guidance's training).
    """

    def __init__(
        self, noise, sigma_data: float = 0.5, conditioning=None, label_dropout: float = 0.0, precond: str = "edm"
    ):
        self.noise, self.sigma_data = noise, float(sigma_data)
        self.conditioning, self.label_dropout = conditioning, float(label_dropout)
        self.precond = precond  # "flow": the flow-matching loss |v - (eps - x0)|^2 = |D - x0|^2 / s^2

    def draw(self, data, n: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch from ``generator`` on the CPU (so draws do not depend on the device), moved to ``device``.

        Returns:
            ``(x0 (n, *shape), sigma (n,), eps (n, *shape))``, float32 on ``device``.
        """
        x0 = data.sample(n, generator).float()
        sigma = self.noise.sample(n, generator).float()
        eps = torch.randn(x0.shape, generator=generator)
        return x0.to(device), sigma.to(device), eps.to(device)

    def draw_labeled(
        self, data, n: int, generator: torch.Generator, device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch of a class-conditional model, as :meth:`draw` with the images' labels (``data.sample_labeled``),
        a ``label_dropout`` share of them (drawn last, from the same generator) replaced by the null label.

        Returns:
            ``(x0, sigma, eps, labels (n,) int64)`` on ``device``.
        """
        if self.conditioning is None:
            raise ValueError("draw_labeled needs a conditional model's `conditioning`.")
        x0, labels = data.sample_labeled(n, generator)
        sigma = self.noise.sample(n, generator).float()
        eps = torch.randn(x0.shape, generator=generator)
        drop = torch.rand(n, generator=generator, dtype=torch.float64) < self.label_dropout
        labels = torch.where(drop, self.conditioning.null, labels)
        return x0.float().to(device), sigma.to(device), eps.to(device), labels.to(device)

    def __call__(
        self,
        model,
        x0: torch.Tensor,
        sigma: torch.Tensor,
        eps: torch.Tensor,
        autocast=contextlib.nullcontext,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of ``model`` on one batch, a float32 scalar on the inputs' device.

        Args:
            model: the denoiser being trained (on the inputs' device).
            x0, eps: (B, *shape); sigma: (B,).
            autocast: a context manager for the forward pass (accelerate's ``autocast``: bf16 on GPUs).
            cond: a conditional model's labels (B,) (:meth:`draw_labeled`), or None.
        """
        sb = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
        with autocast():
            pred = model(x0 + sb * eps, sigma) if cond is None else model(x0 + sb * eps, sigma, cond)
        weight = ((1.0 + sb) / sb) ** 2 if self.precond == "flow" else loss_weight(sb, self.sigma_data)
        return (weight * (pred.float() - x0) ** 2).mean()


def _optimizer_step(acc, model, opt, loss, cfg: TrainConfig, step: int) -> None:
    """One Adam step on ``loss``: gradients through accelerate, clipped to ``cfg.grad_clip``, the learning rate
    warmed up linearly over ``cfg.warmup_steps``."""
    opt.zero_grad(set_to_none=True)
    acc.backward(loss)
    if cfg.grad_clip > 0:
        acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    for group in opt.param_groups:
        group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
    opt.step()


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model``, parameter by parameter, in place."""
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p.detach(), 1.0 - decay)


def _save_checkpoint(path: Path, acc, step: int, cfg: TrainConfig, model, ema, opt, gen, losses, noise) -> None:
    """Write the training state atomically: the main process writes ``checkpoint.pt``, every other process its
    own generator state (``rng-<rank>.pt``), so that a resumed run continues every process's stream."""
    if not acc.is_main_process:
        _atomic_torch_save({"step": step, "generator": gen.get_state()}, path.parent / f"rng-{acc.process_index}.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        state = {
            "step": step,
            "config": asdict(cfg),
            "model": acc.unwrap_model(model).state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "generator": gen.get_state(),
            "losses": losses,
            "noise": noise.state(),
        }
        _atomic_torch_save(state, path)


def train(
    denoiser,
    data,
    cfg: TrainConfig,
    checkpoint_dir=None,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train (or fine-tune) ``denoiser`` on ``data`` with the EDM loss and ``cfg.noise`` levels.

    Args:
        denoiser: a :class:`~crs.networks.EDMDenoiser` (trained in place; its EMA is returned).
        data: a dataset with ``sample(n, generator)`` and ``shape`` matching the denoiser's.
        cfg: the settings (validated first).
        checkpoint_dir: where ``checkpoint.pt`` is written and resumed from (None: no checkpoints).
        resume: continue from an existing checkpoint with the same settings.
        stop_after: stop after this step (to simulate an interruption in tests).
        progress: tqdm bar with the running loss.

    Raises:
        ValueError: bad settings, a shape mismatch, or a non-finite loss (naming the step); nothing
            is written for the failing step.
    """
    from accelerate import Accelerator

    cfg.validate()
    check_data_matches(denoiser, data.shape)
    lo, hi = denoiser.sigma_min, denoiser.sigma_max
    noise = make_noise(cfg.noise, lo, hi, cfg.schedule)
    mp = ("bf16" if torch.cuda.is_available() else "no") if cfg.mixed_precision == "auto" else cfg.mixed_precision
    acc = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
    gen = torch.Generator().manual_seed(process_seed(cfg.seed, acc.process_index))
    denoiser.train()
    ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
    opt = torch.optim.Adam(denoiser.parameters(), lr=cfg.lr)
    start, losses = 0, []
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        start, losses, saved_noise = _restore(ckpt_path, cfg, denoiser, ema, opt, gen, acc.process_index)
        noise = saved_noise or noise
    model, opt = acc.prepare(denoiser, opt)
    ema.to(acc.device)
    t0, online_seconds, online_updates = time.perf_counter(), 0.0, 0
    if noise is None:  # crs-online without a starting schedule: estimate one from the model now
        noise = _online_schedule(ema, data, cfg, lo, hi)
        online_seconds, online_updates = time.perf_counter() - t0, 1
    spec = conditioning_of(denoiser)
    if spec is not None and getattr(data, "num_classes", None) is None:
        raise ValueError(f"The model is class-conditional but the dataset {data.name!r} has no class labels.")
    edm = EDMLoss(noise, denoiser.sigma_data, spec, cfg.label_dropout, getattr(denoiser, "precond", "edm"))
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    bar = tqdm(range(start, end), desc=desc, disable=not progress or not acc.is_main_process, leave=False)
    for step in bar:
        if spec is None:
            x0, sigma, eps = edm.draw(data, cfg.batch_size, gen, acc.device)
            cond = None
        else:
            x0, sigma, eps, cond = edm.draw_labeled(data, cfg.batch_size, gen, acc.device)
        loss = edm(model, x0, sigma, eps, acc.autocast, cond)
        if not torch.isfinite(loss):
            raise ValueError(
                f"Non-finite loss ({loss.item()}) at step {step}: lower `lr` or check the data; "
                "the last checkpoint is left as it was."
            )
        _optimizer_step(acc, model, opt, loss, cfg, step)
        update_ema(ema, acc.unwrap_model(model), min(cfg.ema_decay, (1 + step) / (10 + step)))
        losses.append(float(loss.item()))
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if cfg.noise == "crs-online" and (step + 1) % cfg.online_every == 0 and step + 1 < cfg.steps:
            t_on = time.perf_counter()
            edm.noise = _online_schedule(ema, data, cfg, lo, hi)
            online_seconds, online_updates = online_seconds + time.perf_counter() - t_on, online_updates + 1
        last = step + 1 == end
        if ckpt_path is not None and ((cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0) or last):
            _save_checkpoint(ckpt_path, acc, step + 1, cfg, model, ema, opt, gen, losses, edm.noise)
    bar.close()
    return TrainResult(
        ema=ema.cpu().eval(),
        losses=losses,
        steps_done=end,
        seconds=time.perf_counter() - t0,
        online_seconds=online_seconds,
        online_updates=online_updates,
        noise=edm.noise,
        resumed_from=start,
    )


def loss_by_sigma(denoiser, data, sigmas, n_samples: int = 1024, seed: int = 0, batch_size: int = 1024) -> np.ndarray:
    """Held-out EDM loss at fixed noise levels: the fair comparison of models trained with different
    noise distributions (their training losses average over different sigmas). A class-conditional model is judged
    at each held-out sample's own label (``data.sample_labeled``, the same samples as ``data.sample``).

    Args:
        denoiser: the model.
        data: held-out data (e.g. the ``test`` split, or fresh analytic samples).
        sigmas: noise levels (L,).
        n_samples: samples per level (the same x0 and eps at every level, from ``seed``).

    Returns:
        float64 array (L,): mean over samples and elements of ``lambda(sigma) |D - x0|^2``.
    """
    gen = torch.Generator().manual_seed(int(seed))
    conditional = conditioning_of(denoiser) is not None
    x0, labels = data.sample_labeled(n_samples, gen) if conditional else (data.sample(n_samples, gen), None)
    x0 = x0.float()
    eps = torch.randn(x0.shape, generator=gen)
    sd = denoiser.sigma_data
    out = []
    with torch.no_grad():
        for s in np.asarray(sigmas, dtype=np.float64):
            total = 0.0
            for start in range(0, n_samples, batch_size):
                xb, eb = x0[start : start + batch_size], eps[start : start + batch_size]
                den = bind(denoiser, labels, slice(start, start + batch_size))
                pred = den(xb + float(s) * eb, torch.full((len(xb),), float(s)))
                total += float(((pred.float() - xb) ** 2).sum())
            out.append(total / x0.numel() * float(loss_weight(torch.tensor(s, dtype=torch.float64), sd)))
    return np.asarray(out)
