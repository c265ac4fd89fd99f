"""Every value a stage takes, checked before any work: one validator per stage.

The notebooks call ``crs.run.checks.check_stage("<stage>", globals())`` in their first cell, and the batch
runner calls the same function for every stage of an experiment before the first stage starts
(``python -m crs check`` too), so one rule has one definition. A validator reads no data and loads no
model: names, types, ranges, nfe plans, step counts, counts, noise ranges, the format of references.
Each calls the engine's own checks (:mod:`crs.args`, :func:`crs.schedules.check_sigma_range`,
:func:`crs.sampling.check_nfe_plan`, ...), which the engine also applies when it is called directly.

Model references (folders that must exist, hub ids that must be reachable) need the file system or
the hub: :func:`check_model_reference` checks one; the batch runner applies it to every model an
experiment names that no stage of the run produces.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from crs.args import check_choice, check_int, check_number

__all__ = ["STAGE_CHECKS", "check_model_reference", "check_stage"]


def _common(seed, dataset, dataset_kwargs, progress=False, optional=False) -> None:
    from crs.data import check_dataset

    check_int("seed", seed, 0)
    if not (optional and dataset is None):  # a model without its dataset (stages 01, 04, 05)
        check_dataset(dataset, dataset_kwargs)
    if not isinstance(progress, bool):
        raise ValueError(f"`progress` must be true or false, got {progress!r}.")


def _str_list(name: str, value, allow_empty: bool = False) -> list:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"`{name}` must be a list of names, got {value!r}.")
    if not value and not allow_empty:
        raise ValueError(f"`{name}` must name at least one entry.")
    return list(value)


def _model_name(name: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"`{name}` must be a non-empty string (a name, folder or hub id), got {value!r}.")
    return value


def _device(device) -> str:
    from crs.args import resolve_device

    return resolve_device(device)


def _features(features) -> str:
    from crs.metrics import EXTRACTORS

    return check_choice("features", features, EXTRACTORS, what="feature extractor")


def _baselines(baselines) -> None:
    from crs.schedules import baseline_sigmas

    for name in _str_list("baselines", baselines, allow_empty=True):
        baseline_sigmas(name, 2)


def base_model(
    seed,
    dataset,
    dataset_kwargs,
    model,
    model_kwargs,
    sigma_data,
    sigma_min,
    sigma_max,
    train_steps,
    batch_size,
    lr,
    ema_decay,
    noise,
    checkpoint_every,
    sample_steps,
    n_show,
    progress=False,
    label_dropout=0.1,
    precond="edm",
) -> None:
    """Notebook 00."""
    from crs.networks import PRECONDITIONINGS
    from crs.schedules import check_sigma_range, check_steps
    from crs.training import TrainConfig, make_noise

    _common(seed, dataset, dataset_kwargs, progress)
    _model_name("model", model)
    check_choice("precond", precond, PRECONDITIONINGS, what="preconditioning")
    if not isinstance(model_kwargs, Mapping):
        raise ValueError(f"`model_kwargs` must be a mapping, got {model_kwargs!r}.")
    check_number("sigma_data", sigma_data, positive=True)
    check_sigma_range(sigma_min, sigma_max)
    TrainConfig(
        steps=train_steps,
        batch_size=batch_size,
        lr=lr,
        ema_decay=ema_decay,
        noise=noise,
        checkpoint_every=checkpoint_every,
        seed=seed,
        label_dropout=label_dropout,
    ).validate()
    make_noise(noise, sigma_min, sigma_max)  # e.g. 'crs' needs a schedule, which a base model has not
    check_steps(sample_steps)
    check_int("n_show", n_show, 1)
    if model == "train" and model_kwargs.get("num_classes") is not None:  # a class-conditional model to train
        from crs.data import dataset_classes

        check_int("num_classes", model_kwargs["num_classes"], 1)
        check_model_conditioning(
            "The model to train", model_kwargs["num_classes"], dataset_classes(dataset, dataset_kwargs)
        )


def rate_estimation(
    seed,
    dataset,
    dataset_kwargs,
    model,
    measure,
    compare_measures,
    sigma_min,
    sigma_max,
    grid_size,
    n_samples,
    features,
    device,
    progress=False,
    guidance=None,
    prompts=None,
    data_free=None,
) -> None:
    """Notebook 01 (``dataset`` may be None: a model without its dataset, rated on its own samples, ``data_free``
    or its default; ``sigma_min`` / ``sigma_max`` may be None: the model's own; ``guidance`` None or a scale >= 0,
    ``prompts`` None or a text model's prompts (:func:`crs.prompts.check_prompts`); whether the model is conditional
    is checked when it is loaded, and by the batch runner's preflight from its files)."""
    from crs.analytic import ANALYTIC
    from crs.prompts import check_prompts
    from crs.rate import check_rate_inputs

    _common(seed, dataset, dataset_kwargs, progress, optional=True)
    if _model_name("model", model) == "analytic" and dataset not in ANALYTIC:
        raise ValueError(
            f"model='analytic' needs an analytic dataset ({', '.join(ANALYTIC)}), got dataset={dataset!r}."
        )
    measures = [measure, *_str_list("compare_measures", compare_measures, allow_empty=True)]
    check_rate_inputs(measures, sigma_min, sigma_max, grid_size, n_samples)
    if guidance is not None:
        check_number("guidance", guidance, minimum=0)
    check_prompts(prompts)
    check_data_free(data_free)
    _features(features)
    _device(device)


def check_data_free(data_free) -> None:
    """``data_free``: None (the dataset's samples) or ``{"n": pool size >= 2, "steps": even Heun steps >= 2,
    "batch_size": samples per network call}`` (the
    model's own samples, :class:`crs.model_data.ModelSamples`), either key optional; ValueError otherwise."""
    if data_free is None:
        return
    if not isinstance(data_free, Mapping) or set(data_free) - {"n", "steps", "batch_size"}:
        raise ValueError(
            f"`data_free` must be None or a mapping with `n`, `steps` and `batch_size` (e.g. {{n: 2048, steps: 64}}), "
            f"got {data_free!r}."
        )
    check_int("data_free.n", data_free.get("n", 1024), 2)
    check_int("data_free.batch_size", data_free.get("batch_size", 256), 1)
    steps = check_int("data_free.steps", data_free.get("steps", 64), 2)
    if steps % 2:
        raise ValueError(f"`data_free.steps` must be even (the solve's error estimate halves it), got {steps}.")


def schedule_optimization(xi, steps, smoothing, baselines, diagnostic_steps) -> None:
    """Notebook 02."""
    from crs.optimize import check_xi
    from crs.schedules import check_steps

    check_xi(xi)
    if isinstance(steps, (str, bytes)) or not isinstance(steps, (list, tuple)) or not steps:
        raise ValueError(f"`steps` must be a non-empty list of step counts, got {steps!r}.")
    for n in [*steps, diagnostic_steps]:
        check_steps(n)
    check_number("smoothing", smoothing, minimum=0)
    _baselines(baselines)


def training_schedule_finetune(
    seed,
    dataset,
    dataset_kwargs,
    base_model,
    schedule,
    crs_noise,
    control_noise,
    finetune_steps,
    batch_size,
    lr,
    ema_decay,
    checkpoint_every,
    online_every,
    online_measure,
    online_grid,
    online_samples,
    xi,
    eval_levels,
    eval_samples,
    num_processes,
    finetune_seeds=(),
    progress=False,
) -> None:
    """Notebook 03 (``base_model`` / ``schedule`` "" mean the run folder's own)."""
    from crs.training import TrainConfig

    _common(seed, dataset, dataset_kwargs, progress)
    for name, value in (("base_model", base_model), ("schedule", schedule)):
        if not isinstance(value, str):
            raise ValueError(f"`{name}` must be a string (a folder, or '' for the run folder's), got {value!r}.")
    check_choice("crs_noise", crs_noise, ("crs", "crs-online"))
    check_choice("control_noise", control_noise, ("edm", "logsnr", "cosine"))
    common = dict(
        steps=finetune_steps,
        batch_size=batch_size,
        lr=lr,
        ema_decay=ema_decay,
        checkpoint_every=checkpoint_every,
        seed=seed,
    )
    TrainConfig(
        noise=crs_noise,
        online_every=online_every,
        online_measure=online_measure,
        online_grid=online_grid,
        online_samples=online_samples,
        online_xi=xi,
        **common,
    ).validate()
    TrainConfig(noise=control_noise, **common).validate()
    check_int("eval_levels", eval_levels, 2)
    check_int("eval_samples", eval_samples, 1)
    check_int("num_processes", num_processes, 1)
    check_finetune_seeds(finetune_seeds, seed)


def check_finetune_seeds(finetune_seeds, seed) -> list[int]:
    """Further fine-tuning seeds: distinct integers >= 0, none of them the run's ``seed`` (already trained)."""
    if isinstance(finetune_seeds, (str, bool)) or not isinstance(finetune_seeds, (list, tuple)):
        raise ValueError(f"`finetune_seeds` must be a list of integers (e.g. [1, 2]), got {finetune_seeds!r}.")
    for s in finetune_seeds:
        check_int("finetune_seeds", s, 0)
    if len(set(finetune_seeds)) != len(finetune_seeds) or seed in finetune_seeds:
        raise ValueError(
            f"`finetune_seeds` must be distinct and differ from the run's seed {seed} (trained already), "
            f"got {list(finetune_seeds)}."
        )
    return [int(s) for s in finetune_seeds]


def check_guidance_scales(guidance) -> list[float] | None:
    """``guidance``: None (each model as it is) or a non-empty list of distinct scales >= 0; ValueError otherwise."""
    if guidance is None:
        return None
    if (
        not isinstance(guidance, (list, tuple))
        or not guidance
        or any(isinstance(w, bool) or not isinstance(w, (int, float)) for w in guidance)
        or any(not math.isfinite(w) or w < 0 for w in guidance)
    ):
        raise ValueError(
            f"`guidance` must be None or a non-empty list of guidance scales >= 0 (e.g. [1, 2, 4]), got {guidance!r}."
        )
    if len({float(w) for w in guidance}) < len(guidance):
        raise ValueError(f"`guidance` lists a scale twice: {list(guidance)}.")
    return [float(w) for w in guidance]


def sampling(
    seed,
    dataset,
    dataset_kwargs,
    models,
    schedule,
    baselines,
    samplers,
    nfe,
    n_samples,
    batch_size,
    device,
    num_processes,
    store,
    features,
    keep,
    show_sampler,
    search=(),
    search_options=None,
    search_models=None,
    progress=False,
    guidance=None,
    labels="data",
    prompts=None,
) -> None:
    """Notebook 04 (whether a model is conditional, for ``guidance``, ``labels`` and ``prompts``, is checked when it is
    loaded, and by the batch runner's preflight from its files; ``dataset`` None: a model without its dataset, its
    samples stored for the teacher error, its labels 'balanced' or listed)."""
    from crs.conditioning import check_label_source
    from crs.prompts import check_prompts
    from crs.sampling import check_nfe_plan
    from crs.search import METHODS, check_options

    _common(seed, dataset, dataset_kwargs, progress, optional=True)
    check_guidance_scales(guidance)
    check_label_source(labels)
    check_prompts(prompts)
    if dataset is None:  # a model without its dataset: samples to judge by the teacher error, labels of its own
        if store != "samples":
            raise ValueError("Without a dataset (`dataset: null`) store samples: features serve FID, which needs one.")
        if labels == "data":
            raise ValueError(
                "Without a dataset (`dataset: null`) there are no label shares to draw: give `labels` 'balanced' or "
                "a list."
            )
    for name in _str_list("models", models):
        _model_name("models", name)
    if not isinstance(schedule, str):
        raise ValueError(f"`schedule` must be a path, or '' for the run folder's schedule.json, got {schedule!r}.")
    _baselines(baselines)
    check_nfe_plan(_str_list("samplers", samplers), nfe)
    options = search_options or {}
    if not isinstance(options, dict):
        raise ValueError(f"`search_options` must be a mapping, got {options!r}.")
    common = {k: v for k, v in options.items() if k not in METHODS}
    for method in _str_list("search", search, allow_empty=True):
        check_options(method, {**common, **options.get(method, {})})
    if search_models is not None:
        unknown = sorted(set(_str_list("search_models", search_models, allow_empty=True)) - set(models))
        if unknown:
            raise ValueError(f"`search_models` {unknown} are not among the sampled `models` {list(models)}.")
    if search and set(samplers) <= {"edm"}:
        raise ValueError("`search` needs a deterministic sampler (euler, heun, dpmpp_2m) among `samplers`.")
    if show_sampler not in samplers:
        raise ValueError(f"`show_sampler` {show_sampler!r} is not among the samplers {samplers}.")
    processes = check_int("num_processes", num_processes, 1)
    if check_int("n_samples", n_samples, 1) < processes:
        raise ValueError(
            f"`n_samples` ({n_samples}) must be at least `num_processes` ({processes}): every process draws a share."
        )
    check_int("batch_size", batch_size, 1)
    check_int("keep", keep, 0)
    check_choice("store", store, ("samples", "features"))
    _features(features)
    _device(device)


def evaluation(
    seed,
    dataset,
    dataset_kwargs,
    features,
    device,
    metrics,
    n_boot,
    n_reference,
    reference,
    num_processes,
    k,
    plot_model,
    teacher_steps=256,
    progress=False,
    escalate=3,
) -> None:
    """Notebook 05 (whether ``plot_model`` was sampled is checked against the samples' index; ``dataset`` None: a
    model without its dataset, scored by the teacher error alone)."""
    from crs.metrics import check_metrics, check_reference

    _common(seed, dataset, dataset_kwargs, progress, optional=True)
    check_metrics(metrics)
    if dataset is None and list(metrics) != ["teacher_error"]:
        raise ValueError(
            f"Without a dataset (`dataset: null`) only the teacher error can be scored (the others compare with "
            f"reference images): give `metrics: [teacher_error]`, got {list(metrics)}."
        )
    for name, value in (("n_boot", n_boot), ("n_reference", n_reference), ("k", k)):
        check_int(name, value, 2)
    check_reference(reference, _features(features))
    check_int("num_processes", num_processes, 1)
    check_int("escalate", escalate, 1)
    if check_int("teacher_steps", teacher_steps, 2) % 2:
        raise ValueError(f"`teacher_steps` must be even (the teacher's error estimate halves it), got {teacher_steps}.")
    _model_name("plot_model", plot_model)
    _device(device)


STAGE_CHECKS = {
    "base_model": base_model,
    "rate_estimation": rate_estimation,
    "schedule_optimization": schedule_optimization,
    "training_schedule_finetune": training_schedule_finetune,
    "sampling": sampling,
    "evaluation": evaluation,
}


def check_stage(stage: str, values: Mapping[str, Any]) -> None:
    """Check a stage's values (e.g. a notebook's ``globals()``); ValueError naming the first bad one.

    Args:
        stage: a key of :data:`STAGE_CHECKS` (the notebook's name without its number).
        values: at least every parameter the stage's validator names; other entries are ignored.
    """
    check = STAGE_CHECKS[check_choice("stage", stage, STAGE_CHECKS, what="stage")]
    names = [p for p in inspect.signature(check).parameters]
    missing = [
        n
        for n in names
        if n not in values and inspect.signature(check).parameters[n].default is inspect.Parameter.empty
    ]
    if missing:
        raise ValueError(f"The values of stage {stage!r} lack {missing}.")
    check(**{n: values[n] for n in names if n in values})


def check_model_conditioning(
    model: str,
    num_classes: int | None,
    data_classes: int | None,
    *,
    labels="data",
    guidance=None,
    text: bool = False,
    prompts=None,
    text_encoder: bool = True,
    sampling: bool = False,
) -> None:
    """A model's conditioning against what a stage gives it, before any work: a class-conditional model
    (``num_classes``) drawing its labels from the data (``labels="data"``, as rate estimation and training always do)
    needs a labelled dataset (``data_classes``, None: unlabelled) with at most as many classes (its labels are the
    model's), unless ``guidance`` is 0 (its unconditional branch: the data's own rate); listed labels must be the
    model's; a guidance scale needs a conditional model.

    A text-conditional model (``text``) needs ``prompts`` (a list, embedded with the pipeline's own text encoder,
    which it must then have (``text_encoder``), or an embeddings file): their count plays the classes' part (a
    labelled dataset's label ``k`` is prompt ``k``; for ``sampling``, ``labels="data"`` draws the prompts uniformly).
    ``prompts`` for a model without text conditioning are refused.

    Raises:
        ValueError: naming the model, both counts and what to change.
    """
    if not text and prompts is not None:
        raise ValueError(f"`prompts` are for a text-conditional model; {model!r} takes none (give None).")
    if text:
        if prompts is None:
            raise ValueError(
                f"{model!r} is text-conditional: give `prompts`, a list of prompts (embedded with its own text "
                "encoder) or the path of a prompt embeddings file."
            )
        if not isinstance(prompts, str) and not text_encoder:
            raise ValueError(
                f"{model!r} lacks the text encoders and tokenizers to embed the `prompts` list with: give the path "
                "of a prompt embeddings file (crs.prompts.PromptTable(...).save(path))."
            )
        if isinstance(prompts, str):
            return  # the file's prompt count is read when it is loaded
        num_classes = len(prompts)
        if sampling and labels == "data":
            return  # the prompts uniformly
    if num_classes is None:
        if guidance is not None:
            raise ValueError(f"`guidance` = {guidance!r} needs a conditional model; {model!r} is unconditional.")
        return
    what = "prompts" if text else "classes"
    if labels == "data" and data_classes is None and guidance != 0:
        raise ValueError(
            f"{model!r} is {'text' if text else 'class'}-conditional ({num_classes} {what}) and takes its labels from "
            "the data, which has none: use a labelled dataset, or guidance 0 (the unconditional branch: the rate of "
            "the data itself), or (sampling) labels 'balanced' or a list."
        )
    if labels == "data" and data_classes is not None and data_classes > num_classes:  # fewer: the model's first ones
        raise ValueError(f"{model!r} has {num_classes} {what} and the dataset more classes, {data_classes}.")
    if isinstance(labels, (list, tuple)) and labels and max(labels) >= num_classes:
        raise ValueError(f"`labels` {list(labels)} name {what} {model!r} does not have (it has {num_classes}).")


def check_model_reference(model: str, root=".", data_shape=None) -> str:
    """A model the notebooks load by name must be there, and be one they can use, before any stage runs.

    ``"analytic"`` passes; a folder (relative to ``root``, the run folder the stages run in) must exist;
    anything else of the form ``org/name`` must be a hub id in the local cache or reachable (this
    downloads it when there is a network; offline it fails in seconds). What is found is read from its JSON files
    (:func:`crs.models.describe_model`, no weights): a network the loaders support, making samples of
    ``data_shape`` (one sample's shape of the stage's dataset) when given. Returns where it was found.

    Raises:
        ValueError: no such folder and not a reachable hub id, a model the loaders do not support, or one whose
            samples have another shape than the data's (the message says what to do).
    """
    from crs.models import check_model_data, describe_model, locate_model

    if _model_name("model", model) == "analytic":
        return model
    where = locate_model(model, root)
    check_model_data(describe_model(where), model, data_shape)
    return str(where)
