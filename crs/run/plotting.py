"""Figures for the notebooks: one function per figure, each returning the matplotlib Figure."""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from crs.io import atomic_write_bytes
from crs.optimize import step_discrepancy
from crs.rate import RateEstimate
from crs.run.jobs import entry_key

__all__ = [
    "plot_crs_ratio",
    "plot_loss_by_sigma",
    "plot_losses",
    "plot_noise_densities",
    "plot_metric_vs_nfe",
    "plot_noised_data",
    "plot_precision_recall",
    "plot_sample_grid",
    "plot_samples",
    "plot_schedules",
    "plot_step_discrepancy",
    "plot_velocity",
    "save_figure",
]


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _image_canvas(images: torch.Tensor) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] tiled on a near-square white canvas (rows*(H+1)+1, cols*(W+1)+1, C) in [0, 1]."""
    imgs = ((images.detach().cpu().float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    n, h, w, c = imgs.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    canvas = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c), dtype=np.float32)
    for i, img in enumerate(imgs):
        r, q = divmod(i, cols)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = img
    return canvas


def _show_canvas(ax, canvas: np.ndarray) -> None:
    gray = canvas.shape[-1] == 1
    ax.imshow(canvas.squeeze(-1) if gray else canvas, cmap="gray" if gray else None, vmin=0, vmax=1)
    ax.axis("off")


def _nfe_ticks(ax, values) -> None:
    """Plain tick labels at the nfe values on a log axis."""
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(values)
    ax.set_xticklabels([str(v) for v in values])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (papermill, nbval, JupyterLab), never in a plain Python process."""
    if "IPython" not in sys.modules:
        return False
    shell = sys.modules["IPython"].get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def save_figure(fig, path, dpi: int = 110, show: bool = True) -> None:
    """Save a figure as PNG, atomically. In a notebook, also show that same PNG in the cell's output and close the
    figure: one rendering, and the figure appears whatever matplotlib backend the environment chose
    (``MPLBACKEND=Agg`` would otherwise keep it out of the executed notebook)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    if show and _in_notebook():
        from IPython.display import Image, display

        display(Image(data=buf.getvalue()))
        _plt().close(fig)


def plot_noised_data(data, sigmas=(0.0, 0.1, 0.5, 2.0), n: int = 2000, seed: int = 0, n_images: int = 9):
    """The data noised at a few levels: 2-D data as a scatter of ``n`` samples (first two coordinates), images as
    ``n_images`` samples per level, VP-scaled (``x / sqrt(1 + sigma^2)``, the scale a VP model sees) and clipped to
    the data range."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(sigmas), figsize=(3.0 * len(sigmas), 3.0), sharex=True, sharey=True)
    gen = torch.Generator().manual_seed(seed)
    images = len(data.shape) > 1
    x0 = data.sample(n_images if images else n, gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    for ax, s in zip(np.atleast_1d(axes), sigmas):
        if images:
            _show_canvas(ax, _image_canvas((x0 + s * eps) / math.sqrt(1.0 + s * s)))
            ax.set_title(f"sigma = {s:g}")
            continue
        x = (x0 + s * eps).flatten(1).numpy()
        ax.scatter(x[:, 0], x[:, 1] if x.shape[1] > 1 else np.zeros(len(x)), s=2, alpha=0.4)
        ax.set_title(f"sigma = {s:g}")
        ax.set_aspect("equal")
    if not images:
        lim = float(np.abs(x0.flatten(1)[:, :2]).max()) + 2.5 * max(sigmas)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    fig.tight_layout()
    return fig


def plot_velocity(
    rates: Mapping[str, RateEstimate], exact: Mapping[str, np.ndarray] | None = None, normalise: bool = True
):
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
        ax.fill_between(
            rate.logsnr_mid, np.clip(v - 2 * se, v * 1e-3, None), v + 2 * se, color=line.get_color(), alpha=0.25
        )
        if exact and label in exact:
            ax.plot(
                rate.logsnr_mid,
                np.asarray(exact[label]) / scale,
                "--",
                color=line.get_color(),
                label=f"{label} (exact)",
            )
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


def plot_losses(losses: Mapping[str, Sequence[float]], window: int = 25):
    """Training loss per step (light) and its running mean over ``window`` steps (solid)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, values in losses.items():
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:
            continue
        (line,) = ax.plot(v, alpha=0.25, lw=0.8)
        k = min(window, v.size)
        ax.plot(
            np.arange(k - 1, v.size), np.convolve(v, np.ones(k) / k, mode="valid"), color=line.get_color(), label=label
        )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("EDM-weighted loss")
    ax.set_title("Training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_samples(
    samples: torch.Tensor, reference: torch.Tensor | None = None, title: str = "Samples", max_images: int = 64
):
    """2-D samples as a scatter (beside reference data), images as a grid."""
    plt = _plt()
    samples = samples.detach().cpu().float()
    if samples.ndim == 2:
        fig, ax = plt.subplots(figsize=(4.2, 4.2))
        if reference is not None:
            ref = reference.detach().cpu().float()
            ax.scatter(ref[:, 0], ref[:, 1], s=2, alpha=0.3, color="grey", label="data")
        ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5, label="samples")
        ax.set_aspect("equal")
        ax.legend(fontsize=8, markerscale=4)
    else:
        canvas = _image_canvas(samples[:max_images])
        fig, ax = plt.subplots(figsize=(4.2, 4.2 * canvas.shape[0] / canvas.shape[1]))
        _show_canvas(ax, canvas)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_noise_densities(distributions: Mapping[str, object], sigma_min: float, sigma_max: float, points: int = 400):
    """Densities over log sigma of training noise-level distributions.

    Args:
        distributions: ``{label: object with density(sigma, wrt="log_sigma")}``: a
            :class:`~crs.schedules.Schedule` (t ~ U(0, 1), sigma = sigma(t)) or a training distribution.
        sigma_min, sigma_max: the range drawn.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    s = np.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), points))
    for label, dist in distributions.items():
        style = dict(lw=2.5, color="k") if label.startswith("crs") else dict(lw=1.5)
        ax.plot(np.log(s), np.asarray(dist.density(s, wrt="log_sigma")), label=label, **style)
    ax.set_yscale("log")  # Beta-type schedules pile up at the ends: a linear axis hides the rest
    ax.set_ylim(bottom=1e-3)
    ax.set_xlabel("log sigma")
    ax.set_ylabel("density over log sigma")
    ax.set_title("Training noise-level distributions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_loss_by_sigma(sigmas, losses: Mapping[str, np.ndarray], reference: str = "base"):
    """Held-out EDM loss at fixed noise levels, as a ratio to the ``reference`` model's (< 1: better).

    Args:
        sigmas: the levels (L,).
        losses: ``{label: loss per level (L,)}``, including ``reference``.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ref = np.asarray(losses[reference])
    for label, values in losses.items():
        style = dict(lw=2.5, color="k") if label.startswith("crs") else dict(lw=1.5)
        if label == "exact":
            style = dict(lw=1.0, color="grey", ls="--")
        ax.plot(np.log(np.asarray(sigmas)), np.asarray(values) / ref, marker="o", ms=3, label=label, **style)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("log sigma")
    ax.set_ylabel(f"held-out loss / {reference} model's")
    ax.set_title("Denoising loss at fixed noise levels (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sample_grid(
    samples: Mapping[str, torch.Tensor], reference: torch.Tensor | None = None, title: str = "", max_images: int = 16
):
    """One panel per label: 2-D samples as scatter (grey: reference), images as a small grid."""
    plt = _plt()
    n = len(samples)
    cols = min(n, 4)
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    for ax, (label, x) in zip(axes.flat, samples.items()):
        x = x.detach().cpu().float()
        if x.ndim == 2:
            if reference is not None:
                ax.scatter(reference[:, 0], reference[:, 1], s=1, alpha=0.2, color="grey")
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5, color="k" if label.startswith("crs") else None)
            ax.set_aspect("equal")
        else:
            _show_canvas(ax, _image_canvas(x[:max_images]))
        ax.set_title(label, fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_metric_vs_nfe(rows: Sequence[dict], metric: str, model: str):
    """Metric against nfe with 95 % intervals, one panel per sampler, one line per schedule (CRS schedules, by
    their rows' ``kind``, drawn bold)."""
    from crs.run.jobs import kind_of

    plt = _plt()
    sel = [r for r in rows if r["metric"] == metric and entry_key(r) == model]
    kinds = {r["schedule"]: kind_of(r) for r in sel}
    samplers = list(dict.fromkeys(r["sampler"] for r in sel))
    fig, axes = plt.subplots(1, len(samplers), figsize=(3.6 * len(samplers), 3.4), squeeze=False, sharey=True)
    for ax, sampler in zip(axes.flat, samplers):
        for sched in kinds:
            pts = sorted(
                (r["nfe"], r["value"], r["ci_low"], r["ci_high"])
                for r in sel
                if r["sampler"] == sampler and r["schedule"] == sched
            )
            if not pts:
                continue
            nfe, val, lo, hi = map(np.asarray, zip(*pts))
            label = sched
            if kinds[sched] == "crs":
                style = dict(color="k", lw=2.5, zorder=5) if sched == "crs" else dict(lw=2.2, zorder=5)
            elif sched in ("optimal", "optimal-free"):  # the floor a schedule of that budget can reach
                style = dict(color="0.35", ls="--", lw=1.8, zorder=4)
                label = f"{sched} (floor)" if sched == "optimal" else sched
            else:
                style = dict(lw=1.2)
            ax.errorbar(nfe, val, yerr=_bars(val, lo, hi), marker="o", ms=3, capsize=2, label=label, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _nfe_ticks(ax, sorted({r["nfe"] for r in sel if r["sampler"] == sampler}))
        ax.set_xlabel("nfe")
        ax.set_title(sampler)
    axes.flat[0].set_ylabel(metric)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{metric} against nfe, model '{model}' (bars: 95 % bootstrap intervals)")
    fig.tight_layout()
    return fig


def plot_precision_recall(rows: Sequence[dict], features: str, model: str, nfe: int):
    """Precision against recall (with 95 % intervals) for every schedule and sampler at one nfe (CRS schedules, by
    their rows' ``kind``, in black)."""
    from crs.run.jobs import kind_of

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 4.2))
    pr = {}
    for r in rows:
        if entry_key(r) == model and r["nfe"] == nfe and r["metric"] in (f"precision_{features}", f"recall_{features}"):
            pr.setdefault((r["schedule"], r["sampler"]), {})[r["metric"].split("_")[0]] = r
    markers = dict(zip(dict.fromkeys(s for _, s in pr), "osD^v<>"))
    for (sched, sampler), v in pr.items():
        if "precision" in v and "recall" in v:
            p, q = v["precision"], v["recall"]
            ax.errorbar(
                q["value"],
                p["value"],
                xerr=_bars([q["value"]], [q["ci_low"]], [q["ci_high"]]),
                yerr=_bars([p["value"]], [p["ci_low"]], [p["ci_high"]]),
                marker=markers[sampler],
                ms=5,
                capsize=2,
                color="k" if kind_of(p) == "crs" else None,
                label=f"{sched} / {sampler}",
                ls="none",
            )
    ax.set_xlabel(f"recall ({features})")
    ax.set_ylabel(f"precision ({features})")
    ax.set_title(f"Precision and recall, model '{model}', nfe {nfe} (95 % intervals)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def _bars(value, low, high) -> np.ndarray:
    """Error bar lengths (2, N) from an interval: a bootstrap interval need not contain its estimate (the shifted
    interval moves by the estimated bias; a degenerate one is off by round-off), so a side that would be negative
    is drawn as 0."""
    value, low, high = (np.asarray(a, dtype=np.float64) for a in (value, low, high))
    return np.clip(np.stack([value - low, high - value]), 0.0, None)


def plot_crs_ratio(comparisons: Sequence[dict], metric: str):
    """CRS value divided by the best baseline's against nfe, one line per model and sampler (< 1: CRS better,
    for lower-is-better metrics), with the paired interval of the comparison (Bonferroni over the cell's baselines,
    :func:`crs.metrics.compare`; baseline value held fixed); filled markers where it excludes 0."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    sel = [c for c in comparisons if c["metric"] == metric and c["ratio"] is not None]
    for key in dict.fromkeys((entry_key(c), c["sampler"]) for c in sel):
        pts = sorted(
            (
                c["nfe"],
                c["ratio"],
                c["significant"],
                c["diff_ci_low"] / c["baseline_value"],
                c["diff_ci_high"] / c["baseline_value"],
            )
            for c in sel
            if (entry_key(c), c["sampler"]) == key and c["baseline_value"] != 0
        )
        nfe, ratio, sig, lo, hi = map(np.asarray, zip(*pts))
        (line,) = ax.plot(nfe, ratio, label=f"{key[0]} / {key[1]}")
        # interval of the ratio with the baseline's value held fixed: 1 + (paired CI of the difference) / baseline
        ax.errorbar(nfe, ratio, yerr=_bars(ratio, 1 + lo, 1 + hi), ls="none", color=line.get_color(), capsize=2)
        ax.scatter(
            nfe,
            ratio,
            facecolors=[line.get_color() if s else "none" for s in sig],
            edgecolors=line.get_color(),
            zorder=5,
        )
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    _nfe_ticks(ax, sorted({c["nfe"] for c in sel}))
    ax.set_xlabel("nfe")
    ax.set_ylabel(f"{metric}: CRS / best baseline")
    ax.set_title("CRS against the best baseline at each nfe (filled: significant)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
