"""Peer schedule searches, ported: the algorithms, registered in :mod:`crs.search` and called as
``search_schedule(name, ...)`` like the suite's own (docs/concepts/peers.md says where each port differs from its
original and why, and how the ports were checked against the reference code):

* ``dmn``: DM-NonUniform (Xue et al., CVPR 2024; scxue/DM-NonUniform, ``step_optim.py``). Data-free: the interior
  levels in ``lambda = -log sigma`` minimise a bound on the local errors of a multistep exponential integrator,
  each node's data-prediction error taken as ``sigma_vp^2 / alpha_vp`` (the VP process of the same ``lambda``),
  by scipy's ``trust-constr`` under the ordering constraints, from uniform ``lambda``. The reference models the
  3rd-order predictor (DPM-Solver++(3M), UniP-3); here the order follows the sampler: Euler is the first-order
  integrator exactly (DDIM), DPM-Solver++(2M) the second; Heun, which the reference does not model, gets a
  two-point rule on each step's own ends (the port's own choice).
* ``ld3``: LD3 (Tong et al., ICLR 2025; vinhsuhi/LD3, ``trainer.py``): the levels learnt on ``pairs`` teacher pairs
  of the search batch (half to train, half to validate and keep the best), softmax over ``lambda`` gaps from uniform
  ``lambda``, RMSprop, and the relaxed objective: each pair's starting noise may move within a ball around its own
  to lower its loss (radius ``0.001 d / nfe^2`` in units of the unit-normal noise). One schedule for solver and
  network (the original also learns the levels at which the network is evaluated apart from the solver's).
* ``oss``: Optimal Stepsize (Pei et al., 2025; bebebe666/OptimalSteps, ``OSS/OSS.py``): dynamic programming over the
  student's own states on the teacher's grid, one programme per sample and the median path (:func:`oss_path`).
* ``ays-opt``: Align Your Steps' optimiser (Sabour et al., ICML 2024; no code is public): the KLUB of a first-order
  SDE solver by Monte Carlo with the paper's importance density (:func:`klub`), minimised point by point over 11
  candidates per sweep (:func:`ays_sweeps`), stopped by the teacher error.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from crs.args import check_int
from crs.sampling import STEPS, run_steps

__all__ = [
    "DMN_ORDER_OF",
    "check_dmn_order",
    "dmn_coefficients",
    "dmn_lambdas",
    "dmn_objective",
    "ld3_levels",
    "ld3_train",
    "oss_path",
]


# ----------------------------------------------------------------------------- DM-NonUniform
def _h0(h):
    return np.exp(h) - 1  # as the reference writes it (not expm1): the same rounding, the same optimiser path


def _h1(h):
    return np.exp(h) * h - _h0(h)


def _h2(h):
    return np.exp(h) * h * h - 2 * _h1(h)


_DMN_ORDERS = (1, 2, 3, "heun")
DMN_ORDER_OF = {"euler": 1, "dpmpp_2m": 2, "heun": "heun"}  # the integrator each sampler is


def dmn_coefficients(
    lam: np.ndarray, order=3, lower_final: bool = True
) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    """Each step's nodes and integration coefficients in DM-NonUniform's solver model: step ``s`` from ``lam[s]`` to
    ``lam[s + 1]`` integrates ``e^lambda`` times the polynomial through the data predictions at its nodes, exactly
    (``x_{s+1} / sigma_{s+1} = x_s / sigma_s + sum_j J_j D(node_j)``). Step ``s`` of ``N`` has order
    ``min(order, s + 1, N - s)`` (its last nodes ``s - k + 1 .. s``): lower orders at both ends, as the reference
    (DPM-Solver's lower-order final steps); without ``lower_final`` at the start only (``min(order, s + 1)``), as
    the suite's samplers step into sigma_min (only their step from sigma_min to 0 is first order).
    ``order="heun"`` (not in the reference): each step interpolates between its own two ends (the last one is
    first order with ``lower_final``)."""
    lam = np.asarray(lam, dtype=np.float64)
    n_steps = len(lam) - 1
    hv, elv = np.diff(lam), np.exp(lam)
    out = []
    for s in range(n_steps):
        last = lower_final and s == n_steps - 1
        if order == "heun":
            k = 1 if last else "heun"
        else:
            k = min(order, s + 1, n_steps - s) if lower_final else min(order, s + 1)
        if k == 1:
            out.append(((s,), (elv[s + 1] - elv[s],)))
        elif k == "heun":
            h = hv[s]
            out.append(((s, s + 1), (elv[s] * (_h0(h) - _h1(h) / h), elv[s] * _h1(h) / h)))
        elif k == 2:
            h0, h1 = hv[s - 1], hv[s]
            out.append(((s - 1, s), (-elv[s] * _h1(h1) / h0, elv[s] * (_h1(h1) + h0 * _h0(h1)) / h0)))
        else:
            ha, hb, h, e = hv[s - 2], hv[s - 1], hv[s], elv[s]
            j0 = e * (_h2(h) + hb * _h1(h)) / (ha * (ha + hb))
            j1 = -e * (_h2(h) + (ha + hb) * _h1(h)) / (ha * hb)
            j2 = e * (_h2(h) + (2 * hb + ha) * _h1(h) + hb * (ha + hb) * _h0(h)) / (hb * (ha + hb))
            out.append(((s - 2, s - 1, s), (j0, j1, j2)))
    return out


def dmn_objective(lam: np.ndarray, order=3, trunc: int = 3, err_power: float = 2.0, lower_final: bool = True) -> float:
    """DM-NonUniform's objective (``StepOptim.sel_lambdas_lof_obj``) at the levels ``lam`` (increasing ``lambda``,
    both ends included), for the steps of :func:`dmn_coefficients`.

    Each node's error ``w = sigma_vp^err_power / alpha_vp`` (the VP process of the same ``lambda``) enters through
    the step's coefficients: a first-order step as ``|J w|``; a higher-order one among the first ``trunc`` steps as
    the root-sum-square of its terms, after that summed with signs per node (one node's error is the same vector in
    every step that uses it), then ``|.|``.
    """
    lam = np.asarray(lam, dtype=np.float64)
    # the reference's arithmetic, operation for operation (the objective is not smooth: its optimiser's path, and
    # so the schedule it stops at, depends on the last bits)
    alpha, sigma = 1.0 / np.sqrt(1 + np.exp(-2 * lam)), 1.0 / np.sqrt(1 + np.exp(2 * lam))
    w = sigma**err_power / alpha
    res, c = 0.0, np.zeros(len(lam))  # node N only in the Heun rule without lower_final; +0.0 changes no sum
    for s, (nodes, coefs) in enumerate(dmn_coefficients(lam, order, lower_final)):
        terms = [w[n] * j for n, j in zip(nodes, coefs)]
        if len(nodes) == 1:
            res += abs(terms[0])
        elif s >= trunc:
            for n, t in zip(nodes, terms):
                c[n] += t
        else:
            res += np.sqrt(sum(t**2 for t in terms))
    return float(res + sum(abs(c)))  # Python's sum, in node order, as the reference


def dmn_lambdas(
    steps: int,
    lam_hi: float,
    lam_lo: float,
    order=3,
    trunc: int = 3,
    err_power: float = 2.0,
    lower_final: bool = True,
) -> tuple[np.ndarray, dict]:
    """DM-NonUniform's optimised ``lambda`` levels for ``steps`` solver steps (``StepOptim.get_ts_lambdas``, its
    ``unif`` start): ``steps + 1`` values from ``lam_hi`` (the most noise, ``-log sigma_max``) up to ``lam_lo``,
    both fixed, and ``{iterations, objective, start_objective}``."""
    check_int("steps", steps, 1)
    check_dmn_order(order)
    # the reference's start: uniform lambda as torch.linspace makes it, in float32
    start = torch.linspace(lam_hi, lam_lo, steps + 1).numpy().astype(np.float64)
    if steps == 1:
        value = dmn_objective(start, order, trunc, err_power, lower_final)
        return start, {"iterations": 0, "objective": value, "start_objective": value}
    from scipy.optimize import LinearConstraint, minimize

    # lam_hi <= x_0 <= x_1 <= ... <= x_{N-2} <= lam_lo, as the reference writes it
    a = np.zeros((steps, steps - 1))
    a[np.arange(steps - 1), np.arange(steps - 1)] = 1.0
    a[np.arange(1, steps), np.arange(steps - 1)] = -1.0
    lb = np.zeros(steps)
    lb[0], lb[-1] = lam_hi, -lam_lo

    def f(x):
        return dmn_objective(np.concatenate([[lam_hi], x, [lam_lo]]), order, trunc, err_power, lower_final)

    with warnings.catch_warnings():  # trust-constr warns when its finite-difference Hessian update is skipped
        warnings.simplefilter("ignore")
        res = minimize(f, start[1:-1], method="trust-constr", constraints=[LinearConstraint(a, lb, np.inf)])
    lam = np.concatenate([[lam_hi], np.sort(res.x), [lam_lo]])
    return lam, {"iterations": int(res.nit), "objective": f(lam[1:-1]), "start_objective": f(start[1:-1])}


def check_dmn_order(order) -> None:
    """ValueError unless ``order`` is one :func:`dmn_coefficients` models."""
    if order not in _DMN_ORDERS or isinstance(order, bool):
        raise ValueError(f"Unknown DM-NonUniform order {order!r}; valid: 1, 2, 3, 'heun' (or 'auto': the sampler's).")


# ----------------------------------------------------------------------------- LD3
def ld3_levels(logits: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """LD3's schedule of ``logits`` (``len(logits)`` levels, ``trainer.py`` ``model_lambda_fn``): softmax,
    cumulative sum, normalised to [0, 1] and spread over ``lambda = -log sigma`` between the ends; then 0. The first
    logit drops out (its gradient is 0), as in the original."""
    c = torch.cumsum(torch.softmax(logits, 0), 0)
    normed = (c - c.min()) / (c.max() - c.min())
    lam = normed * (math.log(hi) - math.log(lo)) - math.log(hi)
    sig = torch.exp(-lam)
    sig = torch.cat([torch.tensor([hi], dtype=sig.dtype), sig[1:-1], torch.tensor([lo], dtype=sig.dtype)])
    return torch.cat([sig, sig.new_zeros(1)])


def _rows(denoiser, idx: torch.Tensor):
    """A search-batch denoiser (bound to the batch's conditions, or plain) for the rows ``idx`` of the batch."""
    from crs.conditioning import Bound

    return Bound(denoiser.denoiser, denoiser.cond[idx]) if isinstance(denoiser, Bound) else denoiser


class _LD3Counter:
    """Single-sample network evaluations of LD3's training: forward solves and backward passes."""

    def __init__(self, nfe: int) -> None:
        self.nfe, self.forward, self.backward = nfe, 0, 0


def ld3_train(ctx, pairs: int, opts: dict) -> tuple[np.ndarray, dict]:
    """LD3's training loop (``trainer.py`` ``train``, one schedule) on the first ``pairs`` samples of the search
    batch: the first half trains, the second validates; the best validated logits give the levels (``steps`` of
    them, then 0). Returns the levels and what the run did."""
    gen = torch.Generator().manual_seed(ctx.seed)
    n_levels, nfe = ctx.steps, ctx.nfe
    count = _LD3Counter(nfe)
    z_all = (ctx.teacher.x_T[:pairs] / ctx.hi).double()
    target = ctx.teacher.endpoint[:pairs].double()
    half = pairs // 2
    d = z_all[0].numel()
    bound = 0.001 * d / nfe**2 if opts["radius"] == "auto" else float(opts["radius"])
    shift_lr = 12.0 / nfe
    lr2, lr2_floor = 0.1 / nfe, 1e-6  # the original's second (network-level) optimiser: only its stop rule is kept
    split = {
        "train": [torch.arange(half), z_all[:half].clone(), z_all[:half]],
        "valid": [torch.arange(half, pairs), z_all[half:].clone(), z_all[half:]],
    }
    logits = torch.ones(n_levels, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.RMSprop([logits], lr=opts["lr"], momentum=0.9)
    step = STEPS[ctx.sampler]

    def loss_of(rows, z, params):  # per-sample mean squared error against the teacher (LD3's "L2")
        sig = ld3_levels(params, ctx.lo, ctx.hi)
        x = run_steps(step, _rows(ctx.denoiser, rows), (z * ctx.hi).to(ctx.teacher.x_T.dtype), sig)
        count.forward += len(rows) * nfe
        return (x.double() - target[rows]).pow(2).flatten(1).mean(1)

    st = {"best": math.inf, "best_logits": logits.detach().clone(), "worse": 0, "it": 0, "hits": 0, "first": True}

    def validation() -> float:
        rows, z, _ = split["valid"]
        with torch.no_grad():
            return float(loss_of(rows, z, logits).mean())

    def examine(in_v1: bool) -> None:  # trainer.py _examine_checkpoint
        nonlocal lr2
        v = validation()
        if v < st["best"]:
            st.update(best=v, worse=0, best_logits=logits.detach().clone())
        else:
            st["worse"] += 1
        if st["worse"] >= opts["patience"]:
            with torch.no_grad():
                logits.copy_(st["best_logits"])
            st["worse"] = 0
            if st["first"]:  # the original's first hit only widens validation to the whole set (here it always is)
                st["first"] = False
                st["best"] = validation()
                return
            for g in opt.param_groups:
                g["lr"] = max(0.8 * g["lr"], 5e-5)
            if not in_v1:
                lr2 = max(0.8 * lr2, lr2_floor)
                st["hits"] += lr2 <= lr2_floor

    rounds = opts["rounds"]
    stop = False
    for rnd in range(rounds[0] + rounds[1]):
        in_v1 = rnd < rounds[0]
        if rnd > 0:
            with torch.no_grad():
                logits.copy_(st["best_logits"])
            st["worse"] = 0
        examine(in_v1)
        moved = False
        for name in ("train", "valid"):
            if name == "valid" and bound == 0.0:
                continue
            rows_all, z_cur, z_ori = split[name]
            m = len(rows_all)
            order = torch.randperm(m, generator=gen) if name == "train" else torch.arange(m)
            new_z = z_cur.clone()
            for a in range(0, m, opts["batch"]):
                idx = order[a : a + opts["batch"]]
                z = z_cur[idx].clone().requires_grad_(True)
                logits.requires_grad_(name == "train")
                vec = loss_of(rows_all[idx], z, logits)
                ref = vec.detach()
                vec.mean().backward()
                count.backward += len(idx) * nfe
                with torch.no_grad():
                    z_step = z - shift_lr * z.grad
                if name == "train":
                    torch.nn.utils.clip_grad_norm_([logits], 1.0)
                    opt.step()
                    opt.zero_grad()
                    st["it"] += 1
                    examine(in_v1)
                    if st["hits"] >= 5:
                        stop = True
                        break
                if bound == 0.0:
                    continue
                with torch.no_grad():  # the ball: project, keep a move only where it lowered that pair's loss
                    diff = z_step - z_ori[idx]
                    norm = diff.flatten(1).norm(dim=1).clamp_min(1e-300)
                    scale = torch.where(norm > bound, bound / norm, torch.ones_like(norm))
                    z_proj = z_ori[idx] + diff * scale.view(-1, *([1] * (diff.dim() - 1)))
                    better = loss_of(rows_all[idx], z_proj, logits) < ref
                    new_z[idx[better]] = z_proj[better]
                    moved |= name == "valid" and bool(better.any())
            if bound > 0.0:
                split[name][1] = new_z
            if stop:
                break
        if stop:
            break
        if not moved and bound > 0.0:
            shift_lr *= 0.5
    levels = ld3_levels(st["best_logits"], ctx.lo, ctx.hi).numpy()
    info = {
        "iterations": st["it"],
        "valid_loss": st["best"],
        "radius": bound,
        "forward_sample_evaluations": count.forward,
        "backward_sample_evaluations": count.backward,
    }
    return levels, info


# ----------------------------------------------------------------------------- Align Your Steps (the optimiser)
AYS_C = 0.5  # the paper's importance-sampling constant c


class _Region:
    """The importance density ``pi(t) ~ t^-3 (1 / (t^2 + c^2) - 1 / (t_up^2 + c^2))`` on ``[lo, hi]`` (AYS
    Algorithm 2, the KLUB's integrand for Gaussian data of scale ``c``), tabulated in ``log t``: its mass (the
    normaliser, which depends on the candidate and must be kept) and inverse CDF."""

    def __init__(self, lo: float, hi: float, t_up: float, grid: int = 2049) -> None:
        u = np.linspace(math.log(lo), math.log(hi), grid)
        t = np.exp(u)
        dens = t**-2 * np.maximum(_shape(t, t_up), 0.0)  # t^-3 g(t) dt = t^-2 g(t) du
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(u))])
        self.mass, self.u, self.cdf, self.t_up = float(cdf[-1]), u, cdf / max(cdf[-1], 1e-300), t_up

    def sample(self, q: np.ndarray) -> np.ndarray:
        return np.exp(np.interp(q, self.cdf, self.u))


def _shape(t, t_up):
    return 1.0 / (t * t + AYS_C**2) - 1.0 / (t_up * t_up + AYS_C**2)


def klub(
    model, x0: torch.Tensor, noise: tuple, bounds: list[tuple[float, float]], cond=None, batch_size: int = 1024
) -> float:
    """The KLUB of first-order steps over consecutive intervals ``bounds`` (``[(lo, hi)]`` ascending), estimated
    from data ``x0`` with importance sampling in ``t``: ``sum_k int_{lo_k}^{hi_k} t^-3 E|D(x_t, t) - D(x_hi, hi)|^2
    dt`` (AYS Eq. 10 with sigma(t) = t, constant factor dropped), ``x_t = x0 + t eps``, ``x_hi = x_t +
    sqrt(hi^2 - t^2) eps'`` (each step holds the denoiser of its noisier end, as Stochastic-DDIM does).

    ``noise = (eps, eps', q_region, q_t)``: the random numbers, shared by every candidate of a point (common random
    numbers: the Monte Carlo noise does not pick the winner). Two network evaluations per sample, ``batch_size`` at a
    time; a conditional ``model`` gets each sample's ``cond``."""
    from crs.conditioning import bind

    eps1, eps2, q_region, q_t = noise
    regions = [_Region(lo, hi, hi) for lo, hi in bounds]
    masses = np.array([r.mass for r in regions])
    edges = np.concatenate([[0.0], np.cumsum(masses / masses.sum())])
    which = np.clip(np.searchsorted(edges, q_region, side="right") - 1, 0, len(regions) - 1)
    t, t_up = np.empty_like(q_t), np.empty_like(q_t)
    for k, r in enumerate(regions):
        m = which == k
        t[m], t_up[m] = r.sample(q_t[m]), r.t_up
    tt = torch.as_tensor(t, dtype=x0.dtype)
    tu = torch.as_tensor(t_up, dtype=x0.dtype)
    view = (-1,) + (1,) * (x0.dim() - 1)
    x_t = x0 + tt.view(view) * eps1
    x_up = x_t + torch.sqrt((tu * tu - tt * tt).clamp_min(0)).view(view) * eps2
    d2 = []
    with torch.no_grad():
        for a in range(0, len(x0), batch_size):
            rows = slice(a, a + batch_size)
            den = bind(model, cond, rows)
            d2.append((den(x_t[rows], tt[rows]) - den(x_up[rows], tu[rows])).double().pow(2).flatten(1).sum(1))
    d2 = torch.cat(d2)
    w = torch.as_tensor(_shape(t, t_up), dtype=torch.float64).clamp_min(1e-300)
    return float(masses.sum() * (d2 / w).mean())


def ays_sweeps(model, draw, levels: np.ndarray, opts: dict, seed: int, on_sweep) -> int:
    """AYS's optimiser (Algorithm 1) on the interior of ``levels`` (ascending, ends fixed), in place: each sweep
    visits every interior point and keeps, of ``candidates`` log-spaced values around it (itself among them), the
    one of least ``KLUB(prev, cand) + KLUB(cand, next)``, on fresh data and random numbers shared by the candidates.
    A point whose own value wins gets a finer grid; one that moves to the grid's edge a wider one (the paper does
    not give the grid). ``draw(m, generator) -> (x0, cond)``: ``m`` data samples and their conditions (None for an
    unconditional ``model``).
    ``on_sweep(sweep, levels) -> bool`` after each sweep: True stops. Returns the single-sample evaluations."""
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    k = opts["candidates"] // 2
    step = {i: 0.25 for i in range(1, len(levels) - 1)}
    spent = 0
    for sweep in range(opts["sweeps"]):
        changed = False
        for i in step:
            if step[i] < 1e-3:
                continue
            a, b, c = levels[i - 1], levels[i], levels[i + 1]
            la, lb, lc = math.log(a), math.log(b), math.log(c)
            h = step[i] * min(lb - la, lc - lb) / k
            grid = lb + h * np.arange(-k, k + 1)
            x0, cond = draw(opts["mc_samples"], gen)
            noise = (
                torch.randn(x0.shape, generator=gen, dtype=x0.dtype),
                torch.randn(x0.shape, generator=gen, dtype=x0.dtype),
                rng.random(len(x0)),
                rng.random(len(x0)),
            )
            bounds = [[(a, math.exp(u)), (math.exp(u), c)] for u in grid]
            values = [klub(model, x0, noise, b, cond, opts["batch_size"]) for b in bounds]
            spent += 2 * len(x0) * len(grid)
            best = int(np.argmin(values))
            if best != k and values[best] < values[k]:
                levels[i], changed = math.exp(grid[best]), True
                if abs(best - k) == k:  # the edge of the grid: widen it
                    step[i] = min(0.9, step[i] * 1.5)  # below 1: a candidate never reaches a neighbour
            else:
                step[i] *= 0.5
        if on_sweep(sweep, levels) or not changed and all(s < 1e-3 for s in step.values()):
            break
    return spent


# ----------------------------------------------------------------------------- Optimal Stepsize (OSS)
def _jumps(sampler, denoiser, x, d_i, s_i: float, targets: torch.Tensor, hist, shape, batch_size):
    """The sampler's one step from ``x`` (n, F) at ``s_i`` (``d_i = D(x, s_i)``) to every level of ``targets``
    (J,), ascending from 0: (J, n, F) float64 and the evaluations per sample it spent (Heun's correctors).
    ``hist = (s_prev (n,), D_prev (n, F), has (n,))``: DPM-Solver++(2M)'s previous step per sample."""
    from crs.search import denoise_rows

    r = (targets / s_i)[:, None, None]
    if sampler == "euler" or sampler == "heun":
        out = r * x[None] + (1 - r) * d_i[None]  # x + (s_j - s_i) (x - D) / s_i
        spent = 0
        if sampler == "heun" and len(targets) > 1:
            pos = targets > 0
            pred = out[pos]
            d_next = denoise_rows(denoiser, pred, targets[pos], shape, batch_size)
            slope, slope_next = (x - d_i) / s_i, (pred - d_next) / targets[pos][:, None, None]
            out[pos] = x[None] + (targets[pos] - s_i)[:, None, None] * 0.5 * (slope[None] + slope_next)
            spent = int(pos.sum())
        return out, spent
    h = torch.log(s_i / targets.clamp_min(1e-300))[:, None, None]  # (J, 1, 1); target 0 handled below
    s_prev, d_prev, has = hist
    rr = torch.log(s_prev / s_i)[None, :, None] / h  # (J, n, 1)
    mix = torch.where(has[None, :, None], (1 + 1 / (2 * rr)) * d_i[None] - (1 / (2 * rr)) * d_prev[None], d_i[None])
    out = r * x[None] - torch.expm1(-h) * mix
    out[targets == 0] = d_i  # the final step lands on the prediction
    return out, 0


def oss_path(
    denoiser,
    sampler: str,
    levels: np.ndarray,
    traj: torch.Tensor,
    k: int,
    *,
    per_sample: bool = True,
    at_most: bool = True,
    start: str = "top",
    batch_size: int = 4096,
) -> tuple[list[int], int]:
    """Optimal Stepsize's dynamic programme (``OSS.py`` ``search_OSS``) on a grid: ``levels`` ascending with
    ``levels[0] = 0`` and ``levels[-1]`` the start, ``traj`` (G + 1, n, ...) the teacher's states on them
    (``traj[0]`` its endpoint). Layer ``m`` moves the student's own states (not the teacher's: unlike GITS) one step
    of ``sampler`` from every node reached to every lower node, and keeps at each node the state of least error
    against the teacher there; with ``at_most`` a node keeps its best of earlier layers too (the original's "at
    most ``m + 1`` steps"). ``per_sample``: a programme per sample and the median index per position
    (``cal_medium``), as the original; else one programme on the batch's mean error. ``start="top"``: the first step
    starts at the top; ``"noise"``: from any node, its state the starting noise unchanged in flow-matching
    coordinates (``x = (1 + s_i) / (1 + s_top) x_top``), as the original (a schedule then starts below the top).

    Returns the path (``k`` + 1 indices ascending, ``0`` first, then ``i_1 .. i_k``; repeats possible with
    ``at_most``) and the evaluations per sample."""
    from crs.search import denoise_rows

    g = len(levels) - 1
    shape = traj.shape[2:]
    lv = torch.from_numpy(np.asarray(levels, dtype=np.float64))
    flat = traj.flatten(2).double()
    n = flat.shape[1]
    if start == "noise":  # the original copies one flow-matching noise tensor to every node
        z = ((1 + lv) / (1 + lv[g]))[:, None, None] * flat[g][None]
    else:  # every node's student state (only reached nodes are read)
        z = flat[g][None].repeat(g + 1, 1, 1)
    width = n if per_sample else 1
    dp = torch.full((g + 1, width), math.inf, dtype=torch.float64)
    hist_s = torch.ones(g + 1, n, dtype=torch.float64)
    hist_d, hist_has = torch.zeros_like(z), torch.zeros(g + 1, n, dtype=torch.bool)
    reached = torch.zeros(g + 1, dtype=torch.bool)
    reached[g if start == "top" else slice(1, None)] = True
    traces, spent = [], 0
    for _ in range(k):
        if not at_most:
            dp.fill_(math.inf)
        trace = traces[-1].clone() if (traces and at_most) else torch.full((g + 1, width), g, dtype=torch.long)
        nodes = [i for i in range(g, 0, -1) if reached[i]]
        d_all = denoise_rows(denoiser, z[nodes], lv[nodes], shape, batch_size).flatten(2)
        spent += len(nodes)
        z_next, s_next, d_next, has_next = z.clone(), hist_s.clone(), hist_d.clone(), hist_has.clone()
        new_reach = reached.clone() if at_most else torch.zeros_like(reached)
        for row, i in enumerate(nodes):  # descending, strict "<": ties keep the larger i, as the original
            hist = (hist_s[i], hist_d[i], hist_has[i])
            xj, extra = _jumps(sampler, denoiser, z[i], d_all[row], float(lv[i]), lv[:i], hist, shape, batch_size)
            spent += extra
            cost = (xj - flat[:i]).pow(2).mean(2)  # (i, n): the squared error per sample at each lower node
            if not per_sample:
                cost = cost.mean(1, keepdim=True)
            better = cost < dp[:i]
            dp[:i] = torch.where(better, cost, dp[:i])
            trace[:i] = torch.where(better, torch.full_like(trace[:i], i), trace[:i])
            take = better.expand(i, n)
            z_next[:i][take] = xj[take]
            s_next[:i][take] = float(lv[i])
            d_next[:i][take] = d_all[row][None].expand(i, n, -1)[take]
            has_next[:i][take] = True
            new_reach[:i] |= better.any(1)
        z, hist_s, hist_d, hist_has, reached = z_next, s_next, d_next, has_next, new_reach
        traces.append(trace)
    paths = []
    for b in range(width):
        path = [0]
        for trace in reversed(traces):
            path.append(int(trace[path[-1], b]))
        paths.append(path[1:])
    if per_sample:  # cal_medium: per position, the mean of the two middle values, rounded down
        cols = [sorted(p[m] for p in paths) for m in range(k)]
        path = [(c[len(c) // 2] + c[len(c) // 2 - 1]) // 2 if len(c) > 1 else c[0] for c in cols]
    else:
        path = paths[0]
    return [0, *path], spent
