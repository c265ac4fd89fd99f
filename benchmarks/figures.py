"""The README's figure: ``python -m benchmarks.figures`` writes ``docs/figures/crs.png``.

On the 2-D Gaussian mixture with its exact denoiser (deterministic, seconds on a CPU): the velocity of the noised
distribution under the ``data`` measure against the noise level, and the 10-step CRS schedule (xi = 1) beside two
fixed baselines. An illustration of the method, not a measured result.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "figures" / "crs.png"


def main() -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import crs
    from crs.io import atomic_write_bytes

    data = crs.make_dataset("gmm")
    rate = crs.estimate_rate("data", data, denoiser=data.denoiser, grid_size=64, n_samples=4096, seed=0)
    steps = 10
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    mid = np.sqrt(rate.sigma[1:] * rate.sigma[:-1])
    left.loglog(mid, rate.velocity("alpha"), color="C0")
    left.set(xlabel="noise level sigma", ylabel="velocity v (data measure)", title="How fast p_sigma changes")
    schedules = {
        "CRS (xi = 1)": crs.optimize_schedule(rate, xi=1.0).discretize(steps)[:-1],
        "karras": crs.baseline_sigmas("karras", steps, 0.002, 80.0)[:-1],
        "kl_optimal": crs.baseline_sigmas("kl_optimal", steps, 0.002, 80.0)[:-1],
    }
    for i, (name, sig) in enumerate(schedules.items()):
        right.semilogy(range(steps), sig, "o-", label=name, color=f"C{i}")
    right.set(xlabel="step", ylabel="sigma", title=f"{steps}-step schedules")
    right.legend()
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(OUT, buf.getvalue())
    print(f"wrote {OUT.relative_to(ROOT)}")
    return OUT


if __name__ == "__main__":
    main()
