"""Measured costs for the README: ``python -m crs.bench [rate|training|online|all]``.

* ``rate``: every measure on the 2-D Gaussian mixture (exact denoiser) at 64 grid intervals and
  4096 samples, median wall time of a few repeats;
* ``training``: optimiser steps per second of each default model (MLP on the mixture, UNets on
  digits and MNIST);
* ``online``: the overhead of online CRS (re-estimating the velocity while fine-tuning) in percent
  of the training steps' own time.

Each prints a Markdown table measured on this machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch

import crs

__all__ = ["online_overhead_table", "rate_cost_table", "training_speed_table"]

# (label, dataset, dataset kwargs, batch size): the default models of notebook 00
TRAINING_CASES = [
    ("MLP, 2-D mixture", "gmm", {}, 256),
    ("UNet (32, 64), digits 1x8x8", "digits", {}, 64),
    ("UNet (32, 64), MNIST 1x16x16", "mnist", {"resolution": 16}, 64),
    ("UNet (32, 64), MNIST 1x28x28", "mnist", {}, 64),
]


def rate_cost_table(measures=("fid", "data", "noise", "data+cosine"), grid_size: int = 64, n_samples: int = 4096, repeats: int = 5) -> list[dict]:
    """Time :func:`crs.estimate_rate` per measure; one dict per measure with evaluations and seconds."""
    data = crs.make_dataset("gmm")
    rows = []
    for measure in measures:
        times = []
        for _ in range(repeats):
            rate = crs.estimate_rate(measure, data, denoiser=data.denoiser, grid_size=grid_size, n_samples=n_samples)
            times.append(rate.seconds)
        rows.append(dict(measure=measure, evaluations=rate.evaluations, feature_evaluations=rate.feature_evaluations,
                         seconds=statistics.median(times), worst=max(times)))
    return rows


def training_speed_table(steps: int = 30, warmup: int = 5, cases=TRAINING_CASES) -> list[dict]:
    """Steps per second of :func:`crs.training.train` for each default model (after ``warmup`` steps)."""
    from crs.models import build_denoiser
    from crs.training import TrainConfig, train

    rows = []
    for label, name, kwargs, batch in cases:
        data = crs.make_dataset(name, **kwargs)
        den = build_denoiser(data.shape)
        train(den, data, TrainConfig(steps=warmup, batch_size=batch), progress=False)
        result = train(den, data, TrainConfig(steps=steps, batch_size=batch), progress=False)
        rows.append(dict(model=label, params=sum(p.numel() for p in den.parameters()), batch=batch,
                         steps_per_second=result.steps_per_second))
    return rows


def online_overhead_table(cases=None) -> list[dict]:
    """Fine-tune with ``crs-online`` and report the re-estimation time in percent of step time.

    Each case: (label, dataset, kwargs, batch, steps, online_every, online_grid, online_samples).
    """
    from crs.models import build_denoiser
    from crs.training import TrainConfig, train

    cases = cases or [
        ("MLP, 2-D mixture", "gmm", {}, 256, 1000, 200, 16, 256),
        ("UNet (32, 64), MNIST 1x16x16", "mnist", {"resolution": 16}, 64, 500, 250, 16, 128),
    ]
    rows = []
    for label, name, kwargs, batch, steps, every, grid, samples in cases:
        data = crs.make_dataset(name, **kwargs)
        cfg = TrainConfig(steps=steps, batch_size=batch, noise="crs-online", online_every=every, online_grid=grid,
                          online_samples=samples, schedule=None)
        result = train(build_denoiser(data.shape), data, cfg, progress=False)
        rows.append(dict(model=label, steps=steps, online_every=every, grid=grid, samples=samples,
                         updates=result.online_updates, online_seconds=result.online_seconds,
                         train_seconds=result.seconds - result.online_seconds, overhead=100 * result.online_overhead))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["rate", "training", "online", "all"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.what in ("rate", "all"):
        print("| measure | network evaluations | feature evaluations | seconds (median) | seconds (worst) |")
        print("|---|---:|---:|---:|---:|")
        for row in rate_cost_table(repeats=args.repeats):
            print(f"| `{row['measure']}` | {row['evaluations']:,} | {row['feature_evaluations']:,} | {row['seconds']:.3f} | {row['worst']:.3f} |")
    if args.what in ("training", "all"):
        print("\n| model | parameters | batch | steps / s |\n|---|---:|---:|---:|")
        for row in training_speed_table():
            print(f"| {row['model']} | {row['params']:,} | {row['batch']} | {row['steps_per_second']:.1f} |")
    if args.what in ("online", "all"):
        print("\n| model | steps | re-estimate every | grid x samples | re-estimations | their time (s) | step time (s) | overhead |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in online_overhead_table():
            print(f"| {row['model']} | {row['steps']} | {row['online_every']} | {row['grid']} x {row['samples']} | {row['updates']} "
                  f"| {row['online_seconds']:.2f} | {row['train_seconds']:.1f} | {row['overhead']:.1f} % |")


if __name__ == "__main__":
    main()
