"""The work of notebooks 03-05 on a run folder: fine-tuning, sampling and features, in one or several processes.

Everything here reads or writes a run folder (the engine never does): :func:`sample_grid` samples every
model x schedule x sampler x nfe into ``samples/``, :func:`evaluate_grid` scores the stored sets, and the
jobs (:data:`JOBS`) are what :func:`crs.run.launch.run` executes here or under ``accelerate launch``.
Every process takes its share of the rows of each sample set: sample i keeps its seed ``seed + i``, so the
files are those of a one-process run, to float round-off (bit for bit when the batches and thread counts
match); the main process gathers the shares through the file system and writes every file atomically.

Jobs:
    ``sample``: :func:`sampling_job`, notebook 04 (samples, or their features for large runs).
    ``features``: :func:`features_job`, notebook 05 (features of stored samples, before scoring).
    ``finetune``: :func:`finetune_job`, notebook 03 (the CRS and control fine-tuning runs).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from crs.args import check_choice, check_int
from crs.io import save_tensor
from crs.metrics import (
    METRICS,
    SELF_CENTRED,
    FeatureExtractor,
    analytic_scores,
    bootstrap_indices,
    compare,
    feature_scores,
    interval_description,
    row,
    teacher_scores,
)
from crs.models import load_denoiser
from crs.protocols import AnalyticDataset
from crs.run.processes import gather_rows, process_device, process_state
from crs.sampling import check_nfe_plan, generate, steps_for_nfe
from crs.search import KINDS, search_kind
from crs.seeds import sample_seed

__all__ = [
    "JOBS",
    "evaluate_grid",
    "features_job",
    "finetune_job",
    "kind_of",
    "load_finetune_result",
    "resolve_models",
    "sample_grid",
    "searched_schedules",
    "sampling_job",
]


_LEGACY_PEERS = ("gits", "optimal", "optimal-free")  # the searched peers of files written before `kind` was recorded


def kind_of(record: Mapping) -> str:
    """The role of a sample index entry or a ``metrics.json`` row: its ``kind`` (:data:`crs.search.KINDS`), which
    :func:`sample_grid` and :func:`evaluate_grid` record; ValueError for an unknown one.

    Legacy path, for a ``samples/index.json`` or ``metrics.json`` written before roles were recorded (no ``kind``):
    the role is inferred from the schedule's name as those files were read, a name starting with ``crs`` a CRS
    schedule, ``gits``, ``optimal`` and ``optimal-free`` searched peers, any other a fixed baseline. Nothing else
    reads a role from a name.
    """
    if "kind" not in record:
        name = record["schedule"]
        return "crs" if name.startswith("crs") else "peer" if name in _LEGACY_PEERS else "baseline"
    return check_choice("kind", record["kind"], KINDS, what=f"kind of the schedule {record['schedule']!r}")


FINETUNED = ("crs", "control")  # the models notebook 03 writes at the run's seed


def finetune_models(finetune_seeds=()) -> list[tuple[str, str]]:
    """The (CRS, control) model pairs notebook 03 writes: ``(crs, control)`` at the run's seed and
    ``(crs-s<seed>, control-s<seed>)`` for each further seed of ``finetune_seeds``."""
    return [FINETUNED] + [(f"crs-s{s}", f"control-s{s}") for s in finetune_seeds]


def finetune_runs(crs_config, control_config, finetune_seeds=()) -> dict:
    """Notebook 03's runs: ``{model name: TrainConfig}``, a (CRS, control) pair per seed (:func:`finetune_models`);
    a further pair differs from the first only in its seed (batches, noise levels, online re-estimation)."""
    import dataclasses

    runs = {}
    for seed, (crs_name, control_name) in zip([None, *finetune_seeds], finetune_models(finetune_seeds)):
        runs[crs_name] = crs_config if seed is None else dataclasses.replace(crs_config, seed=int(seed))
        runs[control_name] = control_config if seed is None else dataclasses.replace(control_config, seed=int(seed))
    return runs


def model_comparisons(values: dict, level: float = 0.95) -> list[dict]:
    """The CRS-trained model against the control, per schedule, sampler, nfe and metric.

    ``values``: ``{(model, schedule, sampler, nfe, metric): (value, bootstrap replicates)}``, replicates paired
    across models (the same sample seeds). The pairs are those of :func:`finetune_models` found in ``values``.

    * One pair (one fine-tuning run each): the paired bootstrap interval of the difference (the suite's
      method, :data:`crs.metrics.INTERVAL`). It covers the generated samples only: training randomness is
      not in it, so it says whether *these two runs* differ, not whether CRS training is better.
    * S >= 2 pairs (``finetune_seeds``): the mean difference over the pairs with a Student t interval on S - 1
      degrees of freedom, from the spread of the per-seed differences. Each difference carries its run's
      training randomness and sampling noise, so the interval covers both (the sample seeds are shared
      across runs, so it is conditional on them).

    Returns rows ``{schedule, sampler, nfe, metric, runs, covers, crs_value, control_value, diff, diffs, diff_ci_low,
    diff_ci_high, significant, crs_better, edge, n_boot}`` (values: means over the runs; ``edge`` and ``n_boot`` as in
    :func:`crs.metrics.compare`, for the bootstrap interval of one pair; a t interval has no Monte Carlo error).
    """
    from scipy.stats import t as student_t

    from crs.metrics import lower_is_better, paired_interval

    models = {m for m, *_ in values}
    pairs = [(c, k) for c, k in finetune_models(_repeat_seeds(models)) if c in models and k in models]
    cells = sorted(
        {key[1:] for key in values if key[0] == FINETUNED[0]}, key=lambda c: (str(c[0]), str(c[1]), int(c[2]), c[3])
    )
    out = []
    for schedule, sampler, nfe, metric in cells:
        found = [
            (c, k)
            for c, k in pairs
            if (c, schedule, sampler, nfe, metric) in values and (k, schedule, sampler, nfe, metric) in values
        ]
        if not found:
            continue
        c_vals = [values[(c, schedule, sampler, nfe, metric)] for c, _ in found]
        k_vals = [values[(k, schedule, sampler, nfe, metric)] for _, k in found]
        diffs = [float(a[0]) - float(b[0]) for a, b in zip(c_vals, k_vals)]
        mean = float(np.mean(diffs))
        if len(found) == 1:
            lo, hi, edge, n_boot = paired_interval(c_vals[0][1], k_vals[0][1], mean, level)
            covers = "generated samples (one fine-tuning run per model)"
        else:
            half = float(student_t.ppf(0.5 + level / 2, len(found) - 1) * np.std(diffs, ddof=1) / np.sqrt(len(found)))
            lo, hi, edge, n_boot = mean - half, mean + half, False, None
            covers = f"training runs ({len(found)} seeds per model) and generated samples"
        c_mean, k_mean = float(np.mean([v[0] for v in c_vals])), float(np.mean([v[0] for v in k_vals]))
        out.append(
            dict(
                schedule=schedule,
                sampler=sampler,
                nfe=int(nfe),
                metric=metric,
                runs=len(found),
                covers=covers,
                crs_value=c_mean,
                control_value=k_mean,
                diff=mean,
                diffs=diffs,
                diff_ci_low=lo,
                diff_ci_high=hi,
                significant=bool(lo > 0 or hi < 0),
                crs_better=bool(mean < 0 if lower_is_better(metric) else mean > 0),
                edge=edge,
                n_boot=n_boot,
            )
        )
    return out


def _repeat_seeds(models) -> list[int]:
    """The further fine-tuning seeds whose pairs are among ``models`` (names ``crs-s<seed>``)."""
    return sorted(int(m[len("crs-s") :]) for m in models if re.fullmatch(r"crs-s\d+", m))


def teacher_endpoints(doc: dict, run_dir, data, device: str = "cpu", steps: int = 256) -> tuple[dict, dict]:
    """The teacher's endpoints for every model of a sample index (``samples/index.json``): the same starting noise
    as its samples (seeds ``seed + i``), solved finely over the index's ``schedule_range``
    (:func:`crs.quality.solve_teacher`), decoded for latent models as their samples are.

    Returns:
        ``({model: endpoints (n, *sample shape)}, {model: the teacher's own estimated error})``.
    """
    from crs.quality import solve_teacher

    names = sorted({e["model"] for e in doc["entries"]})
    models = resolve_models(names, run_dir, data, device)
    lo, hi = doc["schedule_range"]
    ends, errors = {}, {}
    for name, den in models.items():
        teacher = solve_teacher(den, tuple(den.shape), doc["n_samples"], doc["seed"], lo, hi, steps, device=device)
        ends[name] = (den.decode(teacher.endpoint.float()) if den.is_latent else teacher.endpoint).cpu()
        errors[name] = teacher.error
    return ends, errors


def resolve_models(names, run_dir, data, device: str = "cpu") -> dict:
    """Denoisers for a list of model names: ``"analytic"``, a name under ``run_dir/models/``, or a
    folder / hub id (see :func:`load_denoiser`). Returns ``{name: denoiser}`` in the given order."""
    models = {}
    for name in names:
        local = Path(run_dir) / "models" / name
        models[name] = load_denoiser(str(local) if name != "analytic" and local.is_dir() else name, data, device)
    return models


def _folder_name(model: str) -> str:
    """A model name as one folder name: a hub id or path becomes e.g. ``google--ddpm-cifar10-32``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", model).strip("-.") or "model"


def _draw_rows(den, shape, sigmas, seed: int, lo: int, hi: int, features, keep: int, draw: dict):
    """Samples ``lo .. hi - 1`` of one set (seeds ``seed + i``); with ``features``, batch by batch, only the
    features and the samples below ``keep`` are kept in memory. Returns ``(samples, features or None)``."""
    if features is None:
        return generate(den, shape, hi - lo, sigmas, seed=sample_seed(seed, lo), **draw), None
    kept, parts = [], []
    for a in range(lo, hi, draw["batch_size"]):
        xb = generate(den, shape, min(a + draw["batch_size"], hi) - a, sigmas, seed=sample_seed(seed, a), **draw)
        parts.append(torch.from_numpy(features(xb)).float())
        kept.append(xb[: max(0, keep - a)])
    return torch.cat(kept), torch.cat(parts)


def searched_schedules(
    models: dict,
    methods: Sequence[str],
    samplers: Sequence[str],
    nfe,
    data,
    sigma_range: tuple[float, float],
    run_dir,
    *,
    seed: int = 0,
    options: dict | None = None,
    write: bool = True,
    log=print,
) -> dict[str, dict[tuple, torch.Tensor]]:
    """Searched schedules (:func:`crs.search.search_schedule`) per model, deterministic sampler and budget.

    Each is an artifact, ``run_dir/search/<model>/<sampler>/<method>_nfe<k>.json``, computed once and reused
    while its method, range, seed and options are unchanged. The stochastic ``edm`` sampler gets none (the search
    needs a deterministic solver).

    Args:
        options: the common search options (``n``, ``teacher_steps``) and, under a method's name, that
            method's (e.g. ``{"n": 128, "gits": {"grid": 60}}``).
        write: save new results (False in the non-main processes of a parallel run).

    Returns:
        ``{method: {(model, sampler, nfe): sigmas}}``, the form :func:`sample_grid` takes.
    """
    from crs.models import model_space
    from crs.search import METHODS, SearchCache, SearchResult, check_options, search_schedule, stored_options

    options = dict(options or {})
    plan = check_nfe_plan(samplers, nfe)
    common = {k: v for k, v in options.items() if k not in METHODS}
    lo, hi = sigma_range
    out = {}
    cache = SearchCache()  # each model's rate estimates and search teacher serve every search of that model
    for method in methods:
        own = {**common, **options.get(method, {})}
        out[method] = {}
        searched, reused, seconds = 0, 0, 0.0
        for name, den in models.items():
            space = model_space(data, den)
            for sampler in samplers:
                if sampler == "edm":
                    continue
                for value in plan[sampler]:
                    path = Path(run_dir) / "search" / _folder_name(name) / sampler / f"{method}_nfe{value}.json"
                    found = SearchResult.load(path) if path.is_file() else None
                    fresh = found is not None and (found.seed, found.sigma_min, found.sigma_max) == (seed, lo, hi)
                    if fresh and found.options == stored_options(check_options(method, own)):
                        reused += 1
                    else:
                        start = time.perf_counter()
                        found = search_schedule(
                            method, den, space, sampler, value, lo, hi, seed=seed, cache=cache, **own
                        )
                        seconds += time.perf_counter() - start
                        searched += 1
                        if write:
                            found.save(path)
                    out[method][(name, sampler, value)] = found.sigmas_tensor
        log(
            f"[search] {method}: {searched} schedules searched in {seconds:.1f} s, {reused} reused from run_dir/search/"
        )
    return out


def sample_grid(
    models: dict,
    schedules: dict,
    samplers: Sequence[str],
    nfe,
    n: int,
    out_dir,
    *,
    kinds: Mapping[str, str],
    seed: int = 0,
    batch_size: int = 1024,
    dtype=torch.float32,
    device: str = "cpu",
    progress: bool = False,
    features=None,
    keep: int = 64,
) -> list[dict]:
    """Sample every model x schedule x sampler x nfe with the same per-sample seeds, saving each set.

    Args:
        models: ``{name: denoiser}`` (:class:`crs.protocols.Denoiser`); a latent model's samples are decoded.
        schedules: ``{name: function steps -> sigmas}`` (e.g. ``Schedule.discretize``), or for schedules made for
            one model, sampler and budget (searched ones, :func:`searched_schedules`) ``{name: {(model, sampler,
            nfe): sigmas}}``; cells such a mapping lacks (e.g. the stochastic sampler) are not drawn.
        kinds: ``{name: kind}``, every schedule's role (:data:`crs.search.KINDS`): ``crs``, ``baseline`` or
            ``peer``, as the code that made it declares it (:func:`crs.optimize.schedule_kinds`,
            :func:`crs.search.search_kind`); each index entry records it.
        samplers: sampler names; ``nfe``: see :func:`check_nfe_plan`.
        out_dir: samples go to ``out_dir/<model>/<sampler>/<schedule>_nfe<k>.pt`` (written atomically).
        features: a :class:`crs.metrics.FeatureExtractor`: store each set's features (n, F) in
            ``<...>.features.pt`` and only its first ``keep`` samples, for experiments whose samples
            would not fit on disk (50k images of 256 px are 10 GB per set).

    Under ``accelerate launch`` with several processes (see :mod:`crs.run.launch`) every process
    draws its share of each set (sample i keeps seed ``seed + i``, so the files equal a one-process
    run to float round-off) and the main process writes the files and returns the index; the others return ``[]``.

    Returns:
        The index: one dict per set with ``model``, ``schedule``, ``kind``, ``sampler``, ``nfe``, ``steps``, ``n``,
        ``path``, ``seconds`` and, with ``features``, ``features`` (the extractor's name) and ``features_path``.
    """
    plan = check_nfe_plan(samplers, nfe)
    missing = [s for s in schedules if s not in kinds]
    if missing:
        raise ValueError(f"No kind for the schedule(s) {missing}: give each its role in `kinds` ({', '.join(KINDS)}).")
    for s in schedules:
        check_choice("kind", kinds[s], KINDS, what=f"kind of the schedule {s!r}")
    state = process_state()
    if n < state.world:
        raise ValueError(f"{n} samples per set cannot be shared by {state.world} processes; draw at least one each.")
    lo, hi = n * state.rank // state.world, n * (state.rank + 1) // state.world
    index = []
    jobs = [
        (m, s, name, v)
        for m in models
        for name in samplers
        for v in plan[name]
        for s in schedules
        if not isinstance(schedules[s], Mapping) or (m, name, v) in schedules[s]
    ]
    for model, sched, sampler, value in tqdm(
        jobs, desc="sampling", disable=not progress or state.rank > 0, leave=False
    ):
        steps = steps_for_nfe(sampler, value)
        den = models[model]
        decode = den.decode if den.is_latent else None
        start = time.perf_counter()
        draw = dict(sampler=sampler, batch_size=batch_size, dtype=dtype, device=device, decode=decode)
        table = schedules[sched]
        sigmas = table[(model, sampler, value)] if isinstance(table, Mapping) else table(steps)
        x, feats = _draw_rows(den, tuple(den.shape), sigmas, seed, lo, hi, features, keep, draw)
        path = Path(out_dir) / _folder_name(model) / sampler / f"{sched}_nfe{value}.pt"
        x = gather_rows(x, state, path.with_suffix(".part"))
        feats = gather_rows(feats, state, path.with_suffix(".fpart")) if feats is not None else None
        seconds = time.perf_counter() - start
        if state.rank > 0:
            continue
        save_tensor(path, x)
        entry = dict(
            model=model,
            schedule=sched,
            kind=kinds[sched],
            sampler=sampler,
            nfe=int(value),
            steps=int(steps),
            n=int(n),
            path=str(path),
            seconds=seconds,
        )
        if feats is not None:
            save_tensor(path.with_suffix(".features.pt"), feats)
            entry.update(features=features.name, features_path=str(path.with_suffix(".features.pt")))
        index.append(entry)
    return index


def _entry_samples(entry: dict, features: FeatureExtractor) -> tuple[torch.Tensor | None, np.ndarray | None]:
    """A sample set's samples, or its stored features (checked to be of ``features``)."""
    if entry.get("features_path"):
        if entry.get("features") != features.name:
            raise ValueError(
                f"The sample set {entry['path']!r} stores features of {entry.get('features')!r}, not "
                f"{features.name!r}: "
                f"evaluate with features={entry.get('features')!r}."
            )
        return None, torch.load(entry["features_path"], weights_only=True).double().numpy()
    return torch.load(entry["path"], weights_only=True), None


KEEP_FEATURES = 50_000_000  # features (float64 values, 400 MB) an evaluation keeps in memory for edge verdicts


def _entry_values(
    entry, samples, gen_features, reference, stats, ref_features, features, idx, *, data, seed, k, kid, which, teachers
) -> dict[str, tuple[float, np.ndarray]]:
    """Every metric of one sample set: ``{metric: (value, replicates over the index rows idx)}``."""
    scores = feature_scores(
        gen_features,
        stats if stats is not None else ref_features,
        idx,
        k=k,
        which=which,
        kid=kid and features.images,
    )
    values = {f"{family}_{features.name}": v for family, v in scores.items()}
    if "teacher_error" in which and teachers and entry["model"] in teachers and entry["sampler"] != "edm":
        if samples is not None:
            values["teacher_error"] = teacher_scores(samples, teachers[entry["model"]], idx)
    if isinstance(data, AnalyticDataset) and stats is None:
        if samples is None:
            raise ValueError("The exact metrics of analytic data need the samples, not only their features.")
        values.update(analytic_scores(samples, reference, data, idx, seed, which))
    return values


def _comparisons(groups: dict, kinds: dict) -> list[dict]:
    """Each CRS schedule against the fixed baselines of its group (``kinds``: ``{(model, schedule, sampler, nfe):
    kind}``); searched peers take no part."""
    comparisons = []
    for (model, sampler, nfe, metric), by_schedule in groups.items():
        kind = {s: kinds[(model, s, sampler, nfe)] for s in by_schedule}
        fixed = {s: v for s, v in by_schedule.items() if kind[s] == "baseline"}
        for name in [s for s in by_schedule if kind[s] == "crs"]:
            result = compare({name: by_schedule[name], **fixed}, metric, name)
            if result:
                comparisons.append(dict(model=model, sampler=sampler, nfe=int(nfe), metric=metric, **result))
    return comparisons


def evaluate_grid(
    index: list[dict],
    reference,
    features: FeatureExtractor,
    *,
    data=None,
    n_boot: int = 200,
    seed: int = 0,
    k: int = 3,
    kid: bool = True,
    which=METRICS,
    progress: bool = False,
    teachers: dict | None = None,
    escalate: int = 3,
) -> dict:
    """Evaluate every entry of a sampling index (see :func:`crs.run.jobs.sample_grid`).

    Entries of one (model, sampler, nfe) share bootstrap indices (their samples share seeds), so
    each metric's CRS-versus-best-baseline comparison is a paired bootstrap. Entries that stored
    features instead of samples are scored from those.

    Args:
        reference: real samples (tensor), or ``{"mu", "cov", "name"}`` feature statistics (see
            :func:`reference_statistics`), from which only FID is computed.
        teachers: ``{model: teacher endpoints}`` (:func:`teacher_endpoints`) for the ``teacher_error`` rows of the
            deterministic samplers' sets (sets stored as features only have none).
        escalate: a verdict at the edge (an end of its interval within Monte Carlo error of 0,
            :func:`crs.metrics.paired_interval`), CRS against its best baseline or the CRS-trained model against
            the control, is recomputed once with ``escalate * n_boot`` replicates: the two sample sets of that
            comparison are scored again on the further rows of the same index stream (recall and mode TV, whose
            replicates are centred on their own mean, on all of them), so the first ``n_boot``
            replicates are unchanged. 1 turns this off. Rows keep ``n_boot`` replicates; each comparison records
            its own ``n_boot`` and whether it is still at the edge (``edge_baselines`` flags the other baselines'
            verdicts at the edge, not recomputed).

    Each entry's role is its ``kind`` (:func:`kind_of`; an index from before roles were recorded: inferred from the
    name). CRS schedules (kind ``crs``, ``crs-select`` included) are compared with the best *fixed* baseline (kind
    ``baseline``); searched peers (kind ``peer``: ``gits``, ``optimal``, ``optimal-free``) are rows, never
    comparators. Every row records its ``kind``.

    Returns:
        ``{"rows": [...], "comparisons": [...], "model_comparisons": [...], "features": name, "n_boot": n_boot,
        "reference": ..., "intervals": ...}`` for ``metrics.json``.
    """
    from tqdm import tqdm

    check_int("escalate", escalate, 1)
    stats = (reference["mu"], reference["cov"]) if isinstance(reference, dict) else None
    ref_features = None if stats is not None else features(reference)
    shared = dict(data=data, seed=seed, k=k, kid=kid, which=which, teachers=teachers)
    kinds = {(e["model"], e["schedule"], e["sampler"], e["nfe"]): kind_of(e) for e in index}  # checked before any work
    rows, groups, by_model, entries, computed, kept = [], {}, {}, {}, {}, 0
    for entry in tqdm(index, desc="evaluate", disable=not progress, leave=False):
        samples, gen_features = _entry_samples(entry, features)
        n = len(samples) if samples is not None else len(gen_features)
        idx = bootstrap_indices(n, n_boot, seed)
        if gen_features is None:
            if not torch.all(torch.isfinite(samples)):
                raise ValueError(f"The sample set {entry['path']!r} contains NaN or inf; evaluate finite samples only.")
            gen_features = features(samples)
        values = _entry_values(entry, samples, gen_features, reference, stats, ref_features, features, idx, **shared)
        name = (entry["model"], entry["schedule"], entry["sampler"], entry["nfe"])
        entries[name] = entry
        if escalate > 1 and kept + gen_features.size <= KEEP_FEATURES:  # for an edge verdict's further replicates
            computed[name] = gen_features
            kept += gen_features.size
        for metric, (value, boot) in values.items():
            rows.append(row(*name, metric, value, boot, kind=kinds[name]))
            groups.setdefault((entry["model"], entry["sampler"], entry["nfe"], metric), {})[entry["schedule"]] = (
                value,
                boot,
            )
            by_model[name + (metric,)] = (value, boot)
    comparisons, model_rows = _comparisons(groups, kinds), model_comparisons(by_model)
    if escalate > 1:
        edge: dict[tuple, set] = {}  # sample set -> the metrics of its edge verdicts
        for c in comparisons:  # the verdict against the best baseline (the others keep their edge_baselines flag)
            for s in [c["crs"], c["best_baseline"]] if c["edge"] else []:
                edge.setdefault((c["model"], s, c["sampler"], c["nfe"]), set()).add(c["metric"])
        for c in model_rows:
            for m in finetune_models()[0] if c["edge"] else []:
                edge.setdefault((m, c["schedule"], c["sampler"], c["nfe"]), set()).add(c["metric"])
        for name in tqdm(sorted(edge, key=str), desc="edge verdicts", disable=not progress, leave=False):
            entry = entries[name]
            samples, gen_features = _entry_samples(entry, features)
            n = len(samples) if samples is not None else len(gen_features)
            if gen_features is None:
                gen_features = computed[name] if name in computed else features(samples)
            full = bootstrap_indices(n, escalate * n_boot, seed)
            families = {m if m in METRICS else m.removesuffix(f"_{features.name}") for m in edge[name]}
            values, whole = {}, set()
            # self-centred replicates (crs.metrics.SELF_CENTRED) are recomputed on every row of the longer
            # stream; the others are extended by its further rows
            centred = set(SELF_CENTRED)
            for index_rows, which in ((full[n_boot:], families - centred), (full, families & centred)):
                if which:
                    scored = _entry_values(
                        entry,
                        samples,
                        gen_features,
                        reference,
                        stats,
                        ref_features,
                        features,
                        index_rows,
                        **{**shared, "which": [f for f in METRICS if f in which]},
                    )
                    values |= scored
                    whole |= set(scored) if len(index_rows) == len(full) else set()
            for metric in edge[name]:
                value, first = by_model[name + (metric,)]
                more = values[metric][1]
                by_model[name + (metric,)] = (value, more if metric in whole else np.concatenate([first, more]))
                groups[(name[0], name[2], name[3], metric)][name[1]] = by_model[name + (metric,)]
        if edge:
            comparisons, model_rows = _comparisons(groups, kinds), model_comparisons(by_model)
    ref_name = reference.get("name", "statistics") if isinstance(reference, dict) else f"{len(reference)} samples"
    return {
        "rows": rows,
        "comparisons": comparisons,
        "model_comparisons": model_rows,
        "features": features.name,
        "n_boot": int(n_boot),
        "reference": ref_name,
        "intervals": interval_description(n_boot, escalate),
    }


def sampling_job(spec: dict) -> list[dict]:
    """Notebook 04's work: load the models, fit the CRS schedule to their range, sample the grid, write the index.

    ``spec`` keys: ``run_dir``, ``dataset``, ``dataset_kwargs``, ``models``, ``schedule`` (path),
    ``baselines``, ``samplers``, ``nfe``, ``n_samples``, ``batch_size``, ``seed``, ``device``,
    ``store`` (``samples`` or ``features``), ``features``, ``keep``; optionally ``search`` (methods of
    :mod:`crs.search`, searched per model, deterministic sampler and nfe, see :func:`searched_schedules`),
    ``search_options`` and ``search_models`` (the models searched for; None: all).
    """
    import crs
    from crs.io import atomic_write_json
    from crs.metrics import make_feature_extractor
    from crs.optimize import schedule_functions, schedule_kinds
    from crs.schedules import fit_schedule

    state = process_state()
    run_dir = Path(spec["run_dir"])
    data = crs.make_dataset(spec["dataset"], **spec["dataset_kwargs"])
    device = process_device(spec["device"], state)
    denoisers = resolve_models(spec["models"], run_dir, data, device)
    schedule = fit_schedule(crs.export.as_schedule(spec["schedule"]), denoisers)
    schedules = schedule_functions(schedule, spec["baselines"])
    kinds = {**schedule_kinds(spec["baselines"]), **{m: search_kind(m) for m in spec.get("search") or ()}}
    if spec.get("search"):
        chosen = spec.get("search_models")
        schedules.update(
            searched_schedules(
                denoisers if chosen is None else {k: v for k, v in denoisers.items() if k in chosen},
                spec["search"],
                spec["samplers"],
                spec["nfe"],
                data,
                (schedule.sigma_min, schedule.sigma_max),
                run_dir,
                seed=spec["seed"],
                options=spec.get("search_options", {}),
                write=state.rank == 0,
                log=print if state.rank == 0 else (lambda *_: None),
            )
        )
    extractor = make_feature_extractor(spec["features"], data.shape, device) if spec["store"] == "features" else None
    index = sample_grid(
        denoisers,
        schedules,
        spec["samplers"],
        spec["nfe"],
        spec["n_samples"],
        run_dir / "samples",
        kinds=kinds,
        seed=spec["seed"],
        batch_size=spec["batch_size"],
        device=device,
        progress=spec.get("progress", False),
        features=extractor,
        keep=spec["keep"],
    )
    if state.rank == 0:
        atomic_write_json(
            run_dir / "samples" / "index.json",
            {
                "seed": spec["seed"],
                "n_samples": spec["n_samples"],
                "store": spec["store"],
                "processes": state.world,
                "schedule_range": [schedule.sigma_min, schedule.sigma_max],
                "entries": index,
            },
        )
    return index


def features_job(spec: dict) -> list[dict]:
    """Notebook 05's heavy part: features of every stored sample set that lacks them, over all processes.

    ``spec`` keys: ``run_dir``, ``dataset``, ``dataset_kwargs``, ``features``, ``device``. Sets already
    carrying features of the same extractor are left as they are. Writes ``<set>.features.pt`` and
    the updated ``samples/index.json``; returns the entries.
    """
    import crs
    from crs.io import atomic_write_json, read_json
    from crs.metrics import make_feature_extractor

    state = process_state()
    run_dir = Path(spec["run_dir"])
    index_path = run_dir / "samples" / "index.json"
    saved = read_json(index_path, "sample index (run notebook 04 first)")
    data = crs.make_dataset(spec["dataset"], **spec["dataset_kwargs"])
    extractor = make_feature_extractor(spec["features"], data.shape, process_device(spec["device"], state))
    for entry in saved["entries"]:
        if entry.get("features") == extractor.name:
            continue
        if "features" in entry:
            raise ValueError(
                f"The sample set {entry['path']!r} kept only features of {entry['features']!r}, not "
                f"{extractor.name!r}: "
                f"evaluate with features={entry['features']!r} or sample again with store='samples'."
            )
        x = torch.load(entry["path"], weights_only=True)
        lo, hi = len(x) * state.rank // state.world, len(x) * (state.rank + 1) // state.world
        feats = gather_rows(
            torch.from_numpy(extractor(x[lo:hi])).float(), state, Path(entry["path"]).with_suffix(".fpart")
        )
        if state.rank == 0:
            path = Path(entry["path"]).with_suffix(".features.pt")
            save_tensor(path, feats)
            entry.update(features=extractor.name, features_path=str(path))
    if state.rank == 0:
        atomic_write_json(index_path, dict(saved, feature_processes=state.world))
    state.barrier()
    return saved["entries"]


def finetune_job(spec: dict) -> dict:
    """Notebook 03's training runs: every configuration fine-tunes a fresh copy of the base model.

    ``spec`` keys: ``run_dir``, ``dataset``, ``dataset_kwargs``, ``base_model``, ``configs``
    (``{name: TrainConfig fields}``), ``progress``. Under several processes gradients are averaged
    across them (accelerate) and each draws its own batches. The main process saves the EMA models
    to ``models/<name>`` and each run's record to ``checkpoints/<name>/result.json``.

    Returns:
        ``{name: TrainResult}`` (on the main process; see :func:`load_finetune_result`).
    """
    import crs
    from crs.io import atomic_write_json
    from crs.models import load_denoiser
    from crs.training import TrainConfig, train

    state = process_state()
    run_dir = Path(spec["run_dir"])
    data = crs.make_dataset(spec["dataset"], **spec["dataset_kwargs"])
    results = {}
    for name, fields in spec["configs"].items():
        result = train(
            load_denoiser(spec["base_model"], data),
            data,
            TrainConfig(**fields),
            checkpoint_dir=run_dir / "checkpoints" / name,
            progress=spec.get("progress", False) and state.rank == 0,
            desc=name,
        )
        if state.rank == 0:
            result.ema.save_pretrained(run_dir / "models" / name)
            atomic_write_json(
                run_dir / "checkpoints" / name / "result.json",
                {
                    "losses": result.losses,
                    "steps_done": result.steps_done,
                    "seconds": result.seconds,
                    "online_seconds": result.online_seconds,
                    "online_updates": result.online_updates,
                    "resumed_from": result.resumed_from,
                    "noise": result.noise.state(),
                    "processes": state.world,
                },
            )
        results[name] = result
        state.barrier()
    return results


def load_finetune_result(run_dir, name: str, data=None):
    """The :class:`crs.training.TrainResult` of a fine-tuning run written by :func:`finetune_job`."""
    from crs.io import read_json
    from crs.models import load_denoiser
    from crs.training import TrainResult, noise_from_state

    rec = read_json(Path(run_dir) / "checkpoints" / name / "result.json", "fine-tuning record")
    return TrainResult(
        ema=load_denoiser(str(Path(run_dir) / "models" / name), data),
        losses=rec["losses"],
        steps_done=rec["steps_done"],
        seconds=rec["seconds"],
        online_seconds=rec["online_seconds"],
        online_updates=rec["online_updates"],
        noise=noise_from_state(rec["noise"]),
        resumed_from=rec["resumed_from"],
        extra={"processes": rec["processes"]},
    )


JOBS = {"sample": sampling_job, "features": features_job, "finetune": finetune_job}


@dataclass
class EvaluationInputs:
    """What notebook 05 scores: the sample index, the data, the feature extractor, the reference (samples, or
    feature statistics ``{"mu", "cov", "name"}``), and the teachers' endpoints per model (None without the
    ``teacher_error`` metric) with their own errors."""

    index: list[dict]
    data: object
    extractor: FeatureExtractor
    reference: object
    teachers: dict | None
    teacher_errors: dict

    def describe(self) -> str:
        """One line: how many sets, which features and reference, the teachers' own errors."""
        ref = self.reference["name"] if isinstance(self.reference, dict) else f"{len(self.reference)} samples"
        line = f"{len(self.index)} sample sets; features: {self.extractor.name}; reference: {ref}"
        errors = {m: f"{e:.1e}" for m, e in self.teacher_errors.items()}
        return line + (f"; teachers' own errors: {errors}" if errors else "")

    def reference_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the reference's features (FID's reference side)."""
        if isinstance(self.reference, dict):
            return self.reference["mu"], self.reference["cov"]
        feats = self.extractor(torch.as_tensor(self.reference))
        return feats.mean(axis=0), np.cov(feats, rowvar=False)


def evaluation_inputs(params: Mapping) -> EvaluationInputs:
    """Notebook 05's inputs from its (checked) parameters: the sample index of ``run_dir``, the reference (clean-fid
    statistics, fresh exact samples of analytic data seeded apart from the generated ones, or the held-out split of
    images), features of every set over several processes when ``num_processes > 1``, and the teacher solves
    behind ``teacher_error``. ValueError when ``plot_model`` was not sampled."""
    from crs.data import held_out, make_dataset
    from crs.io import read_json
    from crs.metrics import make_feature_extractor, reference_statistics
    from crs.models import resolve_device
    from crs.seeds import reference_seed

    p, run_dir = params, Path(params["run_dir"])
    doc = read_json(run_dir / "samples" / "index.json", "sample index (run notebook 04 first)")
    index, data = doc["entries"], make_dataset(p["dataset"], **p["dataset_kwargs"])
    sampled = sorted({e["model"] for e in index})
    if p["plot_model"] not in sampled:
        raise ValueError(f"`plot_model` {p['plot_model']!r} was not sampled; sampled: {sampled}.")
    device = resolve_device(p["device"])
    extractor = make_feature_extractor(p["features"], data.shape, device)
    if p["reference"] != "test":  # dataset statistics (FID only: the other metrics need reference images)
        reference = reference_statistics(p["reference"], extractor)
    elif isinstance(data, AnalyticDataset):
        reference = data.sample(p["n_reference"], torch.Generator().manual_seed(reference_seed(p["seed"])))
    else:
        reference = held_out(p["dataset"], p["dataset_kwargs"]).images
    if p["num_processes"] > 1:  # features of every sample set over several processes, stored beside the samples
        from crs.run.launch import run

        keys = ("dataset", "dataset_kwargs", "features", "device")
        index = run("features", dict(run_dir=str(run_dir), **{k: p[k] for k in keys}), p["num_processes"])
    teachers, errors = None, {}
    if "teacher_error" in p["metrics"]:  # the fine ODE solutions from the samples' own starting noise
        teachers, errors = teacher_endpoints(doc, run_dir, data, device, p["teacher_steps"])
    return EvaluationInputs(index, data, extractor, reference, teachers, errors)


def entry_features(entry: dict, extractor: FeatureExtractor) -> np.ndarray:
    """The features (N, F) of one sample set of the index: stored ones, or computed from its samples."""
    samples, feats = _entry_samples(entry, extractor)
    return feats if feats is not None else extractor(samples)
