"""Measured cost of rate estimation, for the README: ``python -m crs.bench``.

Runs every measure on the 2-D Gaussian mixture (exact denoiser) at 64 grid intervals and 4096
samples, repeats each a few times and prints a Markdown table of evaluations and the median wall
time on this machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch

import crs

__all__ = ["rate_cost_table"]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| measure | network evaluations | feature evaluations | seconds (median) | seconds (worst) |")
    print("|---|---:|---:|---:|---:|")
    for row in rate_cost_table(repeats=args.repeats):
        print(f"| `{row['measure']}` | {row['evaluations']:,} | {row['feature_evaluations']:,} | {row['seconds']:.3f} | {row['worst']:.3f} |")


if __name__ == "__main__":
    main()
