"""Schedule search for a given model, sampler and budget: one entry point, :func:`search_schedule`
(docs/method.md section 8).

Methods (each returns ``n`` levels descending, then 0, for the ``n`` steps the sampler spends ``nfe`` on):

* ``crs``: the paper's method as it is: a rate estimate under a measure, the constant-rate schedule at ``xi``.
* ``crs-select``: CRS with its measure and ``xi`` chosen by the teacher error on the search batch, over a
  declared candidate set (``measures`` x ``xis``).
* ``gits``: Chen et al., ICML 2024 ("On the Trajectory Regularity of ODE-based Diffusion Sampling"): teacher
  trajectories on a fine grid, the error of each one-step jump of the sampler between grid points against the
  teacher, and dynamic programming for the path of ``n - 1`` jumps with the least summed error. For
  DPM-Solver++(2M), whose step depends on the previous level, the jump cost depends on that level too and the
  dynamic programme runs over pairs of levels.
* ``optimal``: direct minimisation of the teacher error over the interior levels (ends fixed) on the search
  batch, by L-BFGS with gradients through the sampler (in the spirit of LD3, Tong et al. 2025, without its
  relaxation), started from every baseline (the objective has several local minima); ``optimal-free`` frees
  sigma_min too. Never worse than any of its starting schedules on the search batch.

Every method judges and searches on the *search batch*, the starting noise of seeds
:func:`crs.seeds.search_seed`, disjoint from the seeds on which results are reported. Costs are counted as
network evaluations per search sample (as nfe counts them; one evaluation of the whole batch is one), beyond a
rate estimate, whose own cost is reported apart (``rate_evaluations``, single-sample evaluations).
"""

from __future__ import annotations

import itertools
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from crs.args import check_choice, check_int
from crs.io import atomic_write_json, read_json
from crs.quality import Teacher, check_deterministic_sampler, solve_teacher
from crs.sampling import STEPS, check_sigmas, nfe_of, run_steps, steps_for_nfe
from crs.schedules import BASELINES, baseline_sigmas, check_sigma_range
from crs.seeds import search_seed

__all__ = [
    "METHODS",
    "SearchResult",
    "check_options",
    "dp_path",
    "dp_path_history",
    "gits_costs",
    "search_schedule",
    "stored_options",
    "teacher_rms",
]

METHODS = ("crs", "crs-select", "gits", "optimal", "optimal-free")

_OPTIONS = {  # every method's options and their defaults; anything else is refused by name
    "crs": {"measure": "data", "xi": 1.0, "grid_size": 64, "n_samples": 1024, "feature_fn": None},
    "crs-select": {
        "measures": ("data", "noise", "solver", "noise+exponential", "solver+exponential"),
        "xis": (0.5, 0.75, 1.0, 1.5, 2.0),
        "grid_size": 64,
        "n_samples": 1024,
        "feature_fn": None,
    },
    "gits": {"grid": 100, "substeps": 4},
    "optimal": {"init": "all", "maxiter": 200, "maxfev": 2000, "optimizer": "lbfgs"},
    "optimal-free": {"init": "all", "maxiter": 200, "maxfev": 2000, "optimizer": "lbfgs"},
}
_COMMON = {"n": 256, "teacher_steps": 256, "batch_size": 1024}


@dataclass
class SearchResult:
    """A searched schedule with what it cost.

    Attributes:
        sigma_min, sigma_max: the range searched in (``optimal-free`` may end above or below sigma_min).
        sigmas: ``n`` levels descending, then 0.
        objective: the teacher error on the search batch (RMS), of the returned schedule.
        evaluations: network evaluations per search sample beyond a rate estimate (teacher solve included).
        batch: the search batch's size.
        rate_evaluations: single-sample evaluations of the rate estimate(s) (CRS methods), else 0.
        seconds: wall-clock time of the search.
    """

    method: str
    sampler: str
    nfe: int
    sigma_min: float
    sigma_max: float
    sigmas: list[float]
    objective: float
    evaluations: int
    batch: int
    rate_evaluations: int
    seconds: float
    seed: int
    options: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def save(self, path) -> Path:
        """Write as JSON, atomically."""
        return atomic_write_json(Path(path), asdict(self))

    @classmethod
    def load(cls, path) -> SearchResult:
        d = read_json(Path(path))
        missing = {f for f in cls.__dataclass_fields__ if f not in ("options", "meta")} - set(d)
        if missing:
            raise ValueError(f"{str(path)!r} is not a saved schedule search (missing {sorted(missing)}).")
        check_sigmas(d["sigmas"])
        return cls(**d)

    @property
    def sigmas_tensor(self) -> torch.Tensor:
        return torch.tensor(self.sigmas, dtype=torch.float64)


# ----------------------------------------------------------------------------- dynamic programming
def _check_jumps(jumps: int, g: int) -> None:
    check_int("jumps", jumps, 1)
    if jumps > g:
        raise ValueError(f"{jumps} jumps need a grid of at least {jumps} intervals, got {g}.")


def dp_path(cost: np.ndarray, jumps: int) -> tuple[float, list[int]]:
    """The path ``0 = p_0 < p_1 < ... < p_jumps = G`` through nodes ``0..G`` with the least summed
    ``cost[p_m, p_{m+1}]``. ``cost`` is (G + 1, G + 1); only entries with ``i < j`` are read."""
    cost = np.asarray(cost, dtype=np.float64)
    g = cost.shape[0] - 1
    _check_jumps(jumps, g)
    best = np.full((jumps + 1, g + 1), np.inf)
    back = np.zeros((jumps + 1, g + 1), dtype=int)
    best[0, 0] = 0.0
    upper = np.triu(np.ones((g + 1, g + 1), dtype=bool), 1)
    masked = np.where(upper, cost, np.inf)
    for m in range(1, jumps + 1):
        total = best[m - 1][:, None] + masked  # (from i, to j)
        back[m] = np.argmin(total, axis=0)
        best[m] = total[back[m], np.arange(g + 1)]
    path = [g]
    for m in range(jumps, 0, -1):
        path.append(int(back[m, path[-1]]))
    return float(best[jumps, g]), path[::-1]


def dp_path_history(first: np.ndarray, cost: np.ndarray, jumps: int) -> tuple[float, list[int]]:
    """As :func:`dp_path` for jumps whose cost depends on the previous node too: ``first[j]`` is the cost of the
    first jump ``0 -> j``, ``cost[k, i, j]`` that of ``i -> j`` after arriving at ``i`` from ``k``."""
    first, cost = np.asarray(first, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    g = len(first) - 1
    _check_jumps(jumps, g)
    idx = np.arange(g + 1)
    valid = (idx[:, None, None] < idx[None, :, None]) & (idx[None, :, None] < idx[None, None, :])
    masked = np.where(valid, cost, np.inf)
    # best[k, i]: least cost of a path from 0 whose last jump is k -> i
    best = np.full((g + 1, g + 1), np.inf)
    best[0, 1:] = first[1:]
    backs = []
    for _ in range(jumps - 1):
        total = best[:, :, None] + masked  # (k, i, j)
        arg = np.argmin(total, axis=0)  # best k for each (i, j)
        best = np.take_along_axis(total, arg[None], axis=0)[0]
        backs.append(arg)
    i = int(np.argmin(best[:, g]))
    path = [g, i]
    value = float(best[i, g])
    for arg in reversed(backs):
        k = int(arg[path[-1], path[-2]])
        path.append(k)
    path = path[::-1]
    if path[0] != 0:
        raise AssertionError("dynamic programme lost its start")  # pragma: no cover
    return value, path


# ----------------------------------------------------------------------------- helpers
def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).mean().sqrt()


def teacher_rms(denoiser, sampler: str, teacher: Teacher, sigmas) -> float:
    """The search objective: RMS distance of the sampler's endpoints from the teacher's (its batch, no gradient)."""
    with torch.no_grad():
        x = run_steps(STEPS[sampler], denoiser, teacher.x_T, check_sigmas(sigmas))
    return float(_rms(x.double(), teacher.endpoint.double()))


def _levels(sigmas: np.ndarray) -> np.ndarray:
    out = np.concatenate([np.asarray(sigmas, dtype=np.float64), [0.0]])
    check_sigmas(out)
    return out


def gits_costs(
    denoiser, sampler: str, teacher: Teacher, substeps: int, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray, int]:
    """GITS's jump costs on the grid ``teacher.sigma[::substeps]`` from the teacher's trajectories.

    Returns:
        ``(cost, first, evaluations)``: for ``euler``/``heun`` ``cost`` is (G + 1, G + 1) and ``first`` is
        ``cost[0]``; for ``dpmpp_2m`` ``cost`` is (G + 1, G + 1, G + 1) indexed ``[k, i, j]`` and ``first`` the
        history-free first jump ``0 -> j``. Entries that are not jumps forward are inf. ``evaluations`` per
        search sample, beyond the teacher.
    """
    states = teacher.states[::substeps].double()  # (G + 1, n, *shape)
    sig = teacher.sigma[::substeps]
    g = len(sig) - 1
    with torch.no_grad():
        den = torch.stack(
            [
                denoiser(states[i], torch.full((states.shape[1],), float(sig[i]), dtype=torch.float64))
                for i in range(g + 1)
            ]
        )
    den = den.double()
    evaluations = g + 1
    flat = states.flatten(2)  # (G + 1, n, F)
    dflat = den.flatten(2)
    sig_t = torch.from_numpy(np.asarray(sig, dtype=np.float64))

    def rms_to(pred: torch.Tensor, j: torch.Tensor) -> torch.Tensor:  # pred (J, n, F) vs states[j]
        return (pred - flat[j]).pow(2).mean(dim=(1, 2)).sqrt()

    if sampler in ("euler", "heun"):
        cost = np.full((g + 1, g + 1), np.inf)
        for i in range(g):
            j = torch.arange(i + 1, g + 1)
            dt = (sig_t[j] - sig_t[i])[:, None, None]
            slope = (flat[i] - dflat[i]) / sig_t[i]
            pred = flat[i][None] + dt * slope[None]
            if sampler == "heun":  # the corrector: one evaluation per jump, all jumps from i in one pass
                n, shape = states.shape[1], states.shape[2:]
                rows = pred.reshape(len(j) * n, *shape)
                levels = sig_t[j].repeat_interleave(n)
                with torch.no_grad():
                    d_next = torch.cat(
                        [
                            denoiser(rows[a : a + batch_size], levels[a : a + batch_size]).double()
                            for a in range(0, len(rows), batch_size)
                        ]
                    ).reshape(len(j), n, -1)
                slope_next = (pred - d_next) / sig_t[j][:, None, None]
                pred = flat[i][None] + dt * 0.5 * (slope[None] + slope_next)
                evaluations += len(j)
            cost[i, i + 1 :] = rms_to(pred, j).numpy()
        return cost, cost[0].copy(), evaluations
    # dpmpp_2m: x_j = (s_j / s_i) x_i - expm1(-h) D', h = log(s_i / s_j), D' from D_i and the history D_k
    cost = np.full((g + 1, g + 1, g + 1), np.inf)
    j = torch.arange(1, g + 1)
    h = torch.log(sig_t[0] / sig_t[j])[:, None, None]
    pred = (sig_t[j] / sig_t[0])[:, None, None] * flat[0][None] - torch.expm1(-h) * dflat[0][None]
    first = np.full(g + 1, np.inf)
    first[1:] = rms_to(pred, j).numpy()
    for i in range(1, g):
        j = torch.arange(i + 1, g + 1)
        h = torch.log(sig_t[i] / sig_t[j])  # (J,)
        for k in range(i):
            r = torch.log(sig_t[k] / sig_t[i]) / h  # (J,)
            a = (1 + 1 / (2 * r))[:, None, None]
            b = (1 / (2 * r))[:, None, None]
            d_mix = a * dflat[i][None] - b * dflat[k][None]
            pred = (sig_t[j] / sig_t[i])[:, None, None] * flat[i][None] - torch.expm1(-h)[:, None, None] * d_mix
            cost[k, i, i + 1 :] = rms_to(pred, j).numpy()
    return cost, first, evaluations


def _optimise(denoiser, sampler, teacher, init: np.ndarray, lo: float, hi: float, free: bool, floor: float, opts):
    """L-BFGS (or Powell) on the gap logits of the interior levels; returns (best sigmas, evaluations, info)."""
    from scipy.optimize import minimize

    steps = len(init)
    u0 = math.log(hi)
    gaps = -np.diff(np.log(init))
    z0 = np.log(gaps / gaps.sum())
    if free:
        span = u0 - math.log(floor)
        frac = (u0 - math.log(init[-1])) / span
        frac = min(max(frac, 1e-6), 1 - 1e-6)
        z0 = np.concatenate([z0, [math.log(frac / (1 - frac))]])
    nfe = nfe_of(sampler, steps)
    counts = {"forward": 0, "backward": 0}
    best = {"f": math.inf, "sigmas": None}

    def sigmas_of(z: torch.Tensor) -> torch.Tensor:
        if free:
            u_end = u0 - (u0 - math.log(floor)) * torch.sigmoid(z[-1])
            z = z[:-1]
        else:
            u_end = torch.tensor(math.log(lo), dtype=torch.float64)
        g = torch.softmax(z, 0) * (u0 - u_end)
        u = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(g, 0)])
        levels = torch.exp(u0 - u)  # the ends exactly: sigma_max, and sigma_min (or the free end)
        levels = torch.cat([torch.tensor([hi], dtype=torch.float64), levels[1:-1], torch.exp(u_end).reshape(1)])
        return torch.cat([levels, torch.zeros(1, dtype=torch.float64)])

    def f(z_np: np.ndarray, grad: bool):
        z = torch.tensor(z_np, dtype=torch.float64, requires_grad=grad)
        sig = sigmas_of(z)
        levels = sig.detach()[:-1]
        if not torch.all(levels[1:] < levels[:-1] * (1 - 1e-9)):  # a gap underflowed: not a schedule
            return (1e30, np.zeros_like(z_np)) if grad else 1e30
        with torch.set_grad_enabled(grad):
            x = run_steps(STEPS[sampler], denoiser, teacher.x_T, sig)
            value = _rms(x.double(), teacher.endpoint.double())
        counts["forward"] += nfe
        v = float(value.detach())
        if not math.isfinite(v):
            return (1e30, np.zeros_like(z_np)) if grad else 1e30
        if v < best["f"]:
            best.update(f=v, sigmas=sig.detach().numpy()[:-1].copy())
        if not grad:
            return v
        (g,) = torch.autograd.grad(value, z)
        counts["backward"] += nfe
        return v, g.numpy()

    f(z0, False)  # the starting point is a candidate: the result is never worse than it
    if opts["optimizer"] == "lbfgs":
        res = minimize(lambda z: f(z, True), z0, jac=True, method="L-BFGS-B", options={"maxiter": opts["maxiter"]})
    else:
        res = minimize(
            lambda z: f(z, False),
            z0,
            method="Powell",
            options={"maxiter": opts["maxiter"], "maxfev": opts["maxfev"], "xtol": 1e-4, "ftol": 1e-8},
        )
    info = {"iterations": int(res.nit), "converged": bool(res.success), "backward_evaluations": counts["backward"]}
    return best["sigmas"], counts["forward"], info


# ----------------------------------------------------------------------------- the entry point
def check_options(method: str, options: dict) -> dict:
    """A method's options merged with the defaults; ValueError naming an unknown method or option, or a bad count."""
    check_choice("method", method, METHODS, what="schedule search method")
    if not isinstance(options, dict):
        raise ValueError(f"The options of the search method {method!r} must be a mapping, got {options!r}.")
    unknown = sorted(set(options) - set(_OPTIONS[method]) - set(_COMMON))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for the search method {method!r}; valid: "
            f"{sorted(set(_OPTIONS[method]) | set(_COMMON))}."
        )
    opts = {**_COMMON, **_OPTIONS[method], **options}
    for name in ("n", "teacher_steps", "batch_size", "grid", "substeps", "maxiter", "maxfev", "grid_size", "n_samples"):
        if name in opts:
            check_int(name, opts[name], 1)
    if opts["teacher_steps"] % 2:
        raise ValueError(
            f"`teacher_steps` must be even (the teacher's error estimate halves it), got {opts['teacher_steps']}."
        )
    return opts


def search_schedule(
    method: str,
    denoiser,
    data,
    sampler: str,
    nfe: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    seed: int = 0,
    progress: bool = False,
    cache: dict | None = None,
    **options,
) -> SearchResult:
    """Search a sampling schedule for ``denoiser`` on ``data``, the deterministic ``sampler`` and budget ``nfe``.

    Args:
        method: one of :data:`METHODS` (see the module docstring).
        sigma_min, sigma_max: the range; None takes the model's own end (EDM's 0.002 / 80 without one).
        seed: the run's seed; the search batch uses :func:`crs.seeds.search_seed` of it.
        cache: a dict in which searches keep what later calls for the same denoiser and data reuse: the CRS
            methods' rate estimates (they depend on the measure, range and rate options, not on nfe) and the
            teacher solve of the search batch, GITS's jump costs. The cost of a reused part is counted once, in
            the call that made it (a reused teacher's in ``meta["teacher_evaluations"]``, with
            ``meta["teacher_reused"]``; GITS's jump costs in ``meta["jump_evaluations"]``, with
            ``meta["jumps_reused"]``).
        options: ``n`` (search batch, 256), ``teacher_steps`` (256), ``batch_size``; and per method:
            ``crs``: ``measure`` ("data"; "solver" means the sampler's own solver measure), ``xi`` (1),
            ``grid_size``, ``n_samples``, ``feature_fn``; ``crs-select``: ``measures``, ``xis`` (the candidate
            set), ``grid_size``, ``n_samples``, ``feature_fn``; ``gits``: ``grid`` (100 intervals), ``substeps``
            (4 teacher steps per interval); ``optimal``/``optimal-free``: ``init`` ("all": started from every
            baseline, the best result kept, since the objective has several local minima; "best": from the best
            baseline on the search batch only; a baseline name; or sigmas), ``maxiter`` (200 per start),
            ``maxfev`` (Powell's objective evaluations per start, 2000), ``optimizer`` ("lbfgs", or "powell",
            derivative-free: the independent check).

    Raises:
        ValueError: unknown method or option, a stochastic sampler, an nfe the sampler cannot spend, a bad range;
            before any work.
    """
    from crs.models import fit_sigma_range

    check_choice("method", method, METHODS, what="schedule search method")
    check_deterministic_sampler(sampler)
    steps = steps_for_nfe(sampler, nfe)
    opts = check_options(method, options)
    lo, hi = fit_sigma_range(denoiser, sigma_min, sigma_max)
    check_sigma_range(lo, hi)
    start = time.perf_counter()
    search = search_seed(seed)
    shape = tuple(data.shape)
    keep = method == "gits"
    teacher_steps = opts["teacher_steps"]
    if keep:
        check_int("grid", opts["grid"], steps - 1)
        check_int("substeps", opts["substeps"], 1)
        teacher_steps = opts["grid"] * opts["substeps"]
        teacher_steps += teacher_steps % 2
    cache = {} if cache is None else cache
    key = ("teacher", shape, opts["n"], search, lo, hi, teacher_steps, keep)
    reused = key in cache
    if not reused:
        cache[key] = solve_teacher(
            denoiser, shape, opts["n"], search, lo, hi, teacher_steps, keep_states=keep, batch_size=opts["batch_size"]
        )
    teacher = cache[key]
    evaluations = 0 if reused else teacher.evaluations
    rate_evaluations = 0
    meta = {"teacher_error": teacher.error, "teacher_evaluations": teacher.evaluations, "teacher_reused": reused}

    if method in ("crs", "crs-select"):
        from crs.measures import combine_velocities, format_measure, parse_measure
        from crs.optimize import optimize_schedule
        from crs.rate import RateEstimate, estimate_rate

        measures = [opts["measure"]] if method == "crs" else list(opts["measures"])
        xis = [opts["xi"]] if method == "crs" else list(opts["xis"])
        specs = [parse_measure(re.sub(r"\bsolver\b(?!-)", f"solver-{sampler}", m)) for m in measures]
        local = {}  # every base measure is estimated once (or taken from `cache`), then combined
        for base in dict.fromkeys(name for spec in specs for name in spec):
            key = (base, lo, hi, opts["grid_size"], opts["n_samples"], search)
            if key in cache:
                local[base] = cache[key]
                continue
            local[base] = cache[key] = estimate_rate(
                base,
                data if base not in BASELINES else None,
                denoiser=denoiser,
                sigma_min=lo,
                sigma_max=hi,
                grid_size=opts["grid_size"],
                n_samples=opts["n_samples"],
                seed=search,
                feature_fn=opts["feature_fn"],
                progress=progress,
            )
            rate_evaluations += int(local[base].evaluations + local[base].feature_evaluations)
        candidates = []
        for spec in specs:
            name = format_measure(spec)
            if len(spec) == 1:
                rate = local[name]
            else:
                parts = {k: (local[k].discrepancy, local[k].stderr) for k in spec}
                disc, se = combine_velocities(spec, parts)
                rate = RateEstimate(measure=name, sigma=local[next(iter(spec))].sigma, discrepancy=disc, stderr=se)
            for xi in xis:
                sig = optimize_schedule(rate, xi=xi).discretize(steps).numpy()
                candidates.append((name, float(xi), sig))
        if method == "crs":
            evaluations = 0  # the teacher only reports the objective; CRS itself needs nothing beyond its rate
            (name, xi, sigmas) = candidates[0]
            objective = teacher_rms(denoiser, sampler, teacher, sigmas)
        else:
            scored = [(teacher_rms(denoiser, sampler, teacher, sig), name, xi, sig) for name, xi, sig in candidates]
            evaluations += len(scored) * nfe
            objective, name, xi, sigmas = min(scored, key=lambda c: c[0])
            meta["candidates"] = [{"measure": m, "xi": x, "objective": o} for o, m, x, _ in scored]
        meta.update(measure=name, xi=xi)
    elif method == "gits":
        costs_key = ("gits", key, sampler, opts["substeps"])  # jump costs do not depend on nfe: reused too
        meta["jumps_reused"] = costs_key in cache
        if not meta["jumps_reused"]:
            cache[costs_key] = gits_costs(denoiser, sampler, teacher, opts["substeps"], opts["batch_size"])
            evaluations += cache[costs_key][2]
        cost, first, spent = cache[costs_key]
        meta["jump_evaluations"] = spent
        grid = teacher.sigma[:: opts["substeps"]]
        if sampler == "dpmpp_2m":
            _, path = dp_path_history(first, cost, steps - 1)
        else:
            _, path = dp_path(cost, steps - 1)
        sigmas = _levels(grid[path])
        objective = teacher_rms(denoiser, sampler, teacher, sigmas)
        meta.update(grid=int(len(grid) - 1), path=[int(p) for p in path])
    else:
        init = opts["init"]
        check_choice("optimizer", opts["optimizer"], ("lbfgs", "powell"), what="optimizer")
        if isinstance(init, str):
            names = [b for b in BASELINES if b != "ays"] if init in ("all", "best") else [init]
            for b in names:
                check_choice("init", b, BASELINES, what="baseline")
            starts = [(b, check_sigmas(baseline_sigmas(b, steps, lo, hi)).numpy()) for b in names]
            if init == "best":
                scored = [(teacher_rms(denoiser, sampler, teacher, sig), b, sig) for b, sig in starts]
                evaluations += len(scored) * nfe
                _, b, sig = min(scored, key=lambda c: c[0])
                starts = [(b, sig)]
        else:
            starts = [("given", check_sigmas(init).numpy())]
            if len(starts[0][1]) - 1 != steps:
                raise ValueError(f"`init` has {len(starts[0][1]) - 1} levels; nfe={nfe} of {sampler} needs {steps}.")
        free = method == "optimal-free"
        floor = denoiser.sigma_min if getattr(denoiser, "sigma_min", None) is not None else lo / 10
        floor = min(floor, lo)
        runs = []
        for name, sig in starts:  # the objective has several local minima: every start is optimised, the best kept
            best, spent, info = _optimise(denoiser, sampler, teacher, sig[:-1], lo, hi, free, floor, opts)
            evaluations += spent
            sigmas = _levels(best)
            runs.append((teacher_rms(denoiser, sampler, teacher, sigmas), name, sigmas, info))
        objective, name, sigmas, info = min(runs, key=lambda r: r[0])
        meta.update(init=name, starts={r[1]: r[0] for r in runs}, **info)
    return SearchResult(
        method=method,
        sampler=sampler,
        nfe=int(nfe),
        sigma_min=float(lo),
        sigma_max=float(hi),
        sigmas=[float(s) for s in sigmas],
        objective=float(objective),
        evaluations=int(evaluations),
        batch=int(opts["n"]),
        rate_evaluations=int(rate_evaluations),
        seconds=time.perf_counter() - start,
        seed=int(seed),
        options=stored_options(opts),
        meta=meta,
    )


def stored_options(opts: dict) -> dict:
    """The options a result stores (and is reused for): plain values, tuples as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items() if _jsonable(v)}


def _jsonable(v) -> bool:
    """Options stored with a result: plain values (a feature function is not; sigmas given as a tensor are)."""
    if isinstance(v, torch.Tensor):
        return False
    return isinstance(v, (str, int, float, bool, type(None), list, tuple))


def brute_force_path(cost: np.ndarray, jumps: int, first: np.ndarray | None = None) -> tuple[float, list[int]]:
    """Enumerate every path (for tests of :func:`dp_path` and :func:`dp_path_history` on small problems)."""
    g = (len(first) if first is not None else cost.shape[0]) - 1
    best = (math.inf, [])
    for inner in itertools.combinations(range(1, g), jumps - 1):
        path = [0, *inner, g]
        if first is None:
            total = sum(cost[a, b] for a, b in itertools.pairwise(path))
        else:
            total = first[path[1]] + sum(cost[path[m - 1], path[m], path[m + 1]] for m in range(1, len(path) - 1))
        if total < best[0]:
            best = (float(total), path)
    return best
