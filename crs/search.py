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
* ``dmn``, ``ld3``, ``oss``, ``ays-opt``: ported peers (DM-NonUniform, LD3, Optimal Stepsize, Align Your Steps'
  optimiser; :mod:`crs.peers`, docs/concepts/peers.md says where each differs from its original).

Each method is one function registered by name (:func:`register_search`, with its options and their defaults, and
its role: ``kind`` ``crs`` for the CRS methods, ``peer`` for the others, :func:`search_kind`);
:func:`search_schedule` checks the arguments, solves the search teacher and runs it on a :class:`SearchContext`.
A :class:`SearchCache` keeps teachers, rates and jump costs per model for later searches.

Every method judges and searches on the *search batch*, the starting noise of seeds
:func:`crs.seeds.search_seed`, disjoint from the seeds on which results are reported. Costs are counted as
network evaluations per search sample (as nfe counts them; one evaluation of the whole batch is one), beyond a
rate estimate, whose own cost is reported apart (``rate_evaluations``, single-sample evaluations).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crs.args import check_choice, check_int
from crs.conditioning import Bound, bind, check_conditions, guidance_evaluations, guidance_of
from crs.io import atomic_write_json, read_json
from crs.protocols import check_data_matches
from crs.quality import Teacher, check_deterministic_sampler, solve_teacher
from crs.sampling import STEPS, check_sigmas, nfe_of, run_steps, steps_for_nfe
from crs.schedules import BASELINES, baseline_sigmas, check_sigma_range, fit_model_range
from crs.seeds import search_seed

__all__ = [
    "KINDS",
    "METHODS",
    "SearchCache",
    "SearchContext",
    "SearchMethod",
    "SearchResult",
    "check_options",
    "denoise_rows",
    "dp_path",
    "dp_path_history",
    "gits_costs",
    "register_search",
    "search_kind",
    "search_schedule",
    "stored_options",
    "teacher_rms",
]

# The role of a schedule in a comparison, recorded as data (the ``kind`` of a sample index entry and of a metrics row):
# a CRS schedule (compared with the fixed baselines), a fixed baseline, or a searched peer (a row, never a comparator).
# Each search method declares its kind when registered (register_search).
KINDS = ("crs", "baseline", "peer")

# the options every method takes; each method's own are registered with it (register_search), anything else is
# refused by name
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
        seconds: wall-clock time of the whole :func:`search_schedule` call, from entry to return: argument
            checks, imports on first use, the teacher solve and rate estimates (those it made, not those it
            reused from a cache) and the search itself.
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


# ----------------------------------------------------------------------------- the cache
class SearchCache:
    """What searches keep for later searches, kept apart per model.

    Everything is keyed by the denoiser's identity first: one cache serves several models without one model's
    entries ever reaching another's search. The cache holds a reference to every denoiser it has seen, so no
    other object can take its ``id`` while the cache lives. Within a model it keeps the search teacher (by sample
    shape, search batch, seed, range, steps), the CRS methods' rate estimates (by dataset name and shape,
    measure, range, grid, samples, seed and feature map) and GITS's jump costs (by teacher, sampler, substeps).
    """

    def __init__(self) -> None:
        self._models: dict[int, tuple[object, dict]] = {}

    def store(self, denoiser) -> dict:
        """The entries of ``denoiser`` (an empty store on first use), a dict the search methods fill."""
        if id(denoiser) not in self._models:
            self._models[id(denoiser)] = (denoiser, {})
        return self._models[id(denoiser)][1]

    def __contains__(self, denoiser) -> bool:
        """Whether ``denoiser`` has a store here."""
        return id(denoiser) in self._models and self._models[id(denoiser)][0] is denoiser

    def __len__(self) -> int:
        """The number of models with a store."""
        return len(self._models)


def _model_store(cache: SearchCache | None, denoiser) -> dict:
    """The store a search of ``denoiser`` uses: its own in ``cache``, or a fresh one (no cache)."""
    if cache is None:
        return {}
    if not isinstance(cache, SearchCache):
        raise ValueError(
            f"`cache` must be a crs.search.SearchCache (it keeps each model's entries apart) or None, "
            f"got {type(cache).__name__}."
        )
    return cache.store(denoiser)


# ----------------------------------------------------------------------------- the context and the registry
@dataclass
class SearchContext:
    """What a search method works with, and what it reports back (its counters and ``meta``).

    Attributes:
        denoiser, data, sampler, nfe: as given to :func:`search_schedule`; ``steps`` the sampler spends ``nfe`` on.
        lo, hi: the range searched in.
        seed: the search batch's seed (:func:`crs.seeds.search_seed` of the run's).
        opts: the method's options merged with the defaults (:func:`check_options`).
        store: this model's entries in the cache (a fresh dict without one).
        teacher, teacher_key: the search teacher and its key in ``store`` (set before the method runs).
        model, conditions: the denoiser as given and a conditional model's condition source; once the teacher is
            solved, ``denoiser`` is ``model`` bound to the search batch's conditions (:func:`crs.conditioning.bind`),
            the plain ``D(x, sigma)`` of the search batch every method calls.
        evaluations: the method's own network evaluations per search sample so far (denoiser evaluations: a guided
            model's are counted twice at the end, as the teacher's are).
        teacher_cost: the search teacher's network calls per sample (0 when reused, or when it only scores).
        rate_evaluations: single-sample evaluations of rate estimates.
        meta: what the result reports beyond its fields.
    """

    denoiser: Any
    data: Any
    sampler: str
    nfe: int
    steps: int
    lo: float
    hi: float
    seed: int
    opts: dict
    store: dict
    progress: bool = False
    teacher: Teacher | None = None
    teacher_key: tuple = ()
    model: Any = None
    conditions: Any = None
    evaluations: int = 0
    teacher_cost: int = 0
    rate_evaluations: int = 0
    meta: dict = field(default_factory=dict)

    def objective(self, sigmas) -> float:
        """The teacher error of ``sigmas`` on the search batch (:func:`teacher_rms`)."""
        return teacher_rms(self.denoiser, self.sampler, self.teacher, sigmas)


def _plain_teacher(ctx: SearchContext) -> tuple[int, bool]:
    """The search teacher most methods use: ``teacher_steps`` Heun steps, no trajectory kept."""
    return ctx.opts["teacher_steps"], False


@dataclass(frozen=True)
class SearchMethod:
    """A registered search method.

    Attributes:
        name: the name :func:`search_schedule` takes.
        run: ``run(ctx) -> (sigmas, objective)``: ``n`` levels descending then 0 (float64 array), and their
            teacher error; it adds its costs to ``ctx``'s counters and what it reports to ``ctx.meta``.
        options: the method's own options and their defaults (beyond the common ``n``, ``teacher_steps``,
            ``batch_size``).
        kind: the role of its schedules (:data:`KINDS`): ``crs`` for a CRS method (compared with the fixed
            baselines), ``peer`` for another schedule search (reported, never a comparator).
        prepare: ``prepare(ctx) -> (teacher_steps, keep_states)``: checks the method's options before any work
            (``ctx.teacher`` is None then) and says which search teacher it needs.
    """

    name: str
    run: Callable[[SearchContext], tuple[np.ndarray, float]]
    options: Mapping[str, Any]
    kind: str
    prepare: Callable[[SearchContext], tuple[int, bool]] = _plain_teacher


_SEARCHES: dict[str, SearchMethod] = {}


def register_search(name: str, options: Mapping[str, Any], prepare=_plain_teacher, *, kind: str):
    """Register the decorated ``run(ctx) -> (sigmas, objective)`` as the search method ``name`` of role ``kind``
    (``crs`` or ``peer``, see :class:`SearchMethod`); ValueError for a name taken already or another kind."""
    check_choice("kind", kind, ("crs", "peer"), what="kind of searched schedule")

    def register(run):
        if name in _SEARCHES:
            raise ValueError(f"A schedule search method named {name!r} is registered already.")
        _SEARCHES[name] = SearchMethod(name, run, dict(options), kind, prepare)
        return run

    return register


def search_kind(method: str) -> str:
    """The role (:data:`KINDS`) of the schedules ``method`` finds, as its registration declares it."""
    check_choice("method", method, tuple(_SEARCHES), what="schedule search method")
    return _SEARCHES[method].kind


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


# ----------------------------------------------------------------------------- crs, crs-select
_RATE_OPTIONS = {"grid_size": 64, "n_samples": 1024, "feature_fn": None}


def _base_rates(ctx: SearchContext, specs: list[dict]) -> dict:
    """Every base measure of ``specs`` estimated once on the range (or taken from the store): ``{name: rate}``."""
    from crs.rate import estimate_rate

    opts, rates = ctx.opts, {}
    for base in dict.fromkeys(name for spec in specs for name in spec):
        fn = opts["feature_fn"] if base == "fid" else None  # only fid reads it
        ctx.store.setdefault(("held", id(fn)), fn)  # held, so that its id cannot be reused while the key lives
        data_key = (ctx.data.name, tuple(ctx.data.shape)) if base not in BASELINES else None
        key = ("rate", base, data_key, ctx.lo, ctx.hi, opts["grid_size"], opts["n_samples"], ctx.seed, id(fn))
        if key not in ctx.store:
            ctx.store[key] = rate = estimate_rate(
                base,
                ctx.data if base not in BASELINES else None,
                denoiser=ctx.model,  # a conditional model at each x0's own label (estimate_rate)
                sigma_min=ctx.lo,
                sigma_max=ctx.hi,
                grid_size=opts["grid_size"],
                n_samples=opts["n_samples"],
                seed=ctx.seed,
                feature_fn=fn,
                progress=ctx.progress,
            )
            ctx.rate_evaluations += int(rate.evaluations + rate.feature_evaluations)
        rates[base] = ctx.store[key]
    return rates


def _crs_candidates(ctx: SearchContext, measures, xis) -> list[tuple[str, float, np.ndarray]]:
    """The CRS schedule of every measure and ``xi``: ``[(measure, xi, sigmas)]``, measures outermost.
    ``solver`` stands for the sampler's own solver measure."""
    from crs.measures import combine_velocities, format_measure, parse_measure
    from crs.optimize import optimize_schedule
    from crs.rate import RateEstimate

    specs = [parse_measure(re.sub(r"\bsolver\b(?!-)", f"solver-{ctx.sampler}", m)) for m in measures]
    rates = _base_rates(ctx, specs)
    candidates = []
    for spec in specs:
        name = format_measure(spec)
        rate = rates[name] if len(spec) == 1 else None
        if rate is None:
            disc, se = combine_velocities(spec, {k: (rates[k].discrepancy, rates[k].stderr) for k in spec})
            rate = RateEstimate(measure=name, sigma=rates[next(iter(spec))].sigma, discrepancy=disc, stderr=se)
        for xi in xis:
            candidates.append((name, float(xi), optimize_schedule(rate, xi=xi).discretize(ctx.steps).numpy()))
    return candidates


@register_search("crs", options={"measure": "data", "xi": 1.0, **_RATE_OPTIONS}, kind="crs")
def _crs(ctx: SearchContext) -> tuple[np.ndarray, float]:
    """The paper's method: the constant-rate schedule of one measure at one ``xi``."""
    ((name, xi, sigmas),) = _crs_candidates(ctx, [ctx.opts["measure"]], [ctx.opts["xi"]])
    ctx.teacher_cost = 0  # the teacher only reports the objective; CRS itself needs nothing beyond its rate
    objective = ctx.objective(sigmas)
    ctx.meta.update(measure=name, xi=xi)
    return sigmas, objective


@register_search(
    "crs-select",
    options={
        "measures": ("data", "noise", "solver", "noise+exponential", "solver+exponential"),
        "xis": (0.5, 0.75, 1.0, 1.5, 2.0),
        **_RATE_OPTIONS,
    },
    kind="crs",
)
def _crs_select(ctx: SearchContext) -> tuple[np.ndarray, float]:
    """CRS with the measure and ``xi`` of least teacher error among the candidates."""
    candidates = _crs_candidates(ctx, list(ctx.opts["measures"]), list(ctx.opts["xis"]))
    scored = [(ctx.objective(sig), name, xi, sig) for name, xi, sig in candidates]
    ctx.evaluations += len(scored) * ctx.nfe
    objective, name, xi, sigmas = min(scored, key=lambda c: c[0])
    ctx.meta["candidates"] = [{"measure": m, "xi": x, "objective": o} for o, m, x, _ in scored]
    ctx.meta.update(measure=name, xi=xi)
    return sigmas, objective


# ----------------------------------------------------------------------------- gits
def _rms_to(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RMS over samples and features per jump: pred, target (J, n, F) -> (J,)."""
    return (pred - target).pow(2).mean(dim=(1, 2)).sqrt()


def denoise_rows(denoiser, pred: torch.Tensor, levels: torch.Tensor, shape, batch_size: int) -> torch.Tensor:
    """D at the points ``pred`` (J, n, F), row ``j`` at ``levels[j]``, in batches -> (J, n, F) float64."""
    jumps, n = pred.shape[0], pred.shape[1]
    rows = pred.reshape(jumps * n, *shape)
    per_row = levels.repeat_interleave(n)
    # a model bound to the search batch's conditions: row j * n + i is sample i, with its condition
    model, cond = (denoiser.denoiser, denoiser.cond.repeat(jumps)) if isinstance(denoiser, Bound) else (denoiser, None)
    with torch.no_grad():
        out = torch.cat(
            [
                bind(model, cond, slice(a, a + batch_size))(
                    rows[a : a + batch_size], per_row[a : a + batch_size]
                ).double()
                for a in range(0, len(rows), batch_size)
            ]
        )
    return out.reshape(jumps, n, -1)


def _one_step_costs(denoiser, sampler, states, den, sig_t, batch_size) -> tuple[np.ndarray, int]:
    """Euler's or Heun's jump costs (G + 1, G + 1) and the evaluations of Heun's corrector (0 for Euler)."""
    flat, dflat = states.flatten(2), den.flatten(2)  # (G + 1, n, F)
    g, evaluations = len(sig_t) - 1, 0
    cost = np.full((g + 1, g + 1), np.inf)
    for i in range(g):
        j = torch.arange(i + 1, g + 1)
        dt = (sig_t[j] - sig_t[i])[:, None, None]
        slope = (flat[i] - dflat[i]) / sig_t[i]
        pred = flat[i][None] + dt * slope[None]
        if sampler == "heun":  # the corrector: one evaluation per jump, all jumps from i in one pass
            d_next = denoise_rows(denoiser, pred, sig_t[j], states.shape[2:], batch_size)
            slope_next = (pred - d_next) / sig_t[j][:, None, None]
            pred = flat[i][None] + dt * 0.5 * (slope[None] + slope_next)
            evaluations += len(j)
        cost[i, i + 1 :] = _rms_to(pred, flat[j]).numpy()
    return cost, evaluations


def _two_step_costs(flat: torch.Tensor, dflat: torch.Tensor, sig_t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """DPM-Solver++(2M)'s costs ``[k, i, j]`` (G + 1,) * 3 and its history-free first jumps (G + 1,).

    ``x_j = (s_j / s_i) x_i - expm1(-h) D'``, ``h = log(s_i / s_j)``, ``D'`` from ``D_i`` and the history ``D_k``.
    """
    g = len(sig_t) - 1
    cost = np.full((g + 1, g + 1, g + 1), np.inf)
    j = torch.arange(1, g + 1)
    h = torch.log(sig_t[0] / sig_t[j])[:, None, None]
    pred = (sig_t[j] / sig_t[0])[:, None, None] * flat[0][None] - torch.expm1(-h) * dflat[0][None]
    first = np.full(g + 1, np.inf)
    first[1:] = _rms_to(pred, flat[j]).numpy()
    for i in range(1, g):
        j = torch.arange(i + 1, g + 1)
        h = torch.log(sig_t[i] / sig_t[j])  # (J,)
        for k in range(i):
            r = torch.log(sig_t[k] / sig_t[i]) / h  # (J,)
            a = (1 + 1 / (2 * r))[:, None, None]
            b = (1 / (2 * r))[:, None, None]
            d_mix = a * dflat[i][None] - b * dflat[k][None]
            pred = (sig_t[j] / sig_t[i])[:, None, None] * flat[i][None] - torch.expm1(-h)[:, None, None] * d_mix
            cost[k, i, i + 1 :] = _rms_to(pred, flat[j]).numpy()
    return cost, first


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
    with torch.no_grad():
        den = torch.stack(
            [
                denoiser(states[i], torch.full((states.shape[1],), float(sig[i]), dtype=torch.float64))
                for i in range(len(sig))
            ]
        )
    den = den.double()
    sig_t = torch.from_numpy(np.asarray(sig, dtype=np.float64))
    if sampler in ("euler", "heun"):
        cost, spent = _one_step_costs(denoiser, sampler, states, den, sig_t, batch_size)
        return cost, cost[0].copy(), len(sig) + spent
    cost, first = _two_step_costs(states.flatten(2), den.flatten(2), sig_t)
    return cost, first, len(sig)


def _gits_teacher(ctx: SearchContext) -> tuple[int, bool]:
    """GITS's teacher: ``grid * substeps`` steps (rounded up to even), trajectories kept."""
    check_int("grid", ctx.opts["grid"], ctx.steps - 1)
    check_int("substeps", ctx.opts["substeps"], 1)
    steps = ctx.opts["grid"] * ctx.opts["substeps"]
    return steps + steps % 2, True


@register_search("gits", options={"grid": 100, "substeps": 4}, prepare=_gits_teacher, kind="peer")
def _gits(ctx: SearchContext) -> tuple[np.ndarray, float]:
    """The path of ``steps - 1`` jumps on the teacher's grid with the least summed jump error."""
    substeps = ctx.opts["substeps"]
    key = ("gits", ctx.teacher_key, ctx.sampler, substeps)  # jump costs do not depend on nfe: reused too
    ctx.meta["jumps_reused"] = key in ctx.store
    if not ctx.meta["jumps_reused"]:
        ctx.store[key] = gits_costs(ctx.denoiser, ctx.sampler, ctx.teacher, substeps, ctx.opts["batch_size"])
        ctx.evaluations += ctx.store[key][2]
    cost, first, spent = ctx.store[key]
    ctx.meta["jump_evaluations"] = spent
    grid = ctx.teacher.sigma[::substeps]
    if ctx.sampler == "dpmpp_2m":
        _, path = dp_path_history(first, cost, ctx.steps - 1)
    else:
        _, path = dp_path(cost, ctx.steps - 1)
    sigmas = _levels(grid[path])
    objective = ctx.objective(sigmas)
    ctx.meta.update(grid=int(len(grid) - 1), path=[int(p) for p in path])
    return sigmas, objective


# ----------------------------------------------------------------------------- optimal, optimal-free
_OPTIMAL_OPTIONS = {"init": "all", "maxiter": 200, "maxfev": 2000, "optimizer": "lbfgs"}


def _start_logits(init: np.ndarray, hi: float, free: bool, floor: float) -> np.ndarray:
    """The gap logits of the levels ``init`` (descending, positive), and with ``free`` the logit of its end."""
    u0 = math.log(hi)
    gaps = -np.diff(np.log(init))
    z0 = np.log(gaps / gaps.sum())
    if free:
        span = u0 - math.log(floor)
        frac = (u0 - math.log(init[-1])) / span
        frac = min(max(frac, 1e-6), 1 - 1e-6)
        z0 = np.concatenate([z0, [math.log(frac / (1 - frac))]])
    return z0


def _logit_sigmas(z: torch.Tensor, lo: float, hi: float, free: bool, floor: float) -> torch.Tensor:
    """The schedule of the gap logits ``z`` (float64): ``hi``, the interior levels, the end (``lo``, or free
    between ``hi`` and ``floor``), then 0."""
    u0 = math.log(hi)
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


class _TeacherObjective:
    """The teacher error of the schedule of gap logits ``z``, with its gradient by autograd through the sampler;
    counts network evaluations and keeps the best schedule seen (a failed schedule scores 1e30)."""

    def __init__(self, ctx: SearchContext, steps: int, free: bool, floor: float) -> None:
        self.ctx, self.free, self.floor = ctx, free, floor
        self.nfe = nfe_of(ctx.sampler, steps)
        self.forward = self.backward = 0
        self.best_f, self.best_sigmas = math.inf, None

    def __call__(self, z_np: np.ndarray, grad: bool):
        ctx = self.ctx
        z = torch.tensor(z_np, dtype=torch.float64, requires_grad=grad)
        sig = _logit_sigmas(z, ctx.lo, ctx.hi, self.free, self.floor)
        levels = sig.detach()[:-1]
        if not torch.all(levels[1:] < levels[:-1] * (1 - 1e-9)):  # a gap underflowed: not a schedule
            return (1e30, np.zeros_like(z_np)) if grad else 1e30
        with torch.set_grad_enabled(grad):
            x = run_steps(STEPS[ctx.sampler], ctx.denoiser, ctx.teacher.x_T, sig)
            value = _rms(x.double(), ctx.teacher.endpoint.double())
        self.forward += self.nfe
        v = float(value.detach())
        if not math.isfinite(v):
            return (1e30, np.zeros_like(z_np)) if grad else 1e30
        if v < self.best_f:
            self.best_f, self.best_sigmas = v, sig.detach().numpy()[:-1].copy()
        if not grad:
            return v
        (g,) = torch.autograd.grad(value, z)
        self.backward += self.nfe
        return v, g.numpy()


def _optimize(ctx: SearchContext, init: np.ndarray, free: bool, floor: float) -> tuple[np.ndarray, int, dict]:
    """L-BFGS (or Powell) on the gap logits of the interior levels from ``init`` (levels without the final 0);
    returns the best levels seen, the forward evaluations and ``{iterations, converged, backward_evaluations}``."""
    from scipy.optimize import minimize

    z0 = _start_logits(init, ctx.hi, free, floor)
    f = _TeacherObjective(ctx, len(init), free, floor)
    f(z0, False)  # the starting point is a candidate: the result is never worse than it
    maxiter = ctx.opts["maxiter"]
    if ctx.opts["optimizer"] == "lbfgs":
        res = minimize(lambda z: f(z, True), z0, jac=True, method="L-BFGS-B", options={"maxiter": maxiter})
    else:
        options = {"maxiter": maxiter, "maxfev": ctx.opts["maxfev"], "xtol": 1e-4, "ftol": 1e-8}
        res = minimize(lambda z: f(z, False), z0, method="Powell", options=options)
    info = {"iterations": int(res.nit), "converged": bool(res.success), "backward_evaluations": f.backward}
    return f.best_sigmas, f.forward, info


def _starts(ctx: SearchContext) -> list[tuple[str, np.ndarray]]:
    """The starting schedules ``init`` names: ``[(name, sigmas)]``; ValueError for an unknown baseline or given
    sigmas of the wrong length."""
    init = ctx.opts["init"]
    if not isinstance(init, str):
        given = check_sigmas(init).numpy()
        if len(given) - 1 != ctx.steps:
            raise ValueError(f"`init` has {len(given) - 1} levels; nfe={ctx.nfe} of {ctx.sampler} needs {ctx.steps}.")
        return [("given", given)]
    names = [b for b in BASELINES if b != "ays"] if init in ("all", "best") else [init]
    for b in names:
        check_choice("init", b, BASELINES, what="baseline")
    return [(b, check_sigmas(baseline_sigmas(b, ctx.steps, ctx.lo, ctx.hi)).numpy()) for b in names]


def _optimal_teacher(ctx: SearchContext) -> tuple[int, bool]:
    """Checks ``optimizer`` and ``init`` before any work; the plain teacher."""
    check_choice("optimizer", ctx.opts["optimizer"], ("lbfgs", "powell"), what="optimizer")
    _starts(ctx)
    return _plain_teacher(ctx)


def _optimal_search(ctx: SearchContext, free: bool) -> tuple[np.ndarray, float]:
    """Every start optimised (the objective has several local minima), the best result kept."""
    starts = _starts(ctx)
    if isinstance(ctx.opts["init"], str) and ctx.opts["init"] == "best":
        scored = [(ctx.objective(sig), b, sig) for b, sig in starts]
        ctx.evaluations += len(scored) * ctx.nfe
        _, b, sig = min(scored, key=lambda c: c[0])
        starts = [(b, sig)]
    floor = min(ctx.denoiser.sigma_min if ctx.denoiser.sigma_min is not None else ctx.lo / 10, ctx.lo)
    runs = []
    for name, sig in starts:
        best, spent, info = _optimize(ctx, sig[:-1], free, floor)
        ctx.evaluations += spent
        sigmas = _levels(best)
        runs.append((ctx.objective(sigmas), name, sigmas, info))
    objective, name, sigmas, info = min(runs, key=lambda r: r[0])
    ctx.meta.update(init=name, starts={r[1]: r[0] for r in runs}, **info)
    return sigmas, objective


@register_search("optimal", options=_OPTIMAL_OPTIONS, prepare=_optimal_teacher, kind="peer")
def _optimal(ctx: SearchContext) -> tuple[np.ndarray, float]:
    """The least teacher error over the interior levels, both ends fixed."""
    return _optimal_search(ctx, free=False)


@register_search("optimal-free", options=_OPTIMAL_OPTIONS, prepare=_optimal_teacher, kind="peer")
def _optimal_free(ctx: SearchContext) -> tuple[np.ndarray, float]:
    """As ``optimal`` with sigma_min free too (between the model's floor, or a tenth of sigma_min, and sigma_max)."""
    return _optimal_search(ctx, free=True)


# ----------------------------------------------------------------------------- ported peers (crs.peers)
def _dmn_prepare(ctx: SearchContext) -> tuple[int, bool]:
    from crs.peers import check_dmn_order

    if ctx.opts["order"] != "auto":
        check_dmn_order(ctx.opts["order"])
    check_int("trunc", ctx.opts["trunc"], 0)
    power = ctx.opts["err_power"]
    if isinstance(power, bool) or not (isinstance(power, (int, float)) and power > 0):
        raise ValueError(f"`err_power` must be a positive number, got {power!r}.")
    if not isinstance(ctx.opts["lower_final"], bool):
        raise ValueError(f"`lower_final` must be true or false, got {ctx.opts['lower_final']!r}.")
    return _plain_teacher(ctx)


@register_search(
    "dmn",
    options={"order": "auto", "trunc": 3, "err_power": 2.0, "lower_final": False},
    prepare=_dmn_prepare,
    kind="peer",
)
def _dmn(ctx: SearchContext) -> tuple[np.ndarray, float]:
    """DM-NonUniform: ``steps`` levels from sigma_max to sigma_min (``steps - 1`` intervals) as its optimiser places
    them, then 0; no network evaluation (the teacher only scores the result). The step into sigma_min keeps the
    sampler's order (the suite's samplers lower it only on the step to 0); ``lower_final`` lowers it, as the
    reference does for DPM-Solver."""
    from crs.peers import DMN_ORDER_OF, dmn_lambdas

    order = DMN_ORDER_OF[ctx.sampler] if ctx.opts["order"] == "auto" else ctx.opts["order"]
    opts = ctx.opts
    lam, info = dmn_lambdas(
        ctx.steps - 1,
        -math.log(ctx.hi),
        -math.log(ctx.lo),
        order,
        opts["trunc"],
        opts["err_power"],
        opts["lower_final"],
    )
    sigmas = np.exp(-lam)
    sigmas[0], sigmas[-1] = ctx.hi, ctx.lo  # the ends exactly
    sigmas = _levels(sigmas)
    ctx.teacher_cost = 0  # the teacher only scores the result
    ctx.meta.update(order=order, **info)
    return sigmas, ctx.objective(sigmas)


def _ld3_prepare(ctx: SearchContext) -> tuple[int, bool]:
    opts = ctx.opts
    check_int("pairs", opts["pairs"], 2)
    if opts["pairs"] > opts["n"]:
        raise ValueError(f"`pairs` ({opts['pairs']}) cannot exceed the search batch `n` ({opts['n']}).")
    check_int("batch", opts["batch"], 1)
    check_int("patience", opts["patience"], 1)
    rounds = opts["rounds"]
    if not (
        isinstance(rounds, (list, tuple)) and len(rounds) == 2 and all(isinstance(r, int) and r >= 0 for r in rounds)
    ):
        raise ValueError(
            f"`rounds` must be two counts (rounds before and after the original's second phase), got {rounds!r}."
        )
    if opts["radius"] != "auto" and not (isinstance(opts["radius"], (int, float)) and opts["radius"] >= 0):
        raise ValueError(f"`radius` must be 'auto' or a number >= 0, got {opts['radius']!r}.")
    if isinstance(opts["lr"], bool) or not (isinstance(opts["lr"], (int, float)) and opts["lr"] > 0):
        raise ValueError(f"`lr` must be a positive number, got {opts['lr']!r}.")
    return _plain_teacher(ctx)


@register_search(
    "ld3",
    options={"pairs": 100, "batch": 2, "rounds": (2, 5), "lr": 0.005, "patience": 5, "radius": "auto"},
    prepare=_ld3_prepare,
    kind="peer",
)
def _ld3(ctx: SearchContext) -> tuple[np.ndarray, float]:
    """LD3 on the first ``pairs`` samples of the search batch; scored, like every method, on the whole batch."""
    from crs.peers import ld3_train

    sigmas, info = ld3_train(ctx, ctx.opts["pairs"], ctx.opts)
    sigmas = _levels(sigmas[:-1])
    ctx.evaluations += math.ceil((info["forward_sample_evaluations"]) / ctx.opts["n"])
    ctx.meta.update(info)
    return sigmas, ctx.objective(sigmas)


def _ays_prepare(ctx: SearchContext) -> tuple[int, bool]:
    for name, low in (("candidates", 3), ("mc_samples", 2), ("sweeps", 1), ("patience", 1)):
        check_int(name, ctx.opts[name], low)
    if ctx.opts["candidates"] % 2 == 0:
        raise ValueError(
            f"`candidates` must be odd (the point itself and as many on each side), got {ctx.opts['candidates']}."
        )
    return _plain_teacher(ctx)


@register_search(
    "ays-opt",
    options={"candidates": 11, "mc_samples": 1024, "sweeps": 20, "patience": 3},
    prepare=_ays_prepare,
    kind="peer",
)
def _ays_opt(ctx: SearchContext) -> tuple[np.ndarray, float]:
    """Align Your Steps' optimiser from EDM's schedule at the sampler's own level count (the paper optimises 10 steps
    and interpolates), stopped by the teacher error: after each sweep the schedule is scored on the search batch and
    the best one kept; ``patience`` sweeps without improvement end it (the paper stops by eye or a perceptual
    metric, since its bound's optimum is not the sampler's)."""
    from crs.conditioning import conditioning_of
    from crs.peers import ays_sweeps

    levels = baseline_sigmas("karras", ctx.steps, ctx.lo, ctx.hi).numpy()[:-1][::-1].copy()  # ascending
    conditional = conditioning_of(ctx.model) is not None

    def draw(m, gen):
        if conditional:  # each x0 with its own label, as the rates condition them
            x0, cond = ctx.data.sample_labeled(m, gen)
            return x0.to(ctx.teacher.x_T.dtype), cond
        return ctx.data.sample(m, gen).to(ctx.teacher.x_T.dtype), None

    scores = [ctx.objective(_levels(levels[::-1]))]
    best = {"objective": scores[0], "sweep": -1, "levels": levels.copy(), "scored": 1}

    def on_sweep(sweep, current):
        value = ctx.objective(_levels(current[::-1]))
        scores.append(value)
        best["scored"] += 1
        if value < best["objective"]:
            best.update(objective=value, sweep=sweep, levels=current.copy())
        return sweep - best["sweep"] >= ctx.opts["patience"]

    spent = ays_sweeps(ctx.model, draw, levels, ctx.opts, ctx.seed, on_sweep)
    ctx.evaluations += math.ceil(spent / ctx.opts["n"]) + best["scored"] * ctx.nfe
    ctx.meta.update(klub_sample_evaluations=spent, best_sweep=best["sweep"], sweep_objectives=scores)
    return _levels(best["levels"][::-1]), best["objective"]


def _oss_prepare(ctx: SearchContext) -> tuple[int, bool]:
    check_choice("aggregate", ctx.opts["aggregate"], ("median", "joint"), what="OSS aggregate")
    return _gits_teacher(ctx)


@register_search("oss", options={"grid": 100, "substeps": 4, "aggregate": "median"}, prepare=_oss_prepare, kind="peer")
def _oss(ctx: SearchContext) -> tuple[np.ndarray, float]:
    """Optimal Stepsize on the teacher's grid (GITS's teacher: the same trajectories serve both) and sigma = 0:
    ``steps`` steps from sigma_max, the last level before 0 where the programme puts it."""
    from crs.peers import oss_path

    grid = ctx.teacher.sigma[:: ctx.opts["substeps"]]
    levels = np.concatenate([[0.0], grid[::-1]])  # ascending, 0 first: the original's indexing
    states = ctx.teacher.states[:: ctx.opts["substeps"]].flip(0)
    traj = torch.cat([ctx.teacher.endpoint[None].to(states.dtype), states])
    per_sample = ctx.opts["aggregate"] == "median"
    path, spent = oss_path(ctx.denoiser, ctx.sampler, levels, traj, ctx.steps, per_sample=per_sample)
    ctx.meta["exact_rerun"] = len(set(path)) < len(path)  # a repeat: fewer steps than the budget (see below)
    if ctx.meta["exact_rerun"]:  # the original would run a zero-length step; the port takes exactly `steps` steps
        path, more = oss_path(ctx.denoiser, ctx.sampler, levels, traj, ctx.steps, per_sample=per_sample, at_most=False)
        spent += more
        if len(set(path)) < len(path):  # medians of exact paths can still coincide: the batch's one programme
            path, more = oss_path(ctx.denoiser, ctx.sampler, levels, traj, ctx.steps, per_sample=False, at_most=False)
            spent += more
    ctx.evaluations += spent
    sigmas = _levels(levels[path[1:]][::-1])
    ctx.meta.update(grid=int(len(grid) - 1), path=[int(p) for p in path], dp_evaluations=spent)
    return sigmas, ctx.objective(sigmas)


METHODS = tuple(_SEARCHES)  # in the order of registration


# ----------------------------------------------------------------------------- the entry point
def check_options(method: str, options: dict) -> dict:
    """A method's options merged with the defaults; ValueError naming an unknown method or option, or a bad count."""
    check_choice("method", method, METHODS, what="schedule search method")
    if not isinstance(options, dict):
        raise ValueError(f"The options of the search method {method!r} must be a mapping, got {options!r}.")
    own = _SEARCHES[method].options
    unknown = sorted(set(options) - set(own) - set(_COMMON))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for the search method {method!r}; valid: {sorted(set(own) | set(_COMMON))}."
        )
    opts = {**_COMMON, **own, **options}
    for name in ("n", "teacher_steps", "batch_size", "grid", "substeps", "maxiter", "maxfev", "grid_size", "n_samples"):
        if name in opts:
            check_int(name, opts[name], 1)
    if opts["teacher_steps"] % 2:
        raise ValueError(
            f"`teacher_steps` must be even (the teacher's error estimate halves it), got {opts['teacher_steps']}."
        )
    return opts


def _solve_search_teacher(ctx: SearchContext, steps: int, keep: bool) -> None:
    """Solve the search teacher (or take it from the store) into ``ctx``; its cost counts unless reused."""
    conditions = None if ctx.conditions is None else json.dumps(ctx.conditions.state(), sort_keys=True)
    key = ("teacher", tuple(ctx.data.shape), ctx.opts["n"], ctx.seed, ctx.lo, ctx.hi, steps, keep, conditions)
    reused = key in ctx.store
    if not reused:
        ctx.store[key] = solve_teacher(
            ctx.model,
            key[1],
            ctx.opts["n"],
            ctx.seed,
            ctx.lo,
            ctx.hi,
            steps,
            keep_states=keep,
            batch_size=ctx.opts["batch_size"],
            conditions=ctx.conditions,
        )
    ctx.teacher, ctx.teacher_key = ctx.store[key], key
    ctx.denoiser = bind(ctx.model, ctx.teacher.cond)
    ctx.evaluations, ctx.teacher_cost = 0, 0 if reused else ctx.teacher.evaluations
    ctx.meta.update(teacher_error=ctx.teacher.error, teacher_evaluations=ctx.teacher.evaluations, teacher_reused=reused)


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
    cache: SearchCache | None = None,
    conditions=None,
    **options,
) -> SearchResult:
    """Search a sampling schedule for ``denoiser`` on ``data``, the deterministic ``sampler`` and budget ``nfe``.

    Args:
        method: one of :data:`METHODS` (see the module docstring; each is registered with
            :func:`register_search`).
        sigma_min, sigma_max: the range; None takes the model's own end (EDM's 0.002 / 80 without one).
        seed: the run's seed; the search batch uses :func:`crs.seeds.search_seed` of it.
        cache: a :class:`SearchCache` in which searches keep, per model, what later calls for the same denoiser
            and data reuse: the CRS methods' rate estimates (they depend on the measure, range and rate options,
            not on nfe) and the teacher solve of the search batch, GITS's jump costs. The cost of a reused part is
            counted once, in the call that made it (a reused teacher's in ``meta["teacher_evaluations"]``, with
            ``meta["teacher_reused"]``; GITS's jump costs in ``meta["jump_evaluations"]``, with
            ``meta["jumps_reused"]``). None: nothing is kept.
        options: ``n`` (search batch, 256), ``teacher_steps`` (256), ``batch_size``; and per method:
            ``crs``: ``measure`` ("data"; "solver" means the sampler's own solver measure), ``xi`` (1),
            ``grid_size``, ``n_samples``, ``feature_fn``; ``crs-select``: ``measures``, ``xis`` (the candidate
            set), ``grid_size``, ``n_samples``, ``feature_fn``; ``gits``: ``grid`` (100 intervals), ``substeps``
            (4 teacher steps per interval); ``optimal``/``optimal-free``: ``init`` ("all": started from every
            baseline, the best result kept, since the objective has several local minima; "best": from the best
            baseline on the search batch only; a baseline name; or sigmas), ``maxiter`` (200 per start),
            ``maxfev`` (Powell's objective evaluations per start, 2000), ``optimizer`` ("lbfgs", or "powell",
            derivative-free: the independent check); ``dmn``: ``order`` ("auto": the sampler's), ``trunc``,
            ``err_power``, ``lower_final``; ``ld3``: ``pairs`` (100), ``batch``, ``rounds``, ``lr``, ``patience``,
            ``radius`` ("auto": the original's); ``oss``: ``grid``, ``substeps``, ``aggregate`` ("median" per
            sample, as the original, or "joint"); ``ays-opt``: ``candidates`` (11), ``mc_samples``, ``sweeps``,
            ``patience`` (sweeps without a better teacher error before it stops).
        conditions: a conditional model's condition source (:class:`crs.conditioning.Labels`): search sample
            ``i`` gets the condition of its seed; the CRS methods' rates condition each x0 on its own label.

    Returns:
        A :class:`SearchResult`; its ``seconds`` is the wall-clock time of this whole call, from entry to return.

    Raises:
        ValueError: unknown method or option, a stochastic sampler, an nfe the sampler cannot spend, a bad range,
            a model that takes samples of another shape than the data's, a cache that is not a
            :class:`SearchCache`; before any work.
    """
    start = time.perf_counter()
    check_choice("method", method, METHODS, what="schedule search method")
    check_deterministic_sampler(sampler)
    steps = steps_for_nfe(sampler, nfe)
    opts = check_options(method, options)
    lo, hi = fit_model_range(denoiser, sigma_min, sigma_max)
    check_sigma_range(lo, hi)
    check_data_matches(denoiser, data.shape)
    check_conditions(denoiser, conditions)
    store = _model_store(cache, denoiser)
    ctx = SearchContext(denoiser, data, sampler, int(nfe), steps, lo, hi, search_seed(seed), opts, store, progress)
    ctx.model, ctx.conditions = denoiser, conditions
    entry = _SEARCHES[method]
    teacher_steps, keep = entry.prepare(ctx)
    _solve_search_teacher(ctx, teacher_steps, keep)
    sigmas, objective = entry.run(ctx)
    # network calls, as the teacher and the rates count them: a guided model's evaluation is two calls
    evaluations = ctx.teacher_cost + ctx.evaluations * guidance_evaluations(denoiser)
    if conditions is not None:  # what the schedule was searched for (a stored search is reused only for the same)
        ctx.meta.update(conditions=conditions.state(), guidance=guidance_of(denoiser))
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
        rate_evaluations=int(ctx.rate_evaluations),
        seconds=time.perf_counter() - start,
        seed=int(seed),
        options=stored_options(opts),
        meta=ctx.meta,
    )


def stored_options(opts: dict) -> dict:
    """The options a result stores (and is reused for): plain values, tuples as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items() if _jsonable(v)}


def _jsonable(v) -> bool:
    """Options stored with a result: plain values (a feature function is not; sigmas given as a tensor are)."""
    if isinstance(v, torch.Tensor):
        return False
    return isinstance(v, (str, int, float, bool, type(None), list, tuple))
