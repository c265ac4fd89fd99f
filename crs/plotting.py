"""Figures for the notebooks: one function per figure, each returning the matplotlib Figure."""

from __future__ import annotations

import io
from typing import Mapping

import numpy as np
import torch

from crs.io import atomic_write_bytes
from crs.optimize import step_discrepancy
from crs.rate import RateEstimate
from crs.schedules import Schedule

__all__ = [
    "plot_noised_data",
    "plot_schedules",
    "plot_step_discrepancy",
    "plot_training_density",
    "plot_velocity",
    "save_figure",
]


def _plt():
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 110) -> None:
    """Save a figure as PNG, atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_noised_data(data, sigmas=(0.0, 0.1, 0.5, 2.0), n: int = 2000, seed: int = 0):
    """Scatter of 2-D data noised at a few levels (first two coordinates)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(sigmas), figsize=(3.0 * len(sigmas), 3.0), sharex=True, sharey=True)
    gen = torch.Generator().manual_seed(seed)
    x0 = data.sample(n, gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    for ax, s in zip(np.atleast_1d(axes), sigmas):
        x = (x0 + s * eps).flatten(1).numpy()
        ax.scatter(x[:, 0], x[:, 1] if x.shape[1] > 1 else np.zeros(len(x)), s=2, alpha=0.4)
        ax.set_title(f"sigma = {s:g}")
        ax.set_aspect("equal")
    lim = float(np.abs(x0.flatten(1)[:, :2]).max()) + 2.5 * max(sigmas)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    fig.tight_layout()
    return fig


def plot_velocity(rates: Mapping[str, RateEstimate], exact: Mapping[str, np.ndarray] | None = None, normalise: bool = True):
    """Velocity with respect to alpha against logsnr, one line (with a 2-stderr band) per measure.

    Args:
        rates: ``{label: RateEstimate}``.
        exact: optional ``{label: velocity at the interval midpoints}`` drawn dashed.
        normalise: divide each curve by its total discrepancy, so measures share one axis.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for label, rate in rates.items():
        scale = rate.discrepancy.sum() if normalise else 1.0
        v, se = rate.velocity() / scale, rate.velocity_stderr() / scale
        (line,) = ax.plot(rate.logsnr_mid, v, label=label)
        ax.fill_between(rate.logsnr_mid, np.clip(v - 2 * se, v * 1e-3, None), v + 2 * se, color=line.get_color(), alpha=0.25)
        if exact and label in exact:
            ax.plot(rate.logsnr_mid, np.asarray(exact[label]) / scale, "--", color=line.get_color(), label=f"{label} (exact)")
    ax.set_yscale("log")
    ax.set_xlabel("logsnr = -2 log sigma")
    ax.set_ylabel("velocity w.r.t. alpha" + (" (normalised)" if normalise else ""))
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    ax.set_title("Rate of change of the noised distribution")
    fig.tight_layout()
    return fig


def plot_schedules(schedules: Mapping[str, torch.Tensor], title: str = "Sampling schedules"):
    """Noise level against step index (log scale, final 0 omitted) for several schedules."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for label, sigmas in schedules.items():
        s = np.asarray(sigmas)[:-1]
        style = dict(lw=2.5, color="k", zorder=5) if label.startswith("crs") else dict(lw=1.2)
        ax.plot(np.arange(len(s)), s, marker="o", ms=3, label=label, **style)
    ax.set_yscale("log")
    ax.set_xlabel("step index i")
    ax.set_ylabel("sigma_i")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_step_discrepancy(rate: RateEstimate, schedules: Mapping[str, torch.Tensor]):
    """Share of the total discrepancy covered by each step, per schedule (grouped bars)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    names = list(schedules)
    width = 0.8 / len(names)
    for j, label in enumerate(names):
        steps = step_discrepancy(rate, schedules[label])
        share = steps / steps.sum()
        style = dict(color="k") if label.startswith("crs") else {}
        ax.bar(np.arange(len(share)) + (j - (len(names) - 1) / 2) * width, share, width, label=label, **style)
    ax.axhline(1.0 / len(share), color="grey", ls="--", lw=1)
    ax.set_xlabel("step (from sigma_max towards sigma_min)")
    ax.set_ylabel("share of the total discrepancy")
    ax.set_title(f"Per-step discrepancy under '{rate.measure}' (dashed: equal shares)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def plot_training_density(schedules: Mapping[str, Schedule], points: int = 400):
    """Training noise-level density over log sigma for several continuous schedules."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for label, sched in schedules.items():
        s = np.exp(np.linspace(np.log(sched.sigma_min), np.log(sched.sigma_max), points))
        style = dict(lw=2.5, color="k") if label.startswith("crs") else dict(lw=1.2)
        ax.plot(np.log(s), sched.density(s, wrt="log_sigma").numpy(), label=label, **style)
    ax.set_yscale("log")  # Beta-type schedules pile up at the ends: a linear axis hides the rest
    ax.set_ylim(bottom=1e-3)
    ax.set_xlabel("log sigma")
    ax.set_ylabel("density over log sigma")
    ax.set_title("Training distribution of noise levels (t ~ U(0, 1), sigma = sigma(t))")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
