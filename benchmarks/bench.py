"""Measured costs and results for the documentation: each run prints its table and writes a record.

``python -m benchmarks.bench [rate|training|online|sampling|features|ratio|quality|coverage|guidance|datafree|...]``
from the repository root. Every run writes ``benchmarks/records/<name>.json`` (:mod:`benchmarks.records`: the
result with its command, commit, machine and date); ``python -m benchmarks.render`` turns the records into
``docs/results/``.

* ``rate``: every measure on the 2-D Gaussian mixture (exact denoiser) at 64 grid intervals and
  4096 samples, median wall time of a few repeats;
* ``training``: optimiser steps per second of each default model (MLP on the mixture, UNets on
  digits and MNIST);
* ``online``: the overhead of online CRS (re-estimating the velocity while fine-tuning) in percent
  of the training steps' own time;
* ``sampling``: milliseconds per network evaluation for a batch of samples, per default model;
* ``features``: images per second through the FID feature extractor;
* ``ratio``: CRS against the best baseline on the 2-D mixture with the exact denoiser, per sampler
  and nfe (paired bootstrap significance), the README's headline comparison.
* ``quality``: every baseline, CRS variant and schedule-search peer against the optimum, by teacher error
  (:mod:`crs.quality`) on held-out seeds, with a distribution metric and each method's search cost
  (:func:`quality_table`); ``--data digits`` / ``mnist16`` judge trained UNets (:data:`QUALITY_CASES`).
* ``coverage``: the empirical coverage of every bootstrap interval of :mod:`crs.intervals` on Gaussian data
  (:func:`coverage_table`).
* ``datafree``: the CRS schedule from a model's own samples against the one from its dataset, per measure, on
  the mixture or (``--data digits``) the digits UNet: schedule distance, teacher-error and FID ratios
  (:func:`datafree_table`).
* ``stability``: a run's evaluation (``--run``, e.g. ``runs/demo``) redone with other bootstrap seeds: how many
  verdicts change (:func:`verdict_stability`); not part of ``all``.

* ``demo``: ``make demo``'s stages timed from an empty run folder, with the run's summary table; not part of
  ``all``.

Each prints a Markdown table (:mod:`benchmarks.tables`) measured on this machine.
"""

from __future__ import annotations

import argparse
import math
import platform
import re
import statistics
import time

import numpy as np
import torch

import crs
from crs.seeds import reference_seed

__all__ = [
    "QUALITY_CASES",
    "QUALITY_METHODS",
    "peers_table",
    "quality_case",
    "coverage_cases",
    "coverage_table",
    "verdict_stability",
    "crs_ratio_table",
    "quality_table",
    "feature_throughput_table",
    "online_overhead_table",
    "rate_cost_table",
    "sampling_cost_table",
    "training_speed_table",
]

# (label, dataset, dataset kwargs, batch size): the default models of notebook 00
TRAINING_CASES = [
    ("MLP, 2-D mixture", "gmm", {}, 256),
    ("UNet (32, 64), digits 1x8x8", "digits", {}, 64),
    ("UNet (32, 64), MNIST 1x16x16", "mnist", {"resolution": 16}, 64),
    ("UNet (32, 64), MNIST 1x28x28", "mnist", {}, 64),
]


def rate_cost_table(
    measures=("fid", "data", "noise", "data+cosine"), grid_size: int = 64, n_samples: int = 4096, repeats: int = 5
) -> list[dict]:
    """Time :func:`crs.estimate_rate` per measure; one dict per measure with evaluations and seconds."""
    data = crs.make_dataset("gmm")
    rows = []
    for measure in measures:
        times = []
        for _ in range(repeats):
            rate = crs.estimate_rate(measure, data, denoiser=data.denoiser, grid_size=grid_size, n_samples=n_samples)
            times.append(rate.seconds)
        rows.append(
            dict(
                measure=measure,
                evaluations=rate.evaluations,
                feature_evaluations=rate.feature_evaluations,
                seconds=statistics.median(times),
                worst=max(times),
            )
        )
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
        rows.append(
            dict(
                model=label,
                params=sum(p.numel() for p in den.parameters()),
                batch=batch,
                steps_per_second=result.steps_per_second,
            )
        )
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
        cfg = TrainConfig(
            steps=steps,
            batch_size=batch,
            noise="crs-online",
            online_every=every,
            online_grid=grid,
            online_samples=samples,
            schedule=None,
        )
        result = train(build_denoiser(data.shape), data, cfg, progress=False)
        rows.append(
            dict(
                model=label,
                steps=steps,
                online_every=every,
                grid=grid,
                samples=samples,
                updates=result.online_updates,
                online_seconds=result.online_seconds,
                train_seconds=result.seconds - result.online_seconds,
                overhead=100 * result.online_overhead,
            )
        )
    return rows


def sampling_cost_table(batch: int = 256, steps: int = 10, cases=TRAINING_CASES) -> list[dict]:
    """Milliseconds per network evaluation (Euler, ``steps`` steps) for a batch of ``batch`` samples."""
    from crs.models import build_denoiser
    from crs.sampling import generate

    rows = []
    for label, name, kwargs, _ in cases:
        data = crs.make_dataset(name, **kwargs)
        den = build_denoiser(data.shape).eval()
        sigmas = crs.baseline_sigmas("karras", steps)
        generate(den, data.shape, batch, crs.baseline_sigmas("karras", 2), sampler="euler", batch_size=batch)  # warm-up
        start = time.perf_counter()
        generate(den, data.shape, batch, sigmas, sampler="euler", batch_size=batch)
        ms = 1000 * (time.perf_counter() - start) / steps
        rows.append(dict(model=label, batch=batch, ms_per_nfe=ms, samples_nfe_per_s=batch * 1000 / ms))
    return rows


def feature_throughput_table(
    n: int = 512, cases=(("digits", {}), ("mnist", {"resolution": 16}), ("mnist", {}))
) -> list[dict]:
    """Images per second through the offline FID feature extractor (EfficientNet-Lite0 at 64 px)."""
    from crs.metrics import make_feature_extractor

    fx = make_feature_extractor("efficientnet-lite0")
    rows = []
    for name, kwargs in cases:
        data = crs.make_dataset(name, **kwargs)
        x = data.sample(n, torch.Generator().manual_seed(0))
        fx(x[:64])
        start = time.perf_counter()
        fx(x)
        rows.append(
            dict(
                data=f"{name} {'x'.join(map(str, data.shape))}",
                features=fx.name,
                images_per_s=n / (time.perf_counter() - start),
            )
        )
    return rows


# what the quality benchmark compares: label -> (search method, options); baselines are added by name
QUALITY_METHODS = {
    "crs (data)": ("crs", {"measure": "data"}),
    "crs (noise)": ("crs", {"measure": "noise"}),
    "crs (solver)": ("crs", {"measure": "solver"}),
    "crs-select": ("crs-select", {}),
    "gits": ("gits", {}),
    "optimal": ("optimal", {}),
    "optimal-free": ("optimal-free", {}),
    "dmn": ("dmn", {}),
    "ld3": ("ld3", {}),
    "oss": ("oss", {}),
    "ays-opt": ("ays-opt", {}),
}


# the quality benchmark's data and models: the mixture with its exact denoiser, and the small UNets (trained with
# the settings of the demo's base model, whose weights they are for `digits`), searched and judged at sizes that
# fit the network's cost (the UNets' search and judging batches are smaller, and the optimiser check is left out)
_UNET_SIZES = dict(n_search=64, n_eval=512, teacher_steps=256, check_optimizer=False)
_UNET_OPTIONS = {
    "optimal": {"init": "best", "maxiter": 40},
    "optimal-free": {"init": "best", "maxiter": 40},
    "crs-select": {"grid_size": 32, "n_samples": 256},
    "crs": {"grid_size": 32, "n_samples": 256},
    "gits": {"grid": 60},
    "ld3": {"pairs": 64},  # the whole search batch (LD3's own: 100 pairs)
}
QUALITY_CASES = {
    "gmm": dict(dataset="gmm", dataset_kwargs={}),
    "digits": dict(
        dataset="digits",
        dataset_kwargs={},
        train=dict(steps=1500, batch_size=64, lr=1e-3, ema_decay=0.999),
        sizes=_UNET_SIZES,
        options=_UNET_OPTIONS,
    ),
    "mnist16": dict(
        dataset="mnist",
        dataset_kwargs={"resolution": 16},
        train=dict(steps=3000, batch_size=64, lr=1e-3, ema_decay=0.999),
        sizes=_UNET_SIZES,
        options=_UNET_OPTIONS,
    ),
    # the class-conditional digits UNet (label dropout 0.1; the guidance benchmark's, trained into the same folder),
    # searched and judged for the guided ODE at the scale the head-to-head is given, labels in the data's shares
    "digits-cond": dict(
        dataset="digits",
        dataset_kwargs={},
        build={"num_classes": 10},
        train=dict(steps=1500, batch_size=64, lr=1e-3, ema_decay=0.999),
        sizes=_UNET_SIZES,
        options=_UNET_OPTIONS,
    ),
    # a rectified-flow UNet on the digits (velocity prediction, SD3's logit-normal training times), as
    # params/digits-flow.yaml trains it; its own range (sigma up to 999) and the flow models' shipped schedules
    "digits-flow": dict(
        dataset="digits",
        dataset_kwargs={},
        build={"precond": "flow", "sigma_max": 999.0},
        train=dict(steps=1500, batch_size=64, lr=1e-3, ema_decay=0.999, noise="flow"),
        sizes=dict(_UNET_SIZES, baselines=crs.schedules.FLOW_BASELINES + crs.BASELINES),
        options=_UNET_OPTIONS,
    ),
}


def quality_case(name: str, model: str | None = None, device: str = "cpu", cache="runs/bench/models", log=print):
    """The data, denoiser and benchmark settings of :data:`QUALITY_CASES` ``name``.

    ``model``: a saved model to judge (e.g. ``runs/demo/models/base``, the demo's UNet); by default the case's
    UNet is trained once with its fixed settings and seed 0 and kept under ``cache/<name>`` for later runs.
    Returns ``(data, denoiser, kwargs of quality_table)``; the reference samples of image data are all of its
    images (``split="all"``).
    """
    from pathlib import Path

    from crs.args import check_choice
    from crs.models import build_denoiser, load_denoiser
    from crs.training import TrainConfig, train

    check_choice("data", name, QUALITY_CASES, what="quality benchmark case")
    case = QUALITY_CASES[name]
    data = crs.make_dataset(case["dataset"], **case["dataset_kwargs"])
    kwargs = dict(case.get("sizes", {}), options=case.get("options", {}))
    if "train" not in case:
        return data, data.denoiser, kwargs
    kwargs["reference"] = crs.make_dataset(case["dataset"], split="all", **case["dataset_kwargs"]).images
    folder = Path(model) if model else Path(cache) / name
    if model is None and not folder.is_dir():
        log(f"training the {name} UNet ({case['train']['steps']} steps) into {folder}")
        den = build_denoiser(data.shape, seed=0, **case.get("build", {}))
        result = train(den, data, TrainConfig(seed=0, **case["train"]), progress=True, desc=name)
        result.ema.save_pretrained(folder)
    return data, load_denoiser(str(folder), data, device=device), kwargs


TEACHER_FREE = ("crs", "dmn")  # search methods that need no teacher (it only scores their schedules)


def standalone_cost(found) -> int:
    """Network evaluations per search sample of one search on its own: with the parts it took from a shared cache
    (the search teacher, GITS's jump costs) counted as if it had made them."""
    meta = found.meta
    if found.method in TEACHER_FREE:  # the teacher only scores them; they cost nothing beyond a rate estimate
        return int(found.evaluations)
    total = found.evaluations + meta["teacher_evaluations"] * meta["teacher_reused"]
    return int(total + meta.get("jump_evaluations", 0) * meta.get("jumps_reused", False))


def quality_table(
    denoiser=None,
    data=None,
    nfe=None,
    n_search: int = 256,
    n_eval: int = 1024,
    n_boot: int = 200,
    seed: int = 0,
    check_optimizer: bool = True,
    progress: bool = True,
    teacher_steps: int = 512,
    options: dict | None = None,
    reference=None,
    on_cell=None,
    conditions=None,
    baselines=None,
) -> dict:
    """Schedules against the optimum, per sampler and nfe, by teacher error on held-out seeds.

    Every schedule is searched on the search batch (seeds :func:`crs.seeds.search_seed`) and judged on
    ``n_eval`` other samples (seeds ``seed + i``), against one teacher solved for them. Per cell: the teacher
    error of every baseline, CRS variant and peer (:data:`QUALITY_METHODS`), its ratio to ``optimal``'s, the
    Frechet distance of the endpoints (identity features) to fresh samples of the data with a 95 % percentile
    bootstrap interval (analytic data only), and the search cost. With ``check_optimizer`` ``optimal`` is
    repeated with the derivative-free Powell method (at most 3000 objective evaluations from each start): the
    agreement of two optimisers of the same objective.

    Args:
        denoiser, data: default the 2-D Gaussian mixture with its exact denoiser.
        nfe: ``{sampler: [budgets]}``; default euler and dpmpp_2m at 5, 10, 20, heun at 5, 11, 21.
        teacher_steps: Heun steps of the judging teacher.
        options: search options, common (e.g. ``teacher_steps``) and under a method's name, as stage 04's
            ``search_options``; ``n`` is ``n_search``.
        reference: samples of the data for the distribution metric (default: fresh draws of analytic data;
            none for other data unless given).
        on_cell: called with the result so far after every cell (to save partial results).
        conditions: a conditional model's condition source (:class:`crs.conditioning.Labels`): every sample, judged
            or searched, gets the condition of its seed.
        baselines: the fixed schedules judged (default :data:`crs.BASELINES`).
    """
    from tqdm import tqdm

    from crs.metrics import feature_scores
    from crs.protocols import AnalyticDataset
    from crs.quality import endpoints, solve_teacher
    from crs.sampling import steps_for_nfe
    from crs.search import METHODS, SearchCache, search_kind, search_schedule

    if data is None:
        data = crs.make_dataset("gmm")
        denoiser = data.denoiser
    nfe = nfe or {"euler": [5, 10, 20], "heun": [5, 11, 21], "dpmpp_2m": [5, 10, 20]}
    baselines = tuple(baselines or crs.BASELINES)
    options = dict(options or {})
    common = {k: v for k, v in options.items() if k not in METHODS}
    lo, hi = crs.schedules.fit_model_range(denoiser)
    start = time.perf_counter()
    teacher = solve_teacher(denoiser, data.shape, n_eval, seed, lo, hi, steps=teacher_steps, conditions=conditions)
    teacher_seconds = time.perf_counter() - start
    if reference is None and isinstance(data, AnalyticDataset):
        reference = data.sample(4 * n_eval, torch.Generator().manual_seed(reference_seed(seed)))
    if reference is not None:
        reference = torch.as_tensor(reference).flatten(1).double().numpy()
    cache = SearchCache()  # rates and the search teacher serve every search; costs are reported per search alone
    idx = crs.metrics.bootstrap_indices(n_eval, n_boot, seed)

    def judge(sampler, sigmas):
        x = endpoints(denoiser, sampler, sigmas, teacher.x_T, cond=teacher.cond)
        value = float((x.double() - teacher.endpoint.double()).pow(2).mean().sqrt())
        out = {"teacher_error": value}
        if reference is not None:
            fid, boot = feature_scores(x.flatten(1).double().numpy(), reference, idx, which=["fid"])["fid"]
            out.update(fid=fid, fid_low=float(np.percentile(boot, 2.5)), fid_high=float(np.percentile(boot, 97.5)))
        return out

    cells = []
    result = {
        "data": getattr(data, "name", "data"),
        "teacher_error": teacher.error,
        "teacher_steps": teacher_steps,
        "teacher_seconds": teacher_seconds,
        "n_search": n_search,
        "n_eval": n_eval,
        "options": {k: v for k, v in options.items() if k != "n"},
        "cells": cells,
    }
    # the smallest budgets of every sampler first, so that a run cut short has covered every sampler
    todo = [(s, b[i]) for i in range(max(map(len, nfe.values()))) for s, b in nfe.items() if i < len(b)]
    for sampler, budget in tqdm(todo, desc="quality", disable=not progress):
        steps = steps_for_nfe(sampler, budget)
        rows = {}
        for b in baselines:
            rows[b] = dict(kind="baseline", **judge(sampler, crs.baseline_sigmas(b, steps, lo, hi)))
        for label, (method, method_options) in QUALITY_METHODS.items():
            own = {**common, **options.get(method, {}), **method_options, "n": n_search}
            found = search_schedule(
                method, denoiser, data, sampler, budget, lo, hi, seed=seed, cache=cache, conditions=conditions, **own
            )
            rows[label] = dict(
                kind=search_kind(method),
                search_objective=found.objective,
                # the cost of this search alone: a teacher reused from an earlier search counts here too
                evaluations=standalone_cost(found),
                rate_evaluations=found.rate_evaluations,
                seconds=found.seconds,
                chosen=f"{found.meta.get('measure')} xi={found.meta.get('xi')}" if method == "crs-select" else "",
                init=found.meta.get("init"),
                sigmas=found.sigmas,
                **judge(sampler, found.sigmas),
            )
        if check_optimizer:
            powell = search_schedule(
                "optimal",
                denoiser,
                data,
                sampler,
                budget,
                lo,
                hi,
                seed=seed,
                cache=cache,
                conditions=conditions,
                **{**common, "n": n_search, "optimizer": "powell", "maxfev": 3000},
            )
            rows["optimal (powell)"] = dict(
                kind="check", search_objective=powell.objective, evaluations=powell.evaluations, seconds=powell.seconds
            )
        best = rows["optimal"]["teacher_error"] if "optimal" in rows else None  # the unit of `ratio`
        for row in rows.values():
            if "teacher_error" in row and best is not None:
                row["ratio"] = row["teacher_error"] / best
        cells.append(dict(sampler=sampler, nfe=budget, rows=rows))
        if on_cell is not None:
            on_cell(result)
    return result


# the head-to-head's budgets for a user without a teacher and with one (issue 25's targets)
NO_TEACHER = 0
TEACHER_BUDGET = 10_000


def peers_table(
    case: str = "gmm",
    model: str | None = None,
    seed: int = 0,
    nfe=None,
    progress: bool = True,
    guidance: float | None = None,
) -> dict:
    """Every method head to head on one model (:func:`quality_table` without the optimiser check): each row's
    teacher error as a ratio to the best schedule *anyone* found in its cell (``ratio_best``, beside ``ratio`` to
    ``optimal``'s), the cell's winner, and each row's search cost per sample on its own (``evaluations``; 0 for a
    fixed baseline). The searches run on the search batch and are judged on other seeds. A class-conditional
    model is searched and judged with classifier-free ``guidance`` (1: as it is), labels in the data's shares."""
    from crs.conditioning import Guided, Labels, conditioning_of

    data, denoiser, kwargs = quality_case(case, model)
    kwargs["check_optimizer"] = False
    if conditioning_of(denoiser) is not None:
        denoiser = Guided(denoiser, 1.0 if guidance is None else guidance)
        kwargs["conditions"] = Labels.from_data(data)
    elif guidance is not None:
        raise ValueError(f"guidance={guidance} needs a class-conditional case (digits-cond); {case!r} is not one.")
    result = quality_table(denoiser, data, nfe=nfe, seed=seed, progress=progress, **kwargs)
    for cell in result["cells"]:
        judged = {k: r for k, r in cell["rows"].items() if "teacher_error" in r}
        best = min(judged, key=lambda k: judged[k]["teacher_error"])
        for row in judged.values():
            row["ratio_best"] = row["teacher_error"] / judged[best]["teacher_error"]
            row.setdefault("evaluations", 0)
        cell["best"] = best
    budgets = {"no_teacher": NO_TEACHER, "teacher": TEACHER_BUDGET}
    return dict(result, case=case, model=model or case, guidance=guidance, budgets=budgets)


def coverage_cases(n: int = 256, dim: int = 16, mc_draws: int = 20000, only=None) -> dict:
    """The coverage study's experiments on Gaussian data (:func:`crs.intervals.coverage`): for each, a sample
    draw, a statistic of chosen rows, and the target's exact expression or the size of its Monte Carlo estimate.

    * ``fid``: FID of ``n`` draws of N(0, I) in ``dim`` dimensions against the exact statistics of
      N(0.3, 1.5 I); target: the estimator's expected value at ``n`` (Monte Carlo, 20,000 draws; FID is biased
      upwards at finite ``n``). ``fid (4-d)``: the same in 4 dimensions, where its bias is small.
    * ``fid difference``: paired FIDs of two schedules (the second sample is ``0.9 x + 0.1 e`` of the first,
      fresh noise ``e``) against the same reference; target: the expected difference at ``n``.
    * ``nll``: the mean negative log-density under N(0, I) of draws of N(0.2, 1.2 I), a skewed per-sample
      quantity like the exact NLL; target exact: ``(dim log(2 pi) + dim (1.44 + 0.04)) / 2``.
    * ``precision``: the share of draws inside a fixed ball of radius ``sqrt(dim)`` around the origin (the
      k-NN manifold's indicator, with the manifold held fixed); target: its chi-square probability.

    The suite's own metric code (``scores``: value and replicates together, as ``crs.metrics`` computes them),
    ``n`` draws of N(0, I) against a fixed reference set of ``n`` draws of N(0.3, 1.5 I):

    * ``fid (suite)``, ``fid difference (suite)``: :func:`crs.distances.fid_bootstrap` on the cases above;
      ``fid linear (suite)``, ``fid linear difference (suite)``: the same with its linearised replicates
      (``method="linear"``, what large feature sets get);
    * ``kid (suite)``: :func:`crs.metrics.kid_bootstrap`; target exact: for x, x' ~ N(0, I) the kernel
      ``(x.y/d + 1)^3`` has ``E k(x, x') = 1 + 3/d`` and ``E k(x, r) = 1 + 3 |r|^2 / d^2`` (odd moments vanish);
    * ``precision (suite)``: the k-NN (k = 3) precision; target: the manifold's probability under N(0, I)
      (Monte Carlo, 50 x ``mc_draws`` draws);
    * ``recall (suite)``: :func:`crs.metrics.recall_bootstrap`; target: its expected value at ``n`` (Monte
      Carlo, ``mc_draws / 5`` sets);
    * ``sliced_wasserstein (suite)``, ``mode_tv (suite)``: :func:`crs.metrics.analytic_scores` on the 2-D
      mixture, ``n`` exact samples scaled by 1.15 against ``n`` fixed exact ones; targets: expected values at
      ``n`` (Monte Carlo, ``mc_draws / 5`` sets).

    ``only``: the case names wanted (a predicate); the targets of the others are not computed.
    """
    from scipy.stats import chi2

    wanted = only or (lambda name: True)

    from crs.distances import frechet_from_traces, trace_sqrt_psd

    def fid(x):
        d = x.shape[1]
        mu, c = x.mean(0), np.cov(x, rowvar=False)
        mu_r, cov_r, root = np.full(d, 0.3), 1.5 * np.eye(d), np.sqrt(1.5) * np.eye(d)
        return frechet_from_traces(
            ((mu - mu_r) ** 2).sum(), np.trace(c), np.trace(cov_r), trace_sqrt_psd(root @ c @ root)
        )

    def draw_pair(rng):
        x = rng.standard_normal((n, dim))
        return np.stack([x, 0.9 * x + 0.1 * rng.standard_normal((n, dim))])

    mc = np.random.default_rng(12345)
    fid_target = diff_target = small = math.nan
    fid_cases = ("fid", "fid difference", "fid (suite)", "fid difference (suite)")
    if any(wanted(c) for c in fid_cases + ("fid linear (suite)", "fid linear difference (suite)")):
        values = np.array([(fid(p[0]), fid(p[0]) - fid(p[1])) for p in (draw_pair(mc) for _ in range(mc_draws))])
        fid_target, diff_target = (float(v) for v in values.mean(0))
    else:  # the same draws, so that the 4-d target does not depend on `only`
        for _ in range(mc_draws):
            draw_pair(mc)
    if wanted("fid (4-d)"):
        small = float(np.mean([fid(mc.standard_normal((n, 4))) for _ in range(mc_draws)]))
    cases = {
        "fid (4-d)": dict(
            draw=lambda rng: rng.standard_normal((n, 4)),
            statistic=lambda x, rows: fid(x[rows]),
            target=small,
        ),
        "fid": dict(
            draw=lambda rng: rng.standard_normal((n, dim)),
            statistic=lambda x, rows: fid(x[rows]),
            target=fid_target,
        ),
        "fid difference": dict(
            draw=draw_pair,
            statistic=lambda p, rows: fid(p[0][rows]) - fid(p[1][rows]),
            size=lambda p: p.shape[1],
            target=diff_target,
        ),
        "nll": dict(
            draw=lambda rng: (
                0.5 * ((0.2 + 1.2 * rng.standard_normal((n, dim))) ** 2).sum(1) + 0.5 * dim * np.log(2 * np.pi)
            ),
            statistic=lambda v, rows: float(v[rows].mean()),
            target=0.5 * dim * np.log(2 * np.pi) + 0.5 * dim * (1.44 + 0.04),
        ),
        "precision": dict(
            draw=lambda rng: ((rng.standard_normal((n, dim)) ** 2).sum(1) <= dim).astype(np.float64),
            statistic=lambda v, rows: float(v[rows].mean()),
            target=float(chi2.cdf(dim, dim)),
        ),
    }
    cases.update(_suite_coverage_cases(n, dim, mc_draws, fid_target, diff_target, draw_pair, wanted))
    return {name: case for name, case in cases.items() if wanted(name)}


def _ragged(fn):
    """``scores`` for :func:`crs.intervals.coverage` from a function of a (B, n) index matrix: a jackknife's
    rows (of unequal length) are scored one by one."""

    def scores(sample, rows):
        if isinstance(rows, np.ndarray) and rows.ndim == 2:
            return fn(sample, rows)
        return fn(sample, rows[0][None])[0], np.array([fn(sample, np.asarray(r)[None])[1][0] for r in rows])

    return scores


def _suite_coverage_cases(
    n: int, dim: int, mc_draws: int, fid_target: float, diff_target: float, draw_pair, wanted
) -> dict:
    """The coverage cases that run the suite's own metric code (see :func:`coverage_cases`)."""
    import torch

    from crs.data import make_dataset
    from crs.distances import fid_bootstrap
    from crs.metrics import analytic_scores, feature_scores, kid_bootstrap, recall_bootstrap

    mu_r, cov_r = np.full(dim, 0.3), 1.5 * np.eye(dim)
    ref = 0.3 + np.sqrt(1.5) * np.random.default_rng(777).standard_normal((n, dim))  # the fixed reference set
    k_rr = (ref @ ref.T / dim + 1) ** 3
    kid_target = (
        1 + 3 / dim + (k_rr.sum() - np.trace(k_rr)) / (n * (n - 1)) - 2 * np.mean(1 + 3 * (ref**2).sum(1) / dim**2)
    )
    empty = np.zeros((0, n), int)

    def precision(x, idx):
        return feature_scores(x, ref, idx, which=["precision"], kid=False)["precision"]

    mc = np.random.default_rng(4242)
    # a target left out still draws its numbers, so that every target is the same with or without `only`
    shares = [
        precision(x, empty)[0]
        for x in (mc.standard_normal((10000, dim)) for _ in range(max(1, mc_draws // 200)))
        if wanted("precision (suite)")
    ]
    recalls = [
        recall_bootstrap(x, ref, empty)[0]
        for x in (mc.standard_normal((n, dim)) for _ in range(mc_draws // 5))
        if wanted("recall (suite)")
    ]
    precision_target = float(np.mean(shares)) if shares else math.nan
    recall_target = float(np.mean(recalls)) if recalls else math.nan

    gmm = make_dataset("gmm")
    gmm_ref = gmm.sample(n, torch.Generator().manual_seed(778))

    def gmm_draw(rng):
        return 1.15 * gmm.sample(n, torch.Generator().manual_seed(int(rng.integers(2**31))))

    def analytic(metric):
        return lambda x, idx: analytic_scores(x, gmm_ref, gmm, idx, seed=0, which=[metric])[metric]

    analytic_targets = {}
    for metric in ("sliced_wasserstein", "mode_tv"):
        seeds = [int(mc.integers(2**31)) for _ in range(mc_draws // 5)]  # what gmm_draw(mc) draws
        if wanted(f"{metric} (suite)"):
            analytic_targets[metric] = float(
                np.mean(
                    [analytic(metric)(1.15 * gmm.sample(n, torch.Generator().manual_seed(s)), empty)[0] for s in seeds]
                )
            )
    gauss = lambda rng: rng.standard_normal((n, dim))  # noqa: E731
    cases = {
        "fid (suite)": dict(draw=gauss, scores=lambda x, idx: fid_bootstrap(x, mu_r, cov_r, idx), target=fid_target),
        "fid difference (suite)": dict(
            draw=draw_pair,
            scores=lambda p, idx: tuple(
                a - b for a, b in zip(fid_bootstrap(p[0], mu_r, cov_r, idx), fid_bootstrap(p[1], mu_r, cov_r, idx))
            ),
            size=lambda p: p.shape[1],
            target=diff_target,
        ),
        "fid linear (suite)": dict(
            draw=gauss, scores=lambda x, idx: fid_bootstrap(x, mu_r, cov_r, idx, method="linear"), target=fid_target
        ),
        "fid linear difference (suite)": dict(
            draw=draw_pair,
            scores=lambda p, idx: tuple(
                a - b
                for a, b in zip(
                    fid_bootstrap(p[0], mu_r, cov_r, idx, method="linear"),
                    fid_bootstrap(p[1], mu_r, cov_r, idx, method="linear"),
                )
            ),
            size=lambda p: p.shape[1],
            target=diff_target,
        ),
        "kid (suite)": dict(draw=gauss, scores=lambda x, idx: kid_bootstrap(x, ref, idx), target=kid_target),
        "precision (suite)": dict(draw=gauss, scores=_ragged(precision), target=precision_target),
        "recall (suite)": dict(draw=gauss, scores=lambda x, idx: recall_bootstrap(x, ref, idx), target=recall_target),
    }
    for metric, target in analytic_targets.items():
        cases[f"{metric} (suite)"] = dict(draw=gmm_draw, scores=_ragged(analytic(metric)), target=target)
    return cases


def coverage_table(
    repeats: int = 200,
    n_boot: int = 1000,
    n: int = 256,
    seed: int = 0,
    progress: bool = True,
    cases=None,
    dim: int = 16,
):
    """Empirical coverage of the nominal 95 % intervals of every method on :func:`coverage_cases` of ``n`` draws in
    ``dim`` dimensions (those whose name contains one of ``cases``, when given)."""
    from crs.intervals import coverage

    rows = []
    for name, case in coverage_cases(n, dim, only=lambda c: not cases or any(x in c for x in cases)).items():
        size = case.get("size", len)
        result = coverage(
            case["draw"],
            case.get("statistic"),
            size,
            case["target"],
            repeats,
            n_boot,
            seed=seed,
            progress=progress,
            scores=case.get("scores"),
        )
        rows.append(dict(case=name, target=case["target"], **result))
    return rows


def crs_ratio_table(
    n_samples: int = 2000, n_boot: int = 200, measures=("data", "noise"), xi: float = 1.0, seed: int = 0
):
    """CRS against the best baseline on the 2-D mixture with its exact denoiser.

    For each measure a CRS schedule (64-interval rate, 4096 samples, ``xi``), then every sampler at
    nfe 5, 10, 20 (Heun and EDM: 5, 11, 21, the nearest they can spend), 6 baselines, ``n_samples``
    paired samples, scored by NLL and FID (identity features) with a paired bootstrap.

    Returns:
        The comparisons (dicts as in ``metrics.json``), each with the ``measure`` added.
    """
    import tempfile

    from crs.metrics import make_feature_extractor
    from crs.optimize import schedule_functions, schedule_kinds
    from crs.run.jobs import evaluate_grid, sample_grid

    data = crs.make_dataset("gmm")
    nfe = {"euler": [5, 10, 20], "dpmpp_2m": [5, 10, 20], "heun": [5, 11, 21], "edm": [5, 11, 21]}
    reference = data.sample(n_samples, torch.Generator().manual_seed(reference_seed(seed)))
    out = []
    for measure in measures:
        rate = crs.estimate_rate(measure, data, denoiser=data.denoiser, seed=seed)
        schedule = crs.optimize_schedule(rate, xi=xi)
        with tempfile.TemporaryDirectory() as tmp:
            index = sample_grid(
                {"analytic": data.denoiser},
                schedule_functions(schedule),
                list(nfe),
                nfe,
                n_samples,
                tmp,
                kinds=schedule_kinds(),
                seed=seed,
                dtype=torch.float64,
            )
            metrics = evaluate_grid(
                index, reference, make_feature_extractor("identity"), data=data, n_boot=n_boot, seed=seed
            )
        out += [dict(c, measure=measure) for c in metrics["comparisons"] if c["metric"] in ("nll", "fid_identity")]
    return out


def verdict_stability(run_dir, seeds=(1, 2), progress: bool = True) -> dict:
    """A run's evaluation redone with other bootstrap seeds: which verdicts change.

    The run's ``metrics.json`` (bootstrap seed: the run's ``seed``) is compared with :func:`crs.run.jobs.evaluate_grid`
    on the same samples, reference, teachers and parameters (read from the executed notebook 05), with each of
    ``seeds`` as the bootstrap seed; features and teacher solutions are computed once. A verdict is
    better / worse / not significant, for every CRS-against-baselines comparison and every CRS-trained-against-control
    comparison. (For analytic data the sliced Wasserstein directions follow the seed too.)

    Each verdict carries its edge flag (:func:`crs.metrics.paired_interval`): a verdict marked at the edge in
    either run may change; one marked in neither should not.

    Returns:
        ``{"comparisons": count, "model_comparisons": count, "changed": [(seed, kind, key, before, after), ...],
        "undecided": the changes of verdicts at the edge in neither run, "edges": {"run" or seed: count of edge
        verdicts}, "seeds": seeds, "n_boot"}``; ``before`` and ``after`` are ``(verdict, edge)``.
    """
    import hashlib
    import json
    from pathlib import Path

    from crs.io import read_json
    from crs.metrics import FeatureExtractor, make_feature_extractor
    from crs.run.experiment import notebook_defaults
    from crs.run.jobs import evaluate_grid, teacher_endpoints

    run_dir = Path(run_dir)
    executed = run_dir / "05_evaluation.ipynb"
    if not executed.is_file():
        raise ValueError(f"No executed evaluation notebook in {str(run_dir)!r}: run the evaluation stage first.")
    params = notebook_defaults("evaluation")
    params.update(json.loads(executed.read_text())["metadata"]["papermill"]["parameters"])
    metrics = read_json(run_dir / "metrics.json", "metrics of the run")
    doc = read_json(run_dir / "samples" / "index.json", "sample index")
    data = crs.make_dataset(params["dataset"], **params["dataset_kwargs"])
    extractor = make_feature_extractor(params["features"], data.shape, "cpu")
    if params["reference"] != "test":
        reference = crs.metrics.reference_statistics(params["reference"], extractor)
    elif isinstance(data, crs.protocols.AnalyticDataset):
        reference = data.sample(params["n_reference"], torch.Generator().manual_seed(reference_seed(params["seed"])))
    else:
        reference = crs.data.held_out(params["dataset"], params["dataset_kwargs"]).images
    cache = {}

    def features(x):
        key = hashlib.sha256(x.detach().cpu().numpy().tobytes()).hexdigest()
        if key not in cache:
            cache[key] = extractor.fn(x)
        return cache[key]

    cached = FeatureExtractor(extractor.name, features, extractor.images)
    teachers = None
    if "teacher_error" in params["metrics"]:
        teachers, _ = teacher_endpoints(doc, run_dir, data, "cpu", params["teacher_steps"])

    def verdicts(result):
        def verdict(c):
            return (("better" if c["crs_better"] else "worse") if c["significant"] else "n.s.", bool(c.get("edge")))

        return {
            ("comparison", c["model"], c["sampler"], c["nfe"], c["metric"], c["crs"]): verdict(c)
            for c in result["comparisons"]
        } | {
            ("model comparison", c["schedule"], c["sampler"], c["nfe"], c["metric"]): verdict(c)
            for c in result.get("model_comparisons", [])
        }

    entries = [  # the index's paths are relative to the run folder (notebook 05 runs there)
        {k: (str(run_dir / v) if k in ("path", "features_path") and v else v) for k, v in e.items()}
        for e in doc["entries"]
    ]
    before = verdicts(metrics)
    changed, edges = [], {"run": sum(e for _, e in before.values())}
    for seed in seeds:
        if progress:
            print(f"bootstrap seed {seed} ...", flush=True)
        result = evaluate_grid(
            entries,
            reference,
            cached,
            data=data,
            n_boot=params["n_boot"],
            seed=seed,
            k=params["k"],
            which=params["metrics"],
            teachers=teachers,
            escalate=params["escalate"],
        )
        after = verdicts(result)
        edges[seed] = sum(e for _, e in after.values())
        changed += [
            (seed, key[0], key[1:], before[key], after[key]) for key in before if after[key][0] != before[key][0]
        ]
    return {
        "comparisons": sum(k[0] == "comparison" for k in before),
        "model_comparisons": sum(k[0] == "model comparison" for k in before),
        "changed": changed,
        "undecided": [c for c in changed if not (c[3][1] or c[4][1])],
        "edges": edges,
        "seeds": list(seeds),
        "n_boot": params["n_boot"],
    }


def demo_timings(params_file: str = "params/demo.yaml", run_dir: str = "runs/bench/demo") -> dict:
    """Run the demo experiment (or another params file: ``digits-cond`` runs ``params/digits-cond.yaml``) from an
    empty ``run_dir`` (refused if it exists) through the batch runner's stages, as ``make demo`` does (without the
    report and the site): each stage's seconds and the run's summary table."""
    from pathlib import Path

    from crs.io import read_json
    from crs.run.experiment import load_params, run_experiment
    from crs.run.report import summary_markdown

    if Path(run_dir).exists():
        raise ValueError(f"The demo benchmark times a run from nothing: {run_dir!r} exists, remove it first.")
    params = dict(load_params(params_file), run_dir=run_dir)
    records = run_experiment(params, progress=False)
    metrics = read_json(Path(run_dir) / "metrics.json", "metrics of the run")
    out = {"stages": {r["stage"]: r["seconds"] for r in records}, "summary": summary_markdown(metrics)}
    if (Path(run_dir) / "rate_dataset.json").is_file():  # a data-free rate with the dataset's beside it
        free, on_data = (crs.RateEstimate.load(Path(run_dir) / f) for f in ("rate.json", "rate_dataset.json"))
        out["data_free"] = dict(
            free.meta["data_free"],
            gap_10_steps=crs.schedules.log_gap(*(crs.optimize_schedule(r).discretize(10) for r in (free, on_data))),
        )
    return out


GUIDANCE_BASELINES = ("karras", "exponential", "vp", "cosine", "kl_optimal", "beta")
GUIDANCE_NFE = {"euler": [5, 10, 20], "heun": [5, 11, 21], "dpmpp_2m": [5, 10, 20]}


def _ratio_interval(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    """RMS(a) / RMS(b) of paired per-sample errors and its 95 % percentile bootstrap interval (samples resampled)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    boot = np.sqrt((a[idx] ** 2).mean(1) / (b[idx] ** 2).mean(1))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(np.sqrt((a**2).mean() / (b**2).mean())), float(lo), float(hi)


GUIDANCE_CASES = {
    # the labelled ring: two classes of alternate components, exact conditional denoisers
    "ring": dict(n=512, teacher_steps=1024, rate={}, optimal=dict(n=256, init="best", maxiter=50), peers=False),
    # the class-conditional digits UNet (label dropout 0.1): the base model of params/digits-cond.yaml
    "digits": dict(
        n=256,
        teacher_steps=256,
        rate=dict(grid_size=32, n_samples=1024),
        optimal=dict(n=64, init="best", maxiter=40),
        peers=True,
        nfe={"euler": [5, 10], "heun": [5, 11], "dpmpp_2m": [5, 10]},
        train=dict(steps=1500, batch_size=64, lr=1e-3, ema_decay=0.999),
    ),
}
GUIDANCE_PEERS = {  # searched per cell for the guided ODE (the digits case), at the quality benchmark's UNet sizes
    "crs-select": {"grid_size": 32, "n_samples": 256, "n": 64, "teacher_steps": 256},
    "gits": {"grid": 60, "n": 64, "teacher_steps": 256},
}


def guidance_model(case: str, model: str | None = None, cache="runs/bench/models", log=print):
    """The data and conditional denoiser of :data:`GUIDANCE_CASES` ``case``: the ring's exact one, or the digits'
    class-conditional UNet (``model``, e.g. ``runs/bench/digits-cond/models/base``; by default trained once with
    the case's settings, seed 0, into ``cache/digits-cond``)."""
    from pathlib import Path

    from crs.analytic import gmm
    from crs.args import check_choice
    from crs.models import build_denoiser, load_denoiser
    from crs.training import TrainConfig, train

    check_choice("case", case, GUIDANCE_CASES, what="guidance benchmark case")
    if case == "ring":
        data = gmm(labels=[0, 1] * 4)
        return data, data.denoiser
    data = crs.make_dataset("digits")
    folder = Path(model) if model else Path(cache) / "digits-cond"
    if model is None and not folder.is_dir():
        log(f"training the class-conditional digits UNet into {folder}")
        den = build_denoiser(data.shape, seed=0, num_classes=data.num_classes)
        result = train(den, data, TrainConfig(seed=0, **GUIDANCE_CASES[case]["train"]), progress=True, desc=case)
        result.ema.save_pretrained(folder)
    return data, load_denoiser(str(folder), data)


def guidance_table(
    scales=(1.0, 2.0, 4.0),
    case: str = "ring",
    model: str | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    nfe=None,
    optimal: bool = True,
    figure_steps: int = 10,
    n: int | None = None,
) -> dict:
    """Which rate should define the schedule of a guided sampler (docs/method.md, section 10), and does the best
    schedule move with guidance?

    For each guidance scale ``w``, deterministic sampler and budget, the teacher error of the guided ODE
    (``crs.Guided``, each sample's label drawn from its seed with the data's label shares) for: CRS from the rate
    at ``w = 0`` (the data distribution), at ``w = 1`` (the conditional distributions, the suite's default) and at
    the target ``w`` (``data`` measure, ``xi = 1``); the fixed baselines; ``optimal`` (the direct search, on its
    own seeds); and for the digits case ``crs-select`` and ``gits`` searched for that guided ODE, with their costs.
    Judged on ``n`` samples from seed ``seed + 1`` (disjoint from the search's seeds), with paired bootstrap
    intervals of the ratios that decide the question. ``case``: :data:`GUIDANCE_CASES` (``ring``: the labelled
    2-D mixture with exact denoisers; ``digits``: the class-conditional digits UNet, ``model`` or trained once).
    The record keeps the CRS schedules of ``figure_steps`` steps at every rate (the page's figure). ``n``: judged
    samples per cell (default the case's).
    """
    from crs.conditioning import Guided, Labels
    from crs.sampling import steps_for_nfe
    from crs.schedules import baseline_sigmas
    from crs.search import SearchCache

    settings = GUIDANCE_CASES[case]
    data, den = guidance_model(case, model)
    conditions = Labels.from_data(data)
    lo, hi = crs.schedules.fit_model_range(den)
    nfe = nfe or settings.get("nfe") or GUIDANCE_NFE
    n = settings["n"] if n is None else n
    rate_at = {}

    def crs_sigmas(w: float, steps: int):
        if w not in rate_at:
            model_w = den if w == 1.0 else Guided(den, w)
            rate = crs.estimate_rate(
                "data", data, denoiser=model_w, sigma_min=lo, sigma_max=hi, seed=seed, **settings["rate"]
            )
            rate_at[w] = crs.optimize_schedule(rate, xi=1.0)
        return rate_at[w].discretize(steps)

    cells = []
    cache = SearchCache()
    for w in scales:
        guided = Guided(den, w)
        teacher = crs.solve_teacher(
            guided, data.shape, n, seed + 1, lo, hi, steps=settings["teacher_steps"], conditions=conditions
        )
        for sampler, budgets in nfe.items():
            for budget in budgets:
                steps = steps_for_nfe(sampler, budget)
                schedules = {f"crs w={v:g}": crs_sigmas(v, steps) for v in dict.fromkeys([0.0, 1.0, float(w)])}
                schedules.update({b: baseline_sigmas(b, steps, lo, hi) for b in GUIDANCE_BASELINES})
                costs = {}
                searched = (["optimal"] if optimal else []) + (list(GUIDANCE_PEERS) if settings["peers"] else [])
                for method in searched:
                    opts = settings["optimal"] if method == "optimal" else GUIDANCE_PEERS[method]
                    found = crs.search_schedule(
                        method,
                        guided,
                        data,
                        sampler,
                        budget,
                        lo,
                        hi,
                        seed=seed,
                        conditions=conditions,
                        cache=cache,
                        **opts,
                    )
                    schedules[method] = found.sigmas_tensor
                    costs[method] = {"evaluations": standalone_cost(found), "seconds": found.seconds}
                    if method == "crs-select":
                        costs[method]["chosen"] = f"{found.meta.get('measure')} xi={found.meta.get('xi')}"
                judged = {k: crs.teacher_error(guided, data, sampler, v, teacher=teacher) for k, v in schedules.items()}
                best = min(GUIDANCE_BASELINES, key=lambda b: judged[b].value)
                per = {k: v.per_sample for k, v in judged.items()}
                target = f"crs w={w:g}"
                cells.append(
                    {
                        "w": float(w),
                        "sampler": sampler,
                        "nfe": int(budget),
                        "values": {k: v.value for k, v in judged.items()},
                        "best_baseline": best,
                        "target_vs_w1": _ratio_interval(per[target], per["crs w=1"], n_boot, seed),
                        "w0_vs_w1": _ratio_interval(per["crs w=0"], per["crs w=1"], n_boot, seed),
                        "w1_vs_best": _ratio_interval(per["crs w=1"], per[best], n_boot, seed),
                        "teacher_error": teacher.error,
                        **({"costs": costs} if settings["peers"] else {}),
                    }
                )
    out = {"case": case, "n": n, "seed": seed, "scales": [float(w) for w in scales], "cells": cells}
    if case == "ring":
        out["labels"] = [0, 1] * 4
    else:
        out["model"] = model or "runs/bench/models/digits-cond"
        out["schedules"] = {f"{w:g}": [float(s) for s in crs_sigmas(w, figure_steps)] for w in sorted(rate_at)}
    return out


DATAFREE_NFE = {"euler": [5, 10, 20], "dpmpp_2m": [5, 10, 20]}


def datafree_table(
    case: str = "gmm",
    model: str | None = None,
    measures=("data", "noise", "fid"),
    nfe=None,
    pool: int = 1024,
    pool_steps: int = 64,
    grid_size: int = 32,
    n_samples: int = 512,
    n_eval: int = 512,
    teacher_steps: int = 256,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """How close does a data-free schedule come to the dataset's (docs/method.md, section 11)?

    For one :data:`QUALITY_CASES` model (``gmm``: the 2-D mixture's exact denoiser; ``digits``: the digits UNet,
    ``model`` or trained once), ``pool`` of the model's own samples are drawn once (:class:`crs.model_data.
    ModelSamples`, a ``pool_steps``-step Heun solve, seeds apart), and each measure's rate is estimated twice with
    the same settings and seed: on the dataset and on the pool. The two CRS schedules (``xi = 1``) are compared by
    the largest gap in log sigma between their levels at each budget, and judged side by side on ``n_eval`` samples
    from seed ``seed + 1``: the teacher error (paired ratio data-free / dataset with a 95 % bootstrap interval) and
    the Frechet distance on raw coordinates to the data (4 ``n_eval`` fresh draws of analytic data, every image
    of an image dataset). The control: the dataset's rate estimated again with seed ``seed + 1``, the same
    comparison, which shows how far two estimates from the same data already differ. The pool's own cost and its
    distance to the data are reported with it.
    """
    from crs.metrics import bootstrap_indices, feature_scores
    from crs.model_data import ModelSamples
    from crs.protocols import AnalyticDataset
    from crs.quality import endpoints, solve_teacher
    from crs.sampling import steps_for_nfe

    data, den, kwargs = quality_case(case, model)
    lo, hi = crs.schedules.fit_model_range(den)
    nfe = nfe or DATAFREE_NFE
    samples = ModelSamples(den, n=pool, seed=seed, steps=pool_steps, sigma_min=lo, sigma_max=hi, name=f"{case} model")
    if isinstance(data, AnalyticDataset):
        reference = data.sample(4 * n_eval, torch.Generator().manual_seed(reference_seed(seed)))
    else:
        reference = kwargs["reference"]
    reference = torch.as_tensor(reference).flatten(1).double().numpy()
    idx = bootstrap_indices(n_eval, n_boot, seed)

    def frechet(x) -> float:
        return float(feature_scores(x.flatten(1).double().numpy(), reference, idx[:1], which=["fid"])["fid"][0])

    teacher = solve_teacher(den, data.shape, n_eval, seed + 1, lo, hi, steps=teacher_steps)
    rows = []
    for measure in measures:
        common = dict(denoiser=den, sigma_min=lo, sigma_max=hi, grid_size=grid_size, n_samples=n_samples, seed=seed)
        schedules = {
            "dataset": crs.optimize_schedule(crs.estimate_rate(measure, data, **common), xi=1.0),
            "data-free": crs.optimize_schedule(crs.estimate_rate(measure, samples, **common), xi=1.0),
            # the control: the dataset's rate again from other draws, the Monte Carlo spread of the estimate itself
            "dataset, seed + 1": crs.optimize_schedule(
                crs.estimate_rate(measure, data, **dict(common, seed=seed + 1)), xi=1.0
            ),
        }
        for sampler, budgets in nfe.items():
            for budget in budgets:
                steps = steps_for_nfe(sampler, budget)
                sigmas = {k: v.discretize(steps) for k, v in schedules.items()}

                judged = {k: crs.teacher_error(den, data, sampler, v, teacher=teacher) for k, v in sigmas.items()}
                fid = {k: frechet(endpoints(den, sampler, v, teacher.x_T)) for k, v in sigmas.items()}
                rows.append(
                    {
                        "measure": measure,
                        "sampler": sampler,
                        "nfe": int(budget),
                        "log_sigma_gap": crs.schedules.log_gap(sigmas["data-free"], sigmas["dataset"]),
                        "control_gap": crs.schedules.log_gap(sigmas["dataset, seed + 1"], sigmas["dataset"]),
                        "teacher_error": {k: v.value for k, v in judged.items()},
                        "teacher_ratio": _ratio_interval(
                            judged["data-free"].per_sample, judged["dataset"].per_sample, n_boot, seed
                        ),
                        "control_ratio": _ratio_interval(
                            judged["dataset, seed + 1"].per_sample, judged["dataset"].per_sample, n_boot, seed
                        ),
                        "fid": fid,
                        "fid_ratio": fid["data-free"] / fid["dataset"],
                        "control_fid_ratio": fid["dataset, seed + 1"] / fid["dataset"],
                    }
                )
    return {
        "case": case,
        "model": model or (f"runs/bench/models/{case}" if case != "gmm" else "exact denoiser"),
        "seed": seed,
        "pool": {
            "n": pool,
            "steps": pool_steps,
            "evaluations": samples.evaluations,
            "seconds": samples.seconds,
            "teacher_error": samples.teacher_error,
            "fid_to_data": frechet(samples.x),
        },
        "rate": {"grid_size": grid_size, "n_samples": n_samples},
        "n_eval": n_eval,
        "teacher_steps": teacher_steps,
        "teacher_error": teacher.error,
        "rows": rows,
    }


BENCHMARKS = (
    "rate",
    "training",
    "online",
    "sampling",
    "features",
    "ratio",
    "quality",
    "coverage",
    "guidance",
    "datafree",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=[*BENCHMARKS, "peers", "stability", "demo", "digits-cond", "digits-flow", "all"],
    )
    parser.add_argument("--repeats", type=int, default=5, help="rate: repeats per measure (default 5)")
    parser.add_argument("--json", default=None, help="quality: also write the partial result here after every cell")
    parser.add_argument(
        "--seed",
        type=int,
        default=100000,
        help="quality: the run's seed (sample i uses seed + i: runs with nearby seeds share samples)",
    )
    parser.add_argument(
        "--data", default="gmm", choices=list(QUALITY_CASES), help="quality, datafree, peers: the case (default gmm)"
    )
    parser.add_argument("--datafree-seed", type=int, default=0, help="datafree: the run's seed (default 0)")
    parser.add_argument("--model", default=None, help="quality: a saved model to judge instead of the case's own")
    parser.add_argument("--device", default="cpu", help="quality: where the network runs (default cpu)")
    parser.add_argument(
        "--nfe",
        default=None,
        help="quality: the cells, e.g. 'euler:5,10;heun:5,11' (default euler, dpmpp_2m 5,10,20; heun 5,11,21)",
    )
    parser.add_argument(
        "--case",
        default="ring",
        choices=["ring", "digits"],
        help="guidance: the case (default ring; --model for digits)",
    )
    parser.add_argument("--guidance-seed", type=int, default=0, help="guidance: the run's seed (default 0)")
    parser.add_argument(
        "--guidance", type=float, default=None, help="peers: the guidance scale of a conditional case (digits-cond)"
    )
    parser.add_argument("--coverage-repeats", type=int, default=400, help="coverage: repeats per case (default 400)")
    parser.add_argument(
        "--coverage-cases", default=None, help="coverage: only the cases whose name contains one of these (a,b,...)"
    )
    parser.add_argument("--coverage-seed", type=int, default=0, help="coverage: seed of the repeats (default 0)")
    parser.add_argument("--coverage-n", type=int, default=256, help="coverage: draws per sample (default 256)")
    parser.add_argument("--coverage-dim", type=int, default=16, help="coverage: their dimension (default 16)")
    parser.add_argument("--run", default="runs/demo", help="stability: the run folder (default runs/demo)")
    parser.add_argument("--boot-seeds", default="1,2", help="stability: the other bootstrap seeds (default 1,2)")
    parser.add_argument(
        "--run-dir", default=None, help="demo, digits-cond: the (new) run folder to time (default runs/bench/<name>)"
    )
    parser.add_argument("--record-name", default=None, help="the record's name (default: from the benchmark's options)")
    parser.add_argument("--no-record", action="store_true", help="print only; write no record under benchmarks/records")
    return parser


def record_name(what: str, args) -> str:
    """The record a run writes: the benchmark's name, with the options that make it another measurement."""
    if args.record_name:
        return args.record_name
    if what == "quality":
        return f"quality-{args.data}" + (f"-nfe-{re.sub(r'[^0-9a-z]+', '-', args.nfe.lower())}" if args.nfe else "")
    if what == "datafree":
        return f"datafree-{args.data}" + (f"-seed{args.datafree_seed}" if args.datafree_seed else "")
    if what == "peers":
        return f"peers-{args.data}" + (f"-w{args.guidance:g}" if args.guidance is not None else "")
    if what == "guidance" and (args.case, args.guidance_seed) != ("ring", 0):
        return f"guidance-{args.case}" + (f"-seed{args.guidance_seed}" if args.guidance_seed else "")
    if what != "coverage":
        return what
    parts = []
    if args.coverage_cases:
        parts.append(re.sub(r"[^0-9a-z]+", "-", args.coverage_cases.lower()).strip("-"))
    if (args.coverage_n, args.coverage_dim) != (256, 16):
        parts.append(f"{args.coverage_n}x{args.coverage_dim}")
    if args.coverage_seed:
        parts.append(f"seed{args.coverage_seed}")
    if args.coverage_repeats != 400:
        parts.append(f"r{args.coverage_repeats}")
    return "-".join(["coverage", *parts])


def measure(what: str, args) -> dict | list:
    """Run one benchmark with the command line's options; its result as recorded."""
    simple = {
        "rate": lambda: rate_cost_table(repeats=args.repeats),
        "training": training_speed_table,
        "online": online_overhead_table,
        "sampling": sampling_cost_table,
        "features": feature_throughput_table,
        "ratio": crs_ratio_table,
        "guidance": lambda: guidance_table(case=args.case, model=args.model, seed=args.guidance_seed),
        "datafree": lambda: datafree_table(args.data, args.model, seed=args.datafree_seed),
        "peers": lambda: peers_table(args.data, args.model, seed=args.seed, guidance=args.guidance),
        "demo": lambda: demo_timings(run_dir=args.run_dir or "runs/bench/demo"),
        "digits-cond": lambda: demo_timings("params/digits-cond.yaml", args.run_dir or "runs/bench/digits-cond"),
        "digits-flow": lambda: demo_timings("params/digits-flow.yaml", args.run_dir or "runs/bench/digits-flow"),
    }
    if what in simple:
        return simple[what]()
    if what == "coverage":
        cases = args.coverage_cases.split(",") if args.coverage_cases else None
        rows = coverage_table(
            args.coverage_repeats, 1000, args.coverage_n, args.coverage_seed, True, cases, args.coverage_dim
        )
        return {"n": args.coverage_n, "dim": args.coverage_dim, "seed": args.coverage_seed, "rows": rows}
    if what == "stability":
        result = verdict_stability(args.run, [int(s) for s in args.boot_seeds.split(",")])
        return dict(result, run=args.run)
    from crs.io import atomic_write_json

    data, denoiser, kwargs = quality_case(args.data, args.model, args.device)
    save = (lambda result: atomic_write_json(args.json, result)) if args.json else None
    nfe = None
    if args.nfe:
        nfe = {k.strip(): [int(v) for v in vs.split(",")] for k, vs in (c.split(":") for c in args.nfe.split(";"))}
    result = quality_table(denoiser, data, nfe=nfe, seed=args.seed, on_cell=save, **kwargs)
    return dict(result, case=args.data, model=args.model or f"runs/bench/models/{args.data}", device=args.device)


def main(argv=None) -> None:
    import sys

    from benchmarks.records import begin, write_record
    from benchmarks.tables import TABLES

    begin()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for what in BENCHMARKS if args.what == "all" else [args.what]:
        start = time.perf_counter()
        result = measure(what, args)
        print(f"\n## {what}\n\n" + TABLES[what](result), flush=True)
        if not args.no_record:
            command = ["benchmarks.bench", *([what] if args.what == "all" else []), *argv]
            device = args.device if what == "quality" else "cpu"
            write_record(record_name(what, args), what, result, command, time.perf_counter() - start, device)


if __name__ == "__main__":
    main()
