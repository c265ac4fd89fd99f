"""Fidelity of the ported peers: each port (``crs.peers``, registered in ``crs.search``) against its authors' code.

    python -m benchmarks.fidelity dmn --reference PATH   # PATH: a checkout of github.com/scxue/DM-NonUniform
    python -m benchmarks.fidelity oss --reference PATH   # PATH: a checkout of github.com/bebebe666/OptimalSteps

The reference code runs here, outside the project: the script imports it from the checkout given (nothing is
downloaded; the project never imports it otherwise), feeds it the same case as the port, and records the agreement of
the schedules (largest gap in log sigma) and of their teacher errors on the 2-D mixture with its exact denoiser, in
``benchmarks/records/fidelity-<peer>.json`` (rendered into docs/results/peers.md). docs/concepts/peers.md lists
where each port differs from its original and why.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

import crs

__all__ = ["dmn_fidelity", "load_reference", "oss_fidelity"]


def load_reference(checkout: str | Path, file: str, name: str):
    """The module ``file`` of a reference checkout, imported under ``name``; ValueError naming what is missing."""
    path = Path(checkout) / file
    if not path.is_file():
        raise ValueError(f"{str(path)!r} does not exist: give a checkout of the reference repository that has {file}.")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


class _EDMSchedule:
    """The noise schedule DM-NonUniform's ``StepOptim`` reads, for an EDM model: ``t = sigma``, ``alpha_vp =
    1 / sqrt(1 + sigma^2)``, ``lambda = -log sigma`` (its own code comments: ``T = 80`` for EDM models)."""

    def marginal_alpha(self, t):
        return 1.0 / torch.sqrt(1.0 + t * t)

    def inverse_lambda(self, lam):
        return torch.exp(-lam)


def _teacher_errors(sampler: str, schedules: dict[str, np.ndarray], n: int = 1024, seed: int = 0) -> dict:
    """Each schedule's teacher error on the mixture (exact denoiser), ``n`` samples, one teacher for all."""
    data = crs.make_dataset("gmm")
    teacher = crs.solve_teacher(data.denoiser, data.shape, n, seed, steps=512)
    out = {}
    for name, sig in schedules.items():
        out[name] = crs.teacher_error(data.denoiser, data, sampler, torch.from_numpy(sig), teacher=teacher).value
    return out


def dmn_fidelity(reference: str | Path, steps=(4, 5, 9, 10, 19)) -> dict:
    """DM-NonUniform's ``StepOptim.get_ts_lambdas`` (order 3, its only one; uniform-lambda start) against
    :func:`crs.peers.dmn_lambdas` (order 3) on the EDM range [0.002, 80], for ``steps`` solver steps between the
    ends. Per case: both schedules, their largest gap in log sigma, both objectives (the port's function), the
    seconds each took, and both teacher errors with DPM-Solver++(2M) (the suite's closest sampler to the 3rd-order
    multistep solver the reference models) on the mixture, the schedule's levels then 0."""
    from crs.peers import dmn_lambdas, dmn_objective

    module = load_reference(reference, "step_optim.py", "dmn_reference")
    rows = []
    lo, hi = 0.002, 80.0
    for n in steps:
        opt = module.StepOptim(_EDMSchedule())
        opt.T = hi
        start = time.perf_counter()
        _, lam_ref = opt.get_ts_lambdas(n, lo, "unif")
        ref_seconds = time.perf_counter() - start
        lam_ref = lam_ref.double().numpy()
        start = time.perf_counter()
        # the ends as the reference computes them (log(alpha / sigma_vp) through torch, within 1e-15 of -log sigma):
        # the objective is not smooth, so its optimiser's path depends on the last bits of its inputs
        ends = float(opt.lambda_func(hi).item()), float(opt.lambda_func(lo).item())
        lam_port, _ = dmn_lambdas(n, *ends, order=3)
        port_seconds = time.perf_counter() - start
        schedules = {"reference": np.append(np.exp(-lam_ref), 0.0), "port": np.append(np.exp(-lam_port), 0.0)}
        schedules["reference"][[0, -2]] = hi, lo  # the reference's ends round-trip through float32 torch
        errors = _teacher_errors("dpmpp_2m", schedules)
        rows.append(
            dict(
                steps=n,
                reference=schedules["reference"].tolist(),
                port=schedules["port"].tolist(),
                max_log_gap=float(np.max(np.abs(lam_ref - lam_port))),
                reference_objective=dmn_objective(lam_ref, 3),
                port_objective=dmn_objective(lam_port, 3),
                reference_seconds=ref_seconds,
                port_seconds=port_seconds,
                reference_teacher_error=errors["reference"],
                port_teacher_error=errors["port"],
            )
        )
    return {"peer": "dmn", "repository": "scxue/DM-NonUniform", "case": "EDM range [0.002, 80], order 3", "rows": rows}


class _FlowWrap(torch.nn.Module):
    """A denoiser as the velocity model OSS's ``search_OSS`` calls: ``model(z, i, class_emb, kwargs)`` at its grid
    index ``i``, flow-matching state ``z = x / (1 + sigma)``, ``t = sigma / (1 + sigma)``, ``v = eps - x0``."""

    def __init__(self, denoiser, levels: np.ndarray) -> None:
        super().__init__()
        self.denoiser, self.levels = denoiser, torch.from_numpy(levels)
        self.fm_steps = self.levels / (1 + self.levels)

    def forward(self, z, t, class_emb=None, model_kwargs=None):
        sigma = self.levels[t].to(z.dtype)
        x = z * (1 + sigma)[:, None]
        d = self.denoiser(x, sigma)
        return (x - d) / sigma[:, None] - d


def oss_fidelity(reference: str | Path, ks=(5, 10), grid: int = 100, n: int = 8) -> dict:
    """OSS's ``search_OSS`` (Euler, its only sampler; one programme per sample, then ``cal_medium``) against
    :func:`crs.peers.oss_path` with the original's start (``start="noise"``) on the 2-D mixture: EDM's rho = 7 grid
    of ``grid`` levels on [0.002, 80] and 0, the original's teacher (Euler on the grid) for both, ``n`` samples.
    Per budget: both index paths, their schedules' largest gap in log sigma, both teacher errors (Euler from
    ``sigma_0 z``, 1024 other samples, the schedule as the suite runs it), and the seconds each took."""
    from crs.peers import oss_path

    sys.path.insert(0, str(Path(reference)))
    try:
        if not (Path(reference) / "OSS" / "OSS.py").is_file():
            raise ValueError(f"{str(reference)!r} has no OSS/OSS.py: give a checkout of bebebe666/OptimalSteps.")
        module = importlib.import_module("OSS.OSS")
    finally:
        sys.path.remove(str(Path(reference)))
    data = crs.make_dataset("gmm")
    levels = np.concatenate([[0.0], crs.baseline_sigmas("karras", grid, 0.002, 80.0).numpy()[:-1][::-1]])
    model = _FlowWrap(data.denoiser, levels)
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # flow-matching noise
    x_top = z * (1 + levels[-1])
    traj = [x_top]  # the original's teacher: Euler on the grid, in EDM coordinates (the same steps)
    for i in range(grid, 0, -1):
        x = traj[-1]
        d = data.denoiser(x, torch.full((n,), levels[i], dtype=torch.float64))
        traj.append(x + (levels[i - 1] - levels[i]) * (x - d) / levels[i])
    traj = torch.stack(traj[::-1])
    teacher = crs.solve_teacher(data.denoiser, data.shape, 1024, 1, 0.002, 80.0, steps=512)

    def error(sig):
        x = crs.quality.endpoints(data.denoiser, "euler", torch.from_numpy(sig), teacher.x_T * (sig[0] / 80.0))
        return float((x.double() - teacher.endpoint.double()).pow(2).mean().sqrt())

    rows = []
    for k in ks:
        start = time.perf_counter()
        ref_steps = module.cal_medium(module.search_OSS(model, z, n, None, "cpu", grid, k))
        ref_seconds = time.perf_counter() - start
        start = time.perf_counter()
        path, _ = oss_path(data.denoiser, "euler", levels, traj, k, start="noise")
        port_seconds = time.perf_counter() - start
        ref_path = [0, *ref_steps]
        sig = {name: np.append(levels[p[1:]][::-1], 0.0) for name, p in (("reference", ref_path), ("port", path))}
        rows.append(
            dict(
                steps=k,
                reference_path=ref_path,
                port_path=path,
                reference=sig["reference"].tolist(),
                port=sig["port"].tolist(),
                max_log_gap=float(np.max(np.abs(np.log(sig["reference"][:-1] / sig["port"][:-1])))),
                reference_teacher_error=error(sig["reference"]),
                port_teacher_error=error(sig["port"]),
                reference_seconds=ref_seconds,
                port_seconds=port_seconds,
            )
        )
    case = f"2-D mixture, exact denoiser, Euler, {grid}-level grid, {n} samples"
    return {"peer": "oss", "repository": "bebebe666/OptimalSteps", "case": case, "rows": rows}


FIDELITY = {"dmn": dmn_fidelity, "oss": oss_fidelity}


def main(argv=None) -> None:
    from benchmarks.records import begin, write_record
    from benchmarks.tables import TABLES

    parser = argparse.ArgumentParser(prog="python -m benchmarks.fidelity", description=__doc__.splitlines()[0])
    parser.add_argument("peer", choices=list(FIDELITY))
    parser.add_argument("--reference", required=True, help="a checkout of the peer's repository")
    parser.add_argument("--no-record", action="store_true", help="print only; write no record")
    begin()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = FIDELITY[args.peer](args.reference)
    print(TABLES["fidelity"](result))
    if not args.no_record:
        command = ["benchmarks.fidelity", args.peer, "--reference", f"<checkout of {result['repository']}>"]
        write_record(f"fidelity-{args.peer}", "fidelity", result, command, time.perf_counter() - start, "cpu")


if __name__ == "__main__":
    main()
