"""Fidelity of the ported peers: each port (``crs.peers``, registered in ``crs.search``) against its authors' code.

    python -m benchmarks.fidelity dmn --reference PATH   # PATH: a checkout of github.com/scxue/DM-NonUniform
    python -m benchmarks.fidelity oss --reference PATH   # PATH: a checkout of github.com/bebebe666/OptimalSteps
    python -m benchmarks.fidelity ld3 --reference PATH   # PATH: a checkout of github.com/vinhsuhi/LD3

The reference code runs here, outside the project: the script imports it from the checkout given (nothing is
downloaded; the project never imports it otherwise), feeds it the same case as the port, and records the agreement of
the schedules (largest gap in log sigma) and of their teacher errors on the 2-D mixture with its exact denoiser, in
``benchmarks/records/fidelity-<peer>.json`` (rendered into docs/results/peers.md). docs/concepts/peers.md lists
where each port differs from its original and why.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import crs

__all__ = ["dmn_fidelity", "ld3_fidelity", "load_reference", "oss_fidelity"]


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


# ----------------------------------------------------------------------------- LD3
def _ld3_modules(reference: str | Path) -> dict:
    """The original LD3 modules from a checkout, imported as they are: ``lpips`` and ``imageio`` (imported at its
    module level, used only for the LPIPS loss and GIFs) replaced by empty modules where they are not installed;
    its plots turned off."""
    import types

    root = Path(reference)
    if not (root / "trainer.py").is_file():
        raise ValueError(f"{str(reference)!r} has no trainer.py: give a checkout of vinhsuhi/LD3.")
    for name in ("lpips", "imageio"):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    sys.path.insert(0, str(root))
    try:
        trainer = importlib.import_module("trainer")
        dataset = importlib.import_module("dataset")
        schedules = importlib.import_module("noise_schedulers")
        euler = importlib.import_module("samplers.euler")
        edm = load_reference(root, "models/edm_uncond.py", "ld3_edm_uncond")
    finally:
        sys.path.remove(str(root))
    trainer.save_gif = lambda path: None  # plots only
    trainer.LD3Trainer._visual_times = lambda self: None
    return {"trainer": trainer, "dataset": dataset, "schedules": schedules, "euler": euler, "edm": edm}


def ld3_fidelity(reference: str | Path, nfes=(5, 10), spread_seeds=(1, 2, 3)) -> dict:
    """LD3's own ``LD3Trainer`` beside :func:`crs.peers.ld3_train` (search method ``ld3``) on the mixture, Euler,
    on the same 100 teacher pairs (the port's search teacher), with the original set to the port's convention:
    ``nfe`` levels then a final Euler step to 0 (a subclass of its ``Euler``), decoupled model times off
    (``win_rate`` 0), L2 loss, its CIFAR-10 settings otherwise. Rows: both schedules, their gap, teacher errors
    (1024 held-out samples) and validation losses. ``matched``: the original driven in the port's minibatch
    order; ``spread``: other shuffle seeds, both codes (how far the order alone moves the schedule)."""
    from crs.peers import ld3_levels
    from crs.quality import solve_teacher
    from crs.search import SearchCache, search_schedule
    from crs.seeds import search_seed

    mods = _ld3_modules(reference)
    ld3_trainer, LD3Dataset = mods["trainer"], mods["dataset"].LD3Dataset
    NoiseScheduleVE, Euler, edm_uncond = mods["schedules"].NoiseScheduleVE, mods["euler"].Euler, mods["edm"]
    LO, HI = 0.002, 80.0

    class EulerToZero(Euler):
        """The original Euler over the given times, then the same Euler update to sigma = 0 (our convention)."""

        def sample_simple(
            self, model_fn, x, timesteps, timesteps2, NFEs=20, condition=None, unconditional_condition=None, **kwargs
        ):
            n = len(timesteps) - 1
            x = super().sample_simple(
                model_fn,
                x,
                timesteps,
                timesteps2,
                NFEs=n,
                condition=condition,
                unconditional_condition=unconditional_condition,
            )
            t_last, t2_last = timesteps[-1], timesteps2[-1]
            d = self.dx_dt_for_blackbox_solvers(x, t_last, t2_last)
            return x + (0.0 - t_last) * d

    def make_net(D):
        def net(x, t, cond=None):  # EDM preconditioned net: D(x; sigma), shape (B, C, H, W)
            b = x.shape[0]
            return D(x.reshape(b, -1), t).reshape(x.shape)

        return net

    class _CpuCuda:
        """torch.Tensor.cuda -> identity while the original runs (it hard-codes .cuda())."""

        def __enter__(self):
            self.saved = torch.Tensor.cuda
            torch.Tensor.cuda = lambda self, *a, **k: self
            return self

        def __exit__(self, *exc):
            torch.Tensor.cuda = self.saved

    class _PortOrder(torch.utils.data.Sampler):
        """One torch.randperm(n, generator=gen) per pass over the training set: the order our port draws."""

        def __init__(self, n, gen):
            self.n, self.gen = n, gen

        def __iter__(self):
            return iter(torch.randperm(self.n, generator=self.gen).tolist())

        def __len__(self):
            return self.n

    def _trainer_class(order_seed):
        """LD3Trainer, or (order_seed given) a subclass whose train loader visits the pairs in our port's order
        (only _create_train_loader is overridden: same batch size and collate function, a custom sampler)."""
        if order_seed is None:
            return ld3_trainer.LD3Trainer
        gen = torch.Generator().manual_seed(order_seed)

        class MatchedOrder(ld3_trainer.LD3Trainer):
            def _create_train_loader(self):
                self.train_loader = torch.utils.data.DataLoader(
                    self.train_data,
                    batch_size=self.train_batch_size,
                    sampler=_PortOrder(len(self.train_data), gen),
                    collate_fn=ld3_trainer.custom_collate_fn,
                )

        return MatchedOrder

    def run_original(D, teacher, nfe, native=False, rounds=(2, 5), seed=0, order_seed=None):
        """Drive the original LD3Trainer; returns (times1, times2, info, seconds)."""
        ns = NoiseScheduleVE(schedule="edm", sigma_min=LO, sigma_max=HI)
        model_fn = edm_uncond.model_wrapper(make_net(D), ns)
        solver = Euler(ns) if native else EulerToZero(ns)
        steps = nfe if native else nfe - 1  # params1 has steps + 1 entries
        C, R = 2, 1
        shift_lr = round(3.0 * 4 / nfe, 8)  # adjust_hyper with args.steps = nfe
        prior_bound = round(0.001 * R * R * C / nfe**2, 8)
        lr_time_2 = round(0.1 / nfe, 8)
        z = (teacher.x_T / HI).reshape(-1, C, R, R)
        img = teacher.endpoint.reshape(-1, C, R, R)
        lat = [z[i].clone() for i in range(len(z))]
        ori = [z[i].clone() for i in range(len(z))]
        tgt = [img[i].clone() for i in range(len(z))]
        none = [None] * len(z)
        tr = LD3Dataset(ori[:50], lat[:50], tgt[:50], none[:50], none[:50])
        va = LD3Dataset(ori[50:100], lat[50:100], tgt[50:100], none[50:100], none[50:100])
        snap = tempfile.mkdtemp(prefix=f"ld3ref_{'native' if native else 'conv'}_{nfe}_")
        torch.manual_seed(seed)
        np.random.seed(seed)
        with _CpuCuda():
            tc = ld3_trainer.TrainingConfig(
                train_data=tr,
                valid_data=va,
                train_batch_size=2,
                valid_batch_size=150,
                lr_time_1=0.005,
                lr_time_2=lr_time_2,
                shift_lr=shift_lr,
                shift_lr_decay=0.5,
                min_lr_time_1=5e-5,
                min_lr_time_2=1e-6,
                win_rate=0.5 if native else 0.0,
                patient=5,
                lr_time_decay=0.8,
                momentum_time_1=0.9,
                weight_decay_time_1=0.0,
                loss_type="L2",
                visualize=False,
                no_v1=False,
                prior_timesteps=None,
                match_prior=False,
            )
            mc = ld3_trainer.ModelConfig(
                net=model_fn,
                decoding_fn=lambda x: x,
                noise_schedule=ns,
                solver=solver,
                solver_name="euler",
                order=1,
                steps=steps,
                prior_bound=prior_bound,
                resolution=R,
                channels=C,
                time_mode="lambda",
                solver_extra_params=None,
                snapshot_path=snap,
                device=torch.device("cpu"),
            )
            t0 = time.perf_counter()
            trn = _trainer_class(order_seed)(mc, tc)
            trn.train(*rounds)
            secs = time.perf_counter() - t0
            best = torch.load(os.path.join(snap, "best_v2.pt"))
            shutil.rmtree(snap, ignore_errors=True)  # its checkpoints and pickles
        bt = best["best_t_steps"].double()
        t1, t2 = bt[: steps + 1], bt[steps + 1 :]
        info = dict(
            best_loss=float(trn.best_loss),
            iterations=int(trn.cur_iter),
            rounds_done=int(trn.cur_round),
            lr1=trn.optimizer_lamb1.param_groups[0]["lr"],
            lr2=trn.optimizer_lamb2.param_groups[0]["lr"],
            shift_lr=trn.shift_lr,
            prior_bound=prior_bound,
            moved_valid=float(
                torch.stack([(a - b).norm() for a, b in zip(trn.valid_data.latent, trn.valid_data.ori_latent)]).max()
            ),
        )
        return t1, t2, info, secs

    def log_gap(a, b):
        return float(np.max(np.abs(np.log(np.array(a[:-1])) - np.log(np.array(b[:-1])))))

    def port_direct(D, teacher, nfe, gen_seed):
        from types import SimpleNamespace

        from crs.peers import ld3_train

        ctx = SimpleNamespace(
            seed=gen_seed, steps=nfe, nfe=nfe, teacher=teacher, hi=HI, lo=LO, sampler="euler", denoiser=D
        )
        levels, info = ld3_train(ctx, 100, {"radius": "auto", "lr": 0.005, "patience": 5, "rounds": (2, 5), "batch": 2})
        return [float(v) for v in levels], info

    def finish(t1):
        out = t1.tolist()
        out[0], out[-1] = HI, LO  # the original's ends are float32 values of 80 and 0.002
        return out + [0.0]

    data = crs.make_dataset("gmm")
    D = data.denoiser
    teacher = solve_teacher(D, (2,), 100, search_seed(0), LO, HI, steps=256)
    held = solve_teacher(D, (2,), 1024, 12345, LO, HI, steps=512)

    def terr(sig):
        return float(crs.teacher_error(D, data, "euler", torch.tensor(sig, dtype=torch.float64), teacher=held).value)

    cache = SearchCache()
    rows, matched, spread = [], [], []
    for nfe in nfes:
        t1, t2, info, ref_seconds = run_original(D, teacher, nfe)
        if not torch.equal(t1, t2):
            raise AssertionError("the decoupled model times should be off (win_rate 0)")
        ref = finish(t1)
        start = time.perf_counter()
        res = search_schedule("ld3", D, data, "euler", nfe, seed=0, n=100, pairs=100, cache=cache)
        port_seconds = time.perf_counter() - start
        port = list(res.sigmas)
        rows.append(
            dict(
                steps=nfe,
                reference=ref,
                port=port,
                max_log_gap=log_gap(ref, port),
                reference_valid_loss=info["best_loss"],
                port_valid_loss=float(res.meta["valid_loss"]),
                reference_teacher_error=terr(ref),
                port_teacher_error=terr(port),
                start_teacher_error=terr(ld3_levels(torch.ones(nfe, dtype=torch.float64), LO, HI).tolist()),
                reference_seconds=ref_seconds,
                port_seconds=port_seconds,
            )
        )
        m1, _, minfo, _ = run_original(D, teacher, nfe, order_seed=search_seed(0))
        mref = finish(m1)
        matched.append(dict(steps=nfe, max_log_gap=log_gap(mref, port), reference_teacher_error=terr(mref)))
        for k in spread_seeds:
            r1, _, _, _ = run_original(D, teacher, nfe, seed=k)
            pp, _ = port_direct(D, teacher, nfe, k)
            spread.append(
                dict(
                    steps=nfe,
                    seed=k,
                    reference_gap=log_gap(finish(r1), ref),
                    port_gap=log_gap(pp, port),
                    reference_teacher_error=terr(finish(r1)),
                    port_teacher_error=terr(pp),
                )
            )
    case = "2-D mixture, exact denoiser, Euler, 100 teacher pairs (50 train, 50 validate), the port's convention"
    return {
        "peer": "ld3",
        "repository": "vinhsuhi/LD3",
        "case": case,
        "rows": rows,
        "matched": matched,
        "spread": spread,
    }


FIDELITY = {"dmn": dmn_fidelity, "ld3": ld3_fidelity, "oss": oss_fidelity}


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
