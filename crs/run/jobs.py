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
from crs.conditioning import with_guidance
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
    across models (the same sample seeds). The pairs are those of :func:`finetune_models` found in ``values``; a
    model sampled with guidance is keyed by :func:`variant_key` and compared with the control at the same scale
    (the row records ``guidance``).

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
    names = {key_fields(m)["model"] for m in models}
    scales = sorted({key_fields(m).get("guidance", -1.0) for m in models})  # -1: not guided
    cells = sorted(
        {(w, *key[1:]) for key in values for w in scales if key[0] == variant_key(FINETUNED[0], None if w < 0 else w)},
        key=lambda c: (c[0], str(c[1]), str(c[2]), int(c[3]), c[4]),
    )
    out = []
    for w, schedule, sampler, nfe, metric in cells:
        scale = None if w < 0 else w
        pairs = [
            (variant_key(c, scale), variant_key(k, scale))
            for c, k in finetune_models(_repeat_seeds(names))
            if variant_key(c, scale) in models and variant_key(k, scale) in models
        ]
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
                **({} if scale is None else {"guidance": scale}),
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


def variant_key(model: str, guidance: float | None) -> str:
    """A model at a guidance scale as one key: its name, with ``@w=<scale>`` when it is sampled guided."""
    if guidance is None:
        return model
    w = float(guidance)
    return f"{model}@w={w:g}" if float(f"{w:g}") == w else f"{model}@w={w!r}"


def entry_key(record: Mapping) -> str:
    """The :func:`variant_key` of a sample index entry or a ``metrics.json`` row (``guidance`` absent: none)."""
    return variant_key(record["model"], record.get("guidance"))


def key_fields(key: str) -> dict:
    """The inverse of :func:`variant_key`: ``{"model": name}``, with ``"guidance": scale`` for a guided one."""
    model, sep, w = key.rpartition("@w=")
    return {"model": model, "guidance": float(w)} if sep else {"model": key}


@dataclass
class Variant:
    """One model as a stage samples it: its name, the guidance scale (None: the model as it is), the denoiser
    (guided, :func:`crs.conditioning.with_guidance`) and a conditional model's condition source."""

    model: str
    guidance: float | None
    denoiser: object
    conditions: object = None

    @property
    def key(self) -> str:
        return variant_key(self.model, self.guidance)

    @property
    def folder(self) -> Path:
        """Where its files go below a stage's folder: ``<model>`` or ``<model>/w<scale>``."""
        top = Path(_folder_name(self.model))
        return top if self.guidance is None else top / f"w{self.key.rsplit('@w=', 1)[1]}"

    def fields(self) -> dict:
        """What an index entry or a row records of it: ``model``, and ``guidance`` when guided."""
        return {"model": self.model, **({} if self.guidance is None else {"guidance": self.guidance})}


def model_variants(models: Mapping, guidance: Sequence[float] | None = None, conditions: Mapping | None = None) -> dict:
    """Every model at every guidance scale it is sampled with: ``{key: Variant}`` (:func:`variant_key`).

    Args:
        models: ``{name: denoiser}``.
        guidance: the scales each *conditional* model is sampled with (classifier-free guidance,
            :class:`crs.conditioning.Guided`); unconditional models are sampled once, as they are. None: every model
            as it is (a conditional one at w = 1, recording no scale).
        conditions: ``{name: condition source}`` for the conditional models (:func:`crs.conditioning.condition_source`).

    Raises:
        ValueError: ``guidance`` with no conditional model among ``models``, or a model whose condition source is
            missing or not wanted (:func:`crs.conditioning.check_conditions`).
    """
    from crs.conditioning import check_conditions, conditioning_of

    conditions = dict(conditions or {})
    if guidance is not None and not any(conditioning_of(d) is not None for d in models.values()):
        raise ValueError(
            f"`guidance` {list(guidance)} needs a conditional model; every one of {list(models)} is unconditional "
            "(give None)."
        )
    out = {}
    for name, den in models.items():
        check_conditions(den, conditions.get(name))
        scales = [None] if guidance is None or conditioning_of(den) is None else [float(w) for w in guidance]
        for w in scales:
            v = Variant(name, w, with_guidance(den, w), conditions.get(name))
            out[v.key] = v
    return out


def index_conditions(doc: Mapping, models: Mapping, data) -> dict:
    """The condition source of every conditional model of a sample index (its ``labels``, ``"data"`` for an index
    written before it was recorded): ``{name: Labels}``."""
    from crs.conditioning import condition_source

    labels = doc.get("labels", "data")
    return {n: c for n, d in models.items() if (c := condition_source(d, data, labels)) is not None}


def teacher_endpoints(doc: dict, run_dir, data, device: str = "cpu", steps: int = 256) -> tuple[dict, dict]:
    """The teacher's endpoints for every model of a sample index (``samples/index.json``): the same starting noise
    as its samples (seeds ``seed + i``), solved finely over the index's ``schedule_range``
    (:func:`crs.quality.solve_teacher`), decoded for latent models as their samples are.

    A conditional model's teacher solves the ODE of the model at each guidance scale it was sampled with, every
    sample with the condition it was sampled with (the index's ``labels``, and ``prompts`` for a text model).

    Returns:
        ``({key: endpoints (n, *sample shape)}, {key: the teacher's own estimated error})``, keyed by
        :func:`entry_key` (the model's name, with ``@w=<scale>`` for a guided one).
    """
    from crs.quality import solve_teacher

    names = sorted({e["model"] for e in doc["entries"]})
    models = resolve_models(names, run_dir, data, device, prompts=doc.get("prompts"))
    conditions = index_conditions(doc, models, data)
    lo, hi = doc["schedule_range"]
    ends, errors = {}, {}
    for key in sorted({entry_key(e) for e in doc["entries"]}):
        fields = key_fields(key)
        den = with_guidance(models[fields["model"]], fields.get("guidance"))
        teacher = solve_teacher(
            den,
            tuple(den.shape),
            doc["n_samples"],
            doc["seed"],
            lo,
            hi,
            steps,
            device=device,
            conditions=conditions.get(fields["model"]),
        )
        # decoded a few at a time: a VAE pass over 1024 px images holds gigabytes per image
        ends[key] = (den.decode(teacher.endpoint.float(), batch_size=8) if den.is_latent else teacher.endpoint).cpu()
        errors[key] = teacher.error
    return ends, errors


def resolve_models(names, run_dir, data, device: str = "cpu", prompts=None) -> dict:
    """Denoisers for a list of model names: ``"analytic"``, a name under ``run_dir/models/``, or a
    folder / hub id (see :func:`load_denoiser`); the text-conditional ones get ``prompts``
    (:func:`crs.prompts.prompt_table`), the others none. Returns ``{name: denoiser}`` in the given order."""
    from crs.models import give_prompts, locate_model

    models = {}
    for name in names:
        local = Path(run_dir) / "models" / name
        where = str(local) if name != "analytic" and local.is_dir() else name
        models[name] = den = load_denoiser(where, data, device)
        if prompts is not None and getattr(den, "is_text", False):
            give_prompts(den, locate_model(where), prompts, device)
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
    guidance: Sequence[float] | None = None,
    conditions: Mapping | None = None,
) -> dict[str, dict[tuple, torch.Tensor]]:
    """Searched schedules (:func:`crs.search.search_schedule`) per model, deterministic sampler and budget.

    Each is an artifact, ``run_dir/search/<model>/<sampler>/<method>_nfe<k>.json``, computed once and reused
    while its method, range, seed and options are unchanged. The stochastic ``edm`` sampler gets none (the search
    needs a deterministic solver).

    Args:
        options: the common search options (``n``, ``teacher_steps``) and, under a method's name, that
            method's (e.g. ``{"n": 128, "gits": {"grid": 60}}``).
        write: save new results (False in the non-main processes of a parallel run).
        guidance, conditions: as in :func:`model_variants`: a conditional model gets one schedule per guidance
            scale (searched for the guided ODE, under ``search/<model>/w<scale>/``), its search samples conditioned
            from its condition source; a stored search is reused only for the same conditions.

    Returns:
        ``{method: {(key, sampler, nfe): sigmas}}`` (``key``: :func:`variant_key`), the form :func:`sample_grid`
        takes.
    """
    from crs.model_data import search_data
    from crs.models import model_space
    from crs.search import METHODS, SearchCache, SearchResult, check_options, search_schedule, stored_options

    options = dict(options or {})
    plan = check_nfe_plan(samplers, nfe)
    common = {k: v for k, v in options.items() if k not in METHODS}
    lo, hi = sigma_range
    out = {}
    cache = SearchCache()  # each model's rate estimates and search teacher serve every search of that model
    variants = model_variants(models, guidance, conditions)
    for method in methods:
        own = {**common, **options.get(method, {})}
        out[method] = {}
        searched, reused, seconds = 0, 0, 0.0
        for v in variants.values():
            space = model_space(data, v.denoiser) if data is not None else search_data(v.denoiser, run_dir, v.model)
            wanted = None if v.conditions is None else v.conditions.state()
            for sampler in samplers:
                if sampler == "edm":
                    continue
                for value in plan[sampler]:
                    path = Path(run_dir) / "search" / v.folder / sampler / f"{method}_nfe{value}.json"
                    found = SearchResult.load(path) if path.is_file() else None
                    fresh = found is not None and (found.seed, found.sigma_min, found.sigma_max) == (seed, lo, hi)
                    fresh = fresh and found.meta.get("conditions") == wanted
                    if fresh and found.options == stored_options(check_options(method, own)):
                        reused += 1
                    else:
                        start = time.perf_counter()
                        found = search_schedule(
                            method,
                            v.denoiser,
                            space,
                            sampler,
                            value,
                            lo,
                            hi,
                            seed=seed,
                            cache=cache,
                            conditions=v.conditions,
                            **own,
                        )
                        seconds += time.perf_counter() - start
                        searched += 1
                        if write:
                            found.save(path)
                    out[method][(v.key, sampler, value)] = found.sigmas_tensor
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
    guidance: Sequence[float] | None = None,
    conditions: Mapping | None = None,
) -> list[dict]:
    """Sample every model x schedule x sampler x nfe (x guidance scale) with the same per-sample seeds, saving each
    set.

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
        guidance, conditions: as in :func:`model_variants`: each conditional model is sampled at every guidance
            scale (``out_dir/<model>/w<scale>/...``, entries with ``guidance``), sample i with the condition of its
            seed; a searched table's keys are then :func:`variant_key` s.

    Under ``accelerate launch`` with several processes (see :mod:`crs.run.launch`) every process
    draws its share of each set (sample i keeps seed ``seed + i``, so the files equal a one-process
    run to float round-off) and the main process writes the files and returns the index; the others return ``[]``.

    Returns:
        The index: one dict per set with ``model``, ``schedule``, ``kind``, ``sampler``, ``nfe``, ``steps``, ``n``,
        ``path``, ``seconds``, ``guidance`` for a guided set, and, with ``features``, ``features`` (the extractor's
        name) and ``features_path``.
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
    variants = model_variants(models, guidance, conditions)
    index = []
    jobs = [
        (m, s, name, v)
        for m in variants
        for name in samplers
        for v in plan[name]
        for s in schedules
        if not isinstance(schedules[s], Mapping) or (m, name, v) in schedules[s]
    ]
    for key, sched, sampler, value in tqdm(jobs, desc="sampling", disable=not progress or state.rank > 0, leave=False):
        steps = steps_for_nfe(sampler, value)
        variant = variants[key]
        den = variant.denoiser
        decode = den.decode if den.is_latent else None
        start = time.perf_counter()
        draw = dict(
            sampler=sampler,
            batch_size=batch_size,
            dtype=dtype,
            device=device,
            decode=decode,
            conditions=variant.conditions,
        )
        table = schedules[sched]
        sigmas = table[(key, sampler, value)] if isinstance(table, Mapping) else table(steps)
        x, feats = _draw_rows(den, tuple(den.shape), sigmas, seed, lo, hi, features, keep, draw)
        path = Path(out_dir) / variant.folder / sampler / f"{sched}_nfe{value}.pt"
        x = gather_rows(x, state, path.with_suffix(".part"))
        feats = gather_rows(feats, state, path.with_suffix(".fpart")) if feats is not None else None
        seconds = time.perf_counter() - start
        if state.rank > 0:
            continue
        save_tensor(path, x)
        entry = dict(
            **variant.fields(),
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
    if entry.get("features_path") and features is None:
        raise ValueError(f"The sample set {entry['path']!r} kept only features; the teacher error needs samples.")
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
    values = {}
    if features is not None:
        scores = feature_scores(
            gen_features,
            stats if stats is not None else ref_features,
            idx,
            k=k,
            which=which,
            kid=kid and features.images,
        )
        values = {f"{family}_{features.name}": v for family, v in scores.items()}
    if "teacher_error" in which and teachers and entry_key(entry) in teachers and entry["sampler"] != "edm":
        if samples is not None:
            values["teacher_error"] = teacher_scores(samples, teachers[entry_key(entry)], idx)
    if isinstance(data, AnalyticDataset) and stats is None:
        if samples is None:
            raise ValueError("The exact metrics of analytic data need the samples, not only their features.")
        values.update(analytic_scores(samples, reference, data, idx, seed, which))
    return values


def _comparisons(groups: dict, kinds: dict) -> list[dict]:
    """Each CRS schedule against the fixed baselines of its group (``kinds``: ``{(model, schedule, sampler, nfe):
    kind}``, ``model`` a :func:`variant_key`); searched peers take no part."""
    comparisons = []
    for (model, sampler, nfe, metric), by_schedule in groups.items():
        kind = {s: kinds[(model, s, sampler, nfe)] for s in by_schedule}
        fixed = {s: v for s, v in by_schedule.items() if kind[s] == "baseline"}
        for name in [s for s in by_schedule if kind[s] == "crs"]:
            result = compare({name: by_schedule[name], **fixed}, metric, name)
            if result:
                comparisons.append(dict(**key_fields(model), sampler=sampler, nfe=int(nfe), metric=metric, **result))
    return comparisons


def _row(name: tuple, metric: str, value, boot, kind: str) -> dict:
    """A ``metrics.json`` row of the set ``name`` (``(key, schedule, sampler, nfe)``): :func:`crs.metrics.row`, with
    the set's ``guidance`` when it was sampled guided."""
    fields = key_fields(name[0])
    out = row(fields["model"], *name[1:], metric, value, boot, kind=kind)
    return out if "guidance" not in fields else {**out, "guidance": fields["guidance"]}


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
    if features is None and set(which) - {"teacher_error"}:
        raise ValueError(f"Without features (no dataset) only the teacher error is scored, not {sorted(which)}.")
    stats = (reference["mu"], reference["cov"]) if isinstance(reference, dict) else None
    ref_features = None if stats is not None or features is None else features(reference)
    shared = dict(data=data, seed=seed, k=k, kid=kid, which=which, teachers=teachers)
    kinds = {(entry_key(e), e["schedule"], e["sampler"], e["nfe"]): kind_of(e) for e in index}  # checked before work
    rows, groups, by_model, entries, computed, kept = [], {}, {}, {}, {}, 0
    for entry in tqdm(index, desc="evaluate", disable=not progress, leave=False):
        samples, gen_features = _entry_samples(entry, features)
        n = len(samples) if samples is not None else len(gen_features)
        idx = bootstrap_indices(n, n_boot, seed)
        if gen_features is None:
            if not torch.all(torch.isfinite(samples)):
                raise ValueError(f"The sample set {entry['path']!r} contains NaN or inf; evaluate finite samples only.")
            gen_features = features(samples) if features is not None else None
        values = _entry_values(entry, samples, gen_features, reference, stats, ref_features, features, idx, **shared)
        name = (entry_key(entry), entry["schedule"], entry["sampler"], entry["nfe"])
        entries[name] = entry
        if escalate > 1 and gen_features is not None and kept + gen_features.size <= KEEP_FEATURES:  # edge verdicts
            computed[name] = gen_features
            kept += gen_features.size
        for metric, (value, boot) in values.items():
            rows.append(_row(name, metric, value, boot, kinds[name]))
            groups.setdefault((name[0], entry["sampler"], entry["nfe"], metric), {})[entry["schedule"]] = (
                value,
                boot,
            )
            by_model[name + (metric,)] = (value, boot)
    comparisons, model_rows = _comparisons(groups, kinds), model_comparisons(by_model)
    if escalate > 1:
        edge: dict[tuple, set] = {}  # sample set -> the metrics of its edge verdicts
        for c in comparisons:  # the verdict against the best baseline (the others keep their edge_baselines flag)
            for s in [c["crs"], c["best_baseline"]] if c["edge"] else []:
                edge.setdefault((entry_key(c), s, c["sampler"], c["nfe"]), set()).add(c["metric"])
        for c in model_rows:
            for m in finetune_models()[0] if c["edge"] else []:
                key = variant_key(m, c.get("guidance"))
                edge.setdefault((key, c["schedule"], c["sampler"], c["nfe"]), set()).add(c["metric"])
        for name in tqdm(sorted(edge, key=str), desc="edge verdicts", disable=not progress, leave=False):
            entry = entries[name]
            samples, gen_features = _entry_samples(entry, features)
            n = len(samples) if samples is not None else len(gen_features)
            if gen_features is None and features is not None:
                gen_features = computed[name] if name in computed else features(samples)
            full = bootstrap_indices(n, escalate * n_boot, seed)
            suffix = f"_{features.name}" if features is not None else ""
            families = {m if m in METRICS else m.removesuffix(suffix) for m in edge[name]}
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
    if reference is None:
        ref_name = "none (no dataset)"
    else:
        ref_name = reference.get("name", "statistics") if isinstance(reference, dict) else f"{len(reference)} samples"
    return {
        "rows": rows,
        "comparisons": comparisons,
        "model_comparisons": model_rows,
        "features": features.name if features is not None else None,
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
    ``search_options`` and ``search_models`` (the models searched for; None: all); ``guidance`` (the scales
    conditional models are sampled with, :func:`model_variants`; None: as they are), ``labels`` (their condition
    source, :func:`crs.conditioning.condition_source`; ``"data"``) and ``prompts`` (a text-conditional model's,
    :func:`crs.prompts.prompt_table`; recorded in the index for notebook 05's teachers).
    """
    import crs
    from crs.conditioning import condition_source, conditioning_of
    from crs.io import atomic_write_json
    from crs.metrics import make_feature_extractor
    from crs.optimize import schedule_functions, schedule_kinds
    from crs.schedules import fit_schedule

    state = process_state()
    run_dir = Path(spec["run_dir"])
    data = make_data(spec["dataset"], spec["dataset_kwargs"])  # None: a model without its dataset
    device = process_device(spec["device"], state)
    denoisers = resolve_models(spec["models"], run_dir, data, device, prompts=spec.get("prompts"))
    schedule = fit_schedule(crs.export.as_schedule(spec["schedule"]), denoisers)
    schedules = schedule_functions(schedule, spec["baselines"])
    kinds = {**schedule_kinds(spec["baselines"]), **{m: search_kind(m) for m in spec.get("search") or ()}}
    labels, guidance = spec.get("labels", "data"), spec.get("guidance")
    conditions = {n: c for n, d in denoisers.items() if (c := condition_source(d, data, labels)) is not None}
    if spec.get("search"):
        chosen = spec.get("search_models")
        searched = denoisers if chosen is None else {k: v for k, v in denoisers.items() if k in chosen}
        guided = any(conditioning_of(d) is not None for d in searched.values())
        schedules.update(
            searched_schedules(
                searched,
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
                guidance=guidance if guided else None,
                conditions=conditions,
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
        guidance=guidance,
        conditions=conditions,
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
                **({"labels": labels, "guidance": guidance} if conditions else {}),
                **({"prompts": spec["prompts"]} if spec.get("prompts") is not None else {}),
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
    labels: object = None

    def describe(self) -> str:
        """One line: how many sets, which features and reference, the conditional models' labels and guidance
        scales, the teachers' own errors."""
        if self.reference is None:
            line = f"{len(self.index)} sample sets; no dataset: the teacher error alone"
        else:
            ref = self.reference["name"] if isinstance(self.reference, dict) else f"{len(self.reference)} samples"
            line = f"{len(self.index)} sample sets; features: {self.extractor.name}; reference: {ref}"
        if self.labels is not None:
            scales = sorted({e["guidance"] for e in self.index if "guidance" in e})
            line += f"; conditional models' labels: {self.labels!r}" + (
                " (class-balanced)" if self.labels == "balanced" else ""
            )
            line += f", guidance scales {[f'{w:g}' for w in scales]}" if scales else ""
        errors = {m: f"{e:.1e}" for m, e in self.teacher_errors.items()}
        return line + (f"; teachers' own errors: {errors}" if errors else "")

    @property
    def feature_name(self) -> str:
        """The features' name, as the metric names carry it (``fid_<name>``); "none" without a dataset."""
        return self.extractor.name if self.extractor is not None else "none"

    def keys(self, model: str) -> list[str]:
        """The sample sets' keys of ``model`` (:func:`variant_key`): its name, or one per guidance scale."""
        found = {(e.get("guidance", -1.0), entry_key(e)) for e in self.index if e["model"] == model}
        return [key for _, key in sorted(found)]

    def reference_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the reference's features (FID's reference side)."""
        if isinstance(self.reference, dict):
            return self.reference["mu"], self.reference["cov"]
        feats = self.extractor(torch.as_tensor(self.reference))
        return feats.mean(axis=0), np.cov(feats, rowvar=False)


def make_data(dataset, dataset_kwargs):
    """A stage's dataset, or None for a model given without one (``dataset: null``)."""
    from crs.data import make_dataset

    return None if dataset is None else make_dataset(dataset, **(dataset_kwargs or {}))


def evaluation_inputs(params: Mapping) -> EvaluationInputs:
    """Notebook 05's inputs from its (checked) parameters: the sample index of ``run_dir``, the reference (clean-fid
    statistics, fresh exact samples of analytic data seeded apart from the generated ones, or the held-out split of
    images), features of every set over several processes when ``num_processes > 1``, and the teacher solves
    behind ``teacher_error``. ValueError when ``plot_model`` was not sampled."""
    from crs.data import held_out
    from crs.io import read_json
    from crs.metrics import make_feature_extractor, reference_statistics
    from crs.models import resolve_device
    from crs.seeds import reference_seed

    p, run_dir = params, Path(params["run_dir"])
    doc = read_json(run_dir / "samples" / "index.json", "sample index (run notebook 04 first)")
    index, data = doc["entries"], make_data(p["dataset"], p["dataset_kwargs"])
    sampled = sorted({e["model"] for e in index})
    if p["plot_model"] not in sampled:
        raise ValueError(f"`plot_model` {p['plot_model']!r} was not sampled; sampled: {sampled}.")
    device = resolve_device(p["device"])
    if data is None:  # a model without its dataset: the teacher error alone (checked), no features, no reference
        teachers, errors = teacher_endpoints(doc, run_dir, None, device, p["teacher_steps"])
        return EvaluationInputs(index, None, None, None, teachers, errors, doc.get("labels"))
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
    return EvaluationInputs(index, data, extractor, reference, teachers, errors, doc.get("labels"))


def entry_features(entry: dict, extractor: FeatureExtractor) -> np.ndarray:
    """The features (N, F) of one sample set of the index: stored ones, or computed from its samples."""
    samples, feats = _entry_samples(entry, extractor)
    return feats if feats is not None else extractor(samples)
