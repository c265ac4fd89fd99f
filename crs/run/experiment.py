"""Experiments as params files, and the batch runner that executes the notebooks with papermill.

A params file (``params/<experiment>.yaml``) describes one experiment::

    experiment: demo            # name; the run folder defaults to runs/<experiment>
    common:                     # given to every stage whose notebook has the parameter
      seed: 0
      dataset: digits
    stages:                     # one section per stage, by name (the notebook without its number)
      base_model: {train_steps: 1500}
      rate_estimation: {measure: data}

Before anything runs, every key is checked against the parameters of the notebook it goes to
(``papermill.inspect_notebook``): papermill itself only warns about unknown parameters.

:func:`run_experiment` executes the stages in order into the run folder (executed notebooks named
like their sources), every stage with ``run_dir="."`` and the run folder as working directory, so
artifacts pass from stage to stage and no machine path enters a notebook. A stage whose notebook,
parameters and upstream stages are unchanged since its last successful run, and whose outputs are as it left
them (:mod:`crs.run.artifacts`), is skipped; a failed stage is rerun (training resumes from its checkpoint) and
earlier stages' artifacts stay as they were. A stage whose outputs changed or vanished since it ran is rerun, and
every stage after it; a run that leaves such a stage out (``--stages``) but runs a later one is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from crs.io import atomic_write_json
from crs.run.artifacts import output_problem, record_outputs

__all__ = [
    "DRY_RUN",
    "STAGES",
    "ExperimentError",
    "dry_run",
    "load_params",
    "notebook_defaults",
    "parse_override",
    "preflight",
    "run_experiment",
    "run_locations",
    "sweep",
    "validate_params",
]

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
STAGES = {
    "base_model": "00_base_model",
    "rate_estimation": "01_rate_estimation",
    "schedule_optimization": "02_schedule_optimization",
    "training_schedule_finetune": "03_training_schedule_finetune",
    "sampling": "04_sampling",
    "evaluation": "05_evaluation",
}
RECORDS = ".stages"


# Tiny sizes for a dry run: every stage of an experiment executes on the CPU in a minute or two, so a
# GPU experiment never fails on a typo or a shape after the queue wait. Sizes not listed stay as given.
DRY_RUN = {
    "base_model": {"train_steps": 2, "batch_size": 4, "checkpoint_every": 1, "sample_steps": 2, "n_show": 4},
    "rate_estimation": {"grid_size": 2, "n_samples": 40},
    "training_schedule_finetune": {
        "finetune_steps": 2,
        "batch_size": 4,
        "checkpoint_every": 1,
        "online_every": 1,
        "online_grid": 2,
        "online_samples": 8,
        "eval_levels": 2,
        "eval_samples": 8,
    },
    "sampling": {
        "n_samples": 8,
        "batch_size": 8,
        "search_options": {
            "n": 4,
            "teacher_steps": 8,
            "optimal": {"init": "best", "maxiter": 2},
            "crs-select": {"grid_size": 2, "n_samples": 8, "xis": [1.0]},
            "gits": {"grid": 24, "substeps": 1},
        },
    },
    "evaluation": {"n_boot": 2, "n_reference": 16, "teacher_steps": 8},
}


class ExperimentError(ValueError):
    """A params file or a stage is wrong; the message names the key, the stage and the choices."""


def notebook_parameters(stage: str, notebooks: Path = NOTEBOOKS) -> dict[str, Any]:
    """The parameters a stage's notebook declares (name -> papermill's description)."""
    import papermill

    return papermill.inspect_notebook(str(notebooks / f"{STAGES[stage]}.ipynb"))


def notebook_defaults(stage: str, notebooks: Path = NOTEBOOKS) -> dict[str, Any]:
    """The default values of a stage's parameters (its notebook's ``parameters`` cell, read as Python literals)."""
    import ast

    return {name: ast.literal_eval(p["default"]) for name, p in notebook_parameters(stage, notebooks).items()}


# Models the stages of a run write under run_dir/models/, by stage.
PRODUCES = {"base_model": ("base",), "training_schedule_finetune": ("crs", "control")}


def _model_references(params: dict, wanted: list[str], run_dir: Path) -> list[tuple[str, str, str]]:
    """``(stage, key, model)`` for every model the stages load that no stage of this run writes."""
    made = {name for stage in wanted for name in PRODUCES.get(stage, ())}
    if "training_schedule_finetune" in wanted:  # and the pairs of further seeds
        from crs.run.jobs import finetune_models

        seeds = params["stages"].get("training_schedule_finetune", {}).get("finetune_seeds", [])
        made |= {name for pair in finetune_models(seeds if isinstance(seeds, list) else []) for name in pair}
    made |= {p.name for p in (run_dir / "models").iterdir()} if (run_dir / "models").is_dir() else set()
    stages = params["stages"]
    refs = []
    if "base_model" in wanted and stages.get("base_model", {}).get("model", "train") != "train":
        refs.append(("base_model", "model", stages["base_model"]["model"]))
    if "rate_estimation" in wanted:
        refs.append(("rate_estimation", "model", stages.get("rate_estimation", {}).get("model", "analytic")))
    if "training_schedule_finetune" in wanted:
        refs.append(
            (
                "training_schedule_finetune",
                "base_model",
                stages.get("training_schedule_finetune", {}).get("base_model") or "models/base",
            )
        )
    if "sampling" in wanted:
        defaults = notebook_defaults("sampling")["models"]
        refs += [("sampling", "models", m) for m in stages.get("sampling", {}).get("models", defaults)]
    out = []
    for stage, key, model in refs:
        name = model[len("models/") :] if isinstance(model, str) and model.startswith("models/") else model
        if model != "analytic" and name not in made:
            out.append((stage, key, model))
    return out


def preflight(params: dict, stages: Iterable[str] | None = None) -> dict[str, str]:
    """Check every value of every stage to run before the first one starts (what ``python -m crs check`` does).

    Each stage's values (its notebook's defaults, the common keys, its section) go through the validator its
    notebook calls (:func:`crs.run.checks.check_stage`); then every model the stages load that this run does not
    write must be there: a folder (relative to the run folder) or a hub id in the cache or reachable; then the
    outputs of the stages already run in the run folder must be as they left them (:func:`changed_outputs`).

    Returns:
        ``{stage: problem}`` for the stages to run whose outputs changed since they ran (they will run again).

    Raises:
        ExperimentError: naming the stage and the problem; nothing has been written.
    """
    from crs.data import dataset_shape
    from crs.run.checks import check_model_reference, check_stage

    run_dir = Path(params["run_dir"])
    wanted = _wanted(params, stages)
    values = {}
    for stage in wanted:
        declared = notebook_parameters(stage)
        values[stage] = {**notebook_defaults(stage), **stage_parameters(params, stage, declared)}
        kwargs = values[stage].get("dataset_kwargs") or {}
        if (
            values[stage].get("dataset") == "folder"
            and "path" in kwargs
            and not Path(str(kwargs["path"])).is_absolute()
        ):
            values[stage]["dataset_kwargs"] = dict(
                kwargs, path=str(run_dir / kwargs["path"])
            )  # stages run in the run folder
        try:
            check_stage(stage, values[stage])
        except ValueError as exc:
            raise ExperimentError(f"Stage {stage!r} ({STAGES[stage]}.ipynb): {exc}") from exc
    if (
        "sampling" in values
        and "evaluation" in values
        and values["evaluation"]["plot_model"] not in values["sampling"]["models"]
    ):
        raise ExperimentError(
            f"Stage 'evaluation': `plot_model` {values['evaluation']['plot_model']!r} is not among the sampled "
            f"models {values['sampling']['models']}."
        )
    for stage, key, model in _model_references(params, wanted, run_dir):
        try:
            data = values[stage].get("dataset")
            shape = dataset_shape(data, values[stage].get("dataset_kwargs") or {}) if data else None
            check_model_reference(model, run_dir, shape)
        except ValueError as exc:
            raise ExperimentError(f"Stage {stage!r}, `{key}`: {exc}") from exc
    _check_conditioning(values, run_dir)
    return changed_outputs(run_dir, wanted)


_UNKNOWN = object()  # a model whose conditioning preflight cannot read (e.g. a hub id not in the cache)


def _model_classes(model: str, values: dict, run_dir: Path, stage: str):
    """A model's conditioning as the stages will load it, ``{"num_classes", "text", "text_encoder"}``
    (:func:`crs.models.describe_model`; ``num_classes`` None: no classes; :data:`_UNKNOWN`: not readable here): the
    exact denoiser's classes from the data's labels, the models this run trains from stage 00's ``model_kwargs``, any
    other from its files."""
    from crs.data import dataset_classes
    from crs.models import describe_model, locate_model

    def classes(n):
        return {"num_classes": n, "text": False, "text_encoder": False}

    def read(where):
        found = describe_model(where)
        return {k: found[k] for k in ("num_classes", "text", "text_encoder")}

    if model == "analytic":
        return classes(dataset_classes(values[stage]["dataset"], values[stage].get("dataset_kwargs") or {}))
    name = model[len("models/") :] if model.startswith("models/") else model
    base = values.get("base_model")
    if base is not None and (name in PRODUCES["base_model"] or name in _finetuned(values)):
        if base.get("model", "train") == "train":
            return classes(base.get("model_kwargs", {}).get("num_classes"))
        return _model_classes(base["model"], values, run_dir, stage) if base["model"] != model else _UNKNOWN
    for where in (run_dir / "models" / name, run_dir / model, Path(model)):
        if where.is_dir():
            try:
                return read(where)
            except ValueError:
                return _UNKNOWN  # the model-reference check names it
    if name in _finetuned(values) and "base_model" not in values:  # fine-tuned in this run from another base
        source = values.get("training_schedule_finetune", {}).get("base_model") or "models/base"
        return _model_classes(source, values, run_dir, stage) if source != model else _UNKNOWN
    try:
        return read(locate_model(model, run_dir))
    except ValueError:
        return _UNKNOWN


def _finetuned(values: dict) -> set[str]:
    """The models stage 03 of these values writes."""
    from crs.run.jobs import finetune_models

    seeds = values.get("training_schedule_finetune", {}).get("finetune_seeds") or []
    return {name for pair in finetune_models(seeds if isinstance(seeds, list) else []) for name in pair}


def _check_conditioning(values: dict, run_dir: Path) -> None:
    """Conditional models against the data and the guidance the stages give them (ExperimentError before any
    stage): stage 01's model and stage 04's models (:func:`crs.run.checks.check_model_conditioning`)."""
    from crs.data import dataset_classes
    from crs.run.checks import check_model_conditioning

    def data_classes(stage, found=None):
        if stage == "rate_estimation" and values[stage].get("dataset") is None:
            # the model's own samples: drawn for every one of its classes (a text model's: its prompts); with a
            # dataset given too, notebook 01 also rates the model on it, which the check below covers
            if found is None or found is _UNKNOWN:
                return None
            prompts = values[stage].get("prompts")
            return found["num_classes"] or (len(prompts) if isinstance(prompts, list) and found["text"] else None)
        if values[stage].get("dataset") is None:  # no dataset: labels are 'balanced' or listed (checked)
            return None
        return dataset_classes(values[stage]["dataset"], values[stage].get("dataset_kwargs") or {})

    def check(model, found, stage, prompts, **kwargs):
        if isinstance(prompts, str) and not (run_dir / prompts).is_file() and not Path(prompts).is_file():
            raise ValueError(f"No prompt embeddings file at {prompts!r} (relative to the run folder {str(run_dir)!r}).")
        if found is not _UNKNOWN:
            check_model_conditioning(
                model,
                found["num_classes"],
                data_classes(stage, found),
                text=found["text"],
                prompts=prompts,
                text_encoder=found["text_encoder"],
                **kwargs,
            )

    if "rate_estimation" in values:
        v = values["rate_estimation"]
        found = _model_classes(v["model"], values, run_dir, "rate_estimation")
        try:
            check(v["model"], found, "rate_estimation", v.get("prompts"), guidance=v.get("guidance"))
        except ValueError as exc:
            raise ExperimentError(f"Stage 'rate_estimation', `model`: {exc}") from exc
    if "sampling" in values:
        v = values["sampling"]
        found = {m: _model_classes(m, values, run_dir, "sampling") for m in v["models"]}
        labels, guidance, prompts = v.get("labels", "data"), v.get("guidance"), v.get("prompts")
        known = {m: d for m, d in found.items() if d is not _UNKNOWN}
        try:
            for m, described in known.items():  # the prompts go to the text-conditional models only
                check(m, described, "sampling", prompts if described["text"] else None, labels=labels, sampling=True)
            if len(known) == len(found):
                if prompts is not None and not any(d["text"] for d in known.values()):
                    raise ValueError(f"`prompts` are for a text-conditional model; none of {v['models']} is one.")
                if guidance is not None and all(d["num_classes"] is None and not d["text"] for d in known.values()):
                    raise ValueError(
                        f"`guidance` {guidance} needs a conditional model; every one of {v['models']} is unconditional."
                    )
        except ValueError as exc:
            raise ExperimentError(f"Stage 'sampling': {exc}") from exc


def _read_record(run_dir: Path, stage: str) -> dict:
    """A stage's run record (``.stages/<stage>.json``); {} when there is none or it is not JSON (as never run)."""
    try:
        return json.loads((run_dir / RECORDS / f"{stage}.json").read_text())
    except (OSError, ValueError):
        return {}


def changed_outputs(run_dir, wanted: list[str]) -> dict[str, str]:
    """The completed stages up to the last of ``wanted`` whose outputs changed since they ran (see crs.run.artifacts).

    Returns:
        ``{stage: problem}`` for those among ``wanted``: they (and every stage after them) must run again.

    Raises:
        ExperimentError: such a stage is not among ``wanted`` but a later stage is (it would read the changed files).
    """
    run_dir, names = Path(run_dir), list(STAGES)
    last = max((names.index(s) for s in wanted), default=-1)
    problems = {}
    for stage in names[: last + 1]:
        record = _read_record(run_dir, stage)
        problem = output_problem(run_dir, dict(record, stage=stage)) if record.get("status") == "ok" else None
        if problem is None:
            continue
        if stage not in wanted:
            rerun = ",".join(names[names.index(stage) : last + 1])
            raise ExperimentError(f"{problem}: rerun that stage (--stages {rerun}) or the whole experiment.")
        problems[stage] = problem
    return problems


def _wanted(params: dict, stages: Iterable[str] | None) -> list[str]:
    """The stages to run, in pipeline order (ExperimentError for an unknown name)."""
    wanted = list(stages) if stages is not None else (list(params["stages"]) or list(STAGES))
    bad = sorted(set(wanted) - set(STAGES))
    if bad:
        raise ExperimentError(f"Unknown stage(s) {bad}; valid stages: {', '.join(STAGES)}.")
    return [s for s in STAGES if s in wanted]


def load_params(path) -> dict:
    """Read a params file (YAML) and validate it; returns ``{experiment, run_dir, common, stages}``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"No params file at {str(path)!r}.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ExperimentError(f"The params file {str(path)!r} is not valid YAML: {exc}") from exc
    return validate_params(raw, default_name=path.stem)


def validate_params(raw: dict, default_name: str = "experiment", notebooks: Path = NOTEBOOKS) -> dict:
    """Check every key of a params mapping against the notebooks; ExperimentError on the first problem."""
    if not isinstance(raw, dict):
        raise ExperimentError("A params file must hold a mapping with `experiment`, `common` and `stages`.")
    unknown_top = sorted(set(raw) - {"experiment", "run_dir", "common", "stages"})
    if unknown_top:
        raise ExperimentError(f"Unknown top-level key(s) {unknown_top}; valid: experiment, run_dir, common, stages.")
    stages = raw.get("stages") or {}
    common = raw.get("common") or {}
    if not isinstance(stages, dict) or not isinstance(common, dict):
        raise ExperimentError("`common` and `stages` must be mappings.")
    bad_stages = sorted(set(stages) - set(STAGES))
    if bad_stages:
        raise ExperimentError(f"Unknown stage(s) {bad_stages}; valid stages: {', '.join(STAGES)}.")
    declared = {stage: notebook_parameters(stage, notebooks) for stage in STAGES}
    every = set().union(*declared.values())
    for key in common:
        if key == "run_dir" or key not in every:
            raise ExperimentError(
                f"Unknown common key {key!r}; valid common keys: {', '.join(sorted(every - {'run_dir'}))}."
            )
    for stage, section in stages.items():
        section = section or {}
        if not isinstance(section, dict):
            raise ExperimentError(f"The section of stage {stage!r} must be a mapping of parameters.")
        for key in section:
            if key == "run_dir" or key not in declared[stage]:
                valid = ", ".join(sorted(set(declared[stage]) - {"run_dir"}))
                raise ExperimentError(
                    f"Unknown key {key!r} in stage {stage!r} ({STAGES[stage]}.ipynb); valid keys: {valid}."
                )
    name = str(raw.get("experiment") or default_name)
    return {
        "experiment": name,
        "run_dir": str(raw.get("run_dir") or f"runs/{name}"),
        "common": dict(common),
        "stages": {stage: dict(stages.get(stage) or {}) for stage in STAGES if stage in stages},
    }


def parse_override(text: str) -> tuple[str | None, str, Any]:
    """``stage.key=value`` or ``key=value`` (common) -> (stage or None, key, YAML-parsed value)."""
    import yaml

    target, sep, value = text.partition("=")
    if not sep or not target:
        raise ExperimentError(f"An override is 'key=value' or 'stage.key=value', got {text!r}.")
    stage, _, key = target.rpartition(".")
    return (stage or None), key, yaml.safe_load(value)


def apply_overrides(params: dict, overrides: Iterable[str]) -> dict:
    """A copy of ``params`` with ``stage.key=value`` / ``key=value`` overrides, validated again."""
    params = copy.deepcopy(params)
    for text in overrides:
        stage, key, value = parse_override(text)
        if stage is None:
            params["common"][key] = value
        else:
            params["stages"].setdefault(stage, {})[key] = value
    raw = {
        "experiment": params["experiment"],
        "run_dir": params["run_dir"],
        "common": params["common"],
        "stages": params["stages"],
    }
    return validate_params(raw)


def _hub_cached(model: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model, "model_index.json"), str)
    except Exception:
        return False


def _stand_in_models(params: dict, run_dir: Path, log, side: int | None = None) -> dict[str, str]:
    """Tiny local pipelines for the hub models of an experiment that are not at hand (see KNOWN_PIPELINES), at the
    hub model's image size, or ``side`` px (a latent model's autoencoder then shrinks each side at most to 8)."""
    from crs.run.standins import KNOWN_PIPELINES, build_tiny_pipeline

    stages = params["stages"]
    names = [stages.get("rate_estimation", {}).get("model")] + list(stages.get("sampling", {}).get("models") or [])
    mapping = {}
    for name in dict.fromkeys(n for n in names if isinstance(n, str)):
        local = (
            (run_dir / name).exists() or name.split("/")[0] == "models" or name == "analytic"
        )  # models/ is made by the run
        if local or name.count("/") != 1 or _hub_cached(name):
            continue
        if name not in KNOWN_PIPELINES:
            raise ExperimentError(
                f"The hub model {name!r} is not in the local cache and has no stand-in for a dry run; "
                f"known: {', '.join(KNOWN_PIPELINES)}. Download it once or point at a local folder."
            )
        kind, shape, *extra = KNOWN_PIPELINES[name]
        extra = dict(extra[0]) if extra else {}
        if side is not None and side != shape[1]:
            shape = (shape[0], side, side)
            if kind != "ddpm":  # a latent kind: its autoencoder shrinks each side, to no less than 8
                extra["latent_factor"] = max(2, min(extra.get("latent_factor", 2), side // 8))
        folder = Path("standins") / name.replace("/", "--")
        if not (run_dir / folder / "model_index.json").is_file():
            build_tiny_pipeline(run_dir / folder, kind, shape, **extra)
        size = "of the same shape" if side is None else f"at {shape[1]} px"
        log(f"[dry run] {name} is not here: a tiny untrained {kind} pipeline {size} stands in ({folder})")
        mapping[name] = str(folder)
    return mapping


def _stand_in_data(params: dict, run_dir: Path, log, side: int | None = None) -> None:
    """A folder dataset that is not here (it lives on the GPU machine) becomes real digits of the same shape (or of
    ``side`` px)."""
    common = params["common"]
    kwargs = common.get("dataset_kwargs") or {}
    if common.get("dataset") != "folder" or (run_dir / str(kwargs.get("path", ""))).is_dir():
        return
    side = side or kwargs.get("resolution") or 32
    common["dataset"], common["dataset_kwargs"] = "digits", {"resolution": side, "channels": kwargs.get("channels", 3)}
    log(f"[dry run] the image folder {kwargs.get('path')!r} is not here: scikit-learn's digits at {side} px stand in")


def dry_run(params: dict, log=print, device: str = "cpu", side: int | None = None) -> dict:
    """The experiment at tiny size, in ``<run_dir>-dry-run``: same stages, same keys, small numbers.

    Every stage keeps its parameters except the sizes in :data:`DRY_RUN`; each sampler's nfe list is cut to its
    smallest budget, sampling compares CRS with one baseline on one process and runs the schedule searches for its
    first model only (unless ``search_models`` says which), a data-free rate draws 8 model samples in 4 steps, a
    UNet keeps its levels at 8-16 channels and one layer per block, and ``device`` is ``device`` (``cpu`` by
    default; the GPU check runs it with ``cuda``, where training takes the GPU with bf16 through accelerate). What
    only the GPU machine has stands in: a hub model missing from the local cache becomes a tiny untrained pipeline
    of the same kind and shape (:data:`crs.run.standins.KNOWN_PIPELINES`), a missing image folder becomes real
    digits of the same size, clean-fid statistics become the held-out split and Inception features
    EfficientNet-Lite0 when clean-fid's weights are absent. All names are still validated by every stage.
    ``side`` (e.g. 32) builds the stand-ins and their digits at that image size instead of the hub model's: VAE passes
    over 256 or 512 px images take minutes on a CPU, and the stages, keys and checks are the same at 32 px.
    """
    from crs.metrics import INCEPTION_PATH

    params = copy.deepcopy(params)
    params["run_dir"] = f"{params['run_dir'].rstrip('/')}-dry-run"
    run_dir = Path(params["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    params["common"]["device"] = device
    if side is not None:
        from crs.args import check_int

        check_int("side", side, 16)
    models = _stand_in_models(params, run_dir, log, side)
    _stand_in_data(params, run_dir, log, side)
    for stage in list(params["stages"]) or list(STAGES):
        section = params["stages"].setdefault(stage, {})
        section.update(DRY_RUN.get(stage, {}))
        for key in ("model", "plot_model"):
            if section.get(key) in models:
                section[key] = models[section[key]]
        if "models" in section:
            section["models"] = [models.get(m, m) for m in section["models"]]
        if "num_processes" in section:
            section["num_processes"] = 1
        if str(section.get("reference", "test")) != "test":
            section["reference"] = "test"
        if stage == "sampling":
            nfe = section.get("nfe")
            if nfe is not None:
                section["nfe"] = {k: [min(v)] for k, v in nfe.items()} if isinstance(nfe, dict) else [min(nfe)]
            section["baselines"] = list(section.get("baselines") or ["karras"])[:1]
            if section.get("search_models") is None and len(section.get("models") or []) > 1:
                section["search_models"] = section["models"][:1]  # every search method, for one model
        no_data = section.get("dataset", params["common"].get("dataset", "")) is None
        if stage == "rate_estimation" and (section.get("data_free") or no_data):
            section["data_free"] = {"n": 8, "steps": 4}  # the model's own samples: a small pool, a short solve
        if stage == "base_model" and "block_out_channels" in section.get("model_kwargs", {}):
            levels = len(section["model_kwargs"]["block_out_channels"])
            section["model_kwargs"] = dict(
                section["model_kwargs"], block_out_channels=[8 * min(i + 1, 2) for i in range(levels)]
            )
            if "layers_per_block" in section["model_kwargs"]:
                section["model_kwargs"]["layers_per_block"] = 1
    for section in [params["common"], *params["stages"].values()]:
        if section.get("features") == "inception" and not Path(INCEPTION_PATH).is_file():
            section["features"] = "efficientnet-lite0"
    return validate_params({k: params[k] for k in ("experiment", "run_dir", "common", "stages")})


def stage_parameters(params: dict, stage: str, declared: dict) -> dict:
    """The parameters papermill gets for a stage: common keys it declares, its section, run_dir='.'."""
    values = {k: v for k, v in params["common"].items() if k in declared}
    values.update(params["stages"].get(stage, {}))
    values["run_dir"] = "."
    return values


def _fingerprint(stage: str, values: dict, upstream: str) -> str:
    source = (NOTEBOOKS / f"{STAGES[stage]}.ipynb").read_bytes()
    blob = json.dumps({"stage": stage, "params": values, "upstream": upstream}, sort_keys=True, default=str).encode()
    return hashlib.sha256(hashlib.sha256(source).digest() + blob).hexdigest()


def _kernel_options() -> dict:
    """What papermill's notebook client gets so that the stage's kernel runs with CurveZMQ transport encryption.

    ipykernel (7+) warns "Kernel is running over TCP without encryption" on every kernel started over TCP without
    keys; jupyter_client (8.8+) provisions the keys itself when asked (``KernelManager.transport_encryption``) and
    the kernelspec declares ``supported_encryption: curve`` (ipykernel's does). That option removes the cause of
    the warning, and only it; where pyzmq lacks CurveZMQ or jupyter_client the option, nothing is set.
    """
    import zmq
    from jupyter_client import KernelManager
    from traitlets.config import Config

    if not zmq.has("curve") or not KernelManager.class_traits().get("transport_encryption"):
        return {}
    return {"config": Config({"KernelManager": {"transport_encryption": "auto"}})}


def run_experiment(params: dict, stages: Iterable[str] | None = None, progress: bool = True, log=print) -> list[dict]:
    """Execute the stages of an experiment in order; returns one record per stage.

    Args:
        params: from :func:`load_params` (and :func:`apply_overrides`).
        stages: a subset of stage names to run (their order is the pipeline's); None runs all of
            those the params file names, or every stage when it names none.

    Raises:
        ExperimentError: a stage failed (its record says so; earlier stages are left intact).
    """
    import papermill

    run_dir = Path(params["run_dir"])
    wanted = _wanted(params, stages)
    changed = preflight(params, wanted)
    run_dir.mkdir(parents=True, exist_ok=True)
    records, upstream, forced = [], "", None
    for stage in wanted:
        declared = notebook_parameters(stage)
        values = stage_parameters(params, stage, declared)
        fingerprint = _fingerprint(stage, values, upstream)
        upstream = fingerprint
        record_path = run_dir / RECORDS / f"{stage}.json"
        previous = _read_record(run_dir, stage)
        output = run_dir / f"{STAGES[stage]}.ipynb"
        if stage in changed:  # it runs again, and so does every stage after it
            log(f"[{stage}] {changed[stage]}: running it again")
            forced = forced or stage
        if (
            forced is None
            and previous.get("status") == "ok"
            and previous.get("fingerprint") == fingerprint
            and output.is_file()
        ):
            if "outputs" not in previous:  # a record from before output hashes, its outputs checked: record them
                previous["outputs"] = record_outputs(run_dir, stage, values)
                atomic_write_json(record_path, previous)
            log(f"[{stage}] up to date, skipped")
            records.append(dict(previous, skipped=True))
            continue
        log(f"[{stage}] running {STAGES[stage]}.ipynb ...")
        start = time.perf_counter()
        record = {
            "stage": stage,
            "notebook": f"{STAGES[stage]}.ipynb",
            "parameters": values,
            "fingerprint": fingerprint,
        }
        try:
            papermill.execute_notebook(
                str(NOTEBOOKS / f"{STAGES[stage]}.ipynb"),
                str(output),
                parameters=values,
                cwd=str(run_dir),
                progress_bar=progress,
                kernel_name="python3",
                **_kernel_options(),
            )
        except papermill.PapermillExecutionError as exc:
            atomic_write_json(
                record_path,
                dict(record, status="failed", seconds=time.perf_counter() - start, error=f"{exc.ename}: {exc.evalue}"),
            )
            raise ExperimentError(
                f"Stage {stage!r} failed: {exc.ename}: {exc.evalue} (see {output}); "
                "earlier stages' results are intact, rerun to resume."
            ) from exc
        record.update(status="ok", seconds=time.perf_counter() - start, outputs=record_outputs(run_dir, stage, values))
        atomic_write_json(record_path, record)
        log(f"[{stage}] done in {record['seconds']:.1f} s")
        records.append(dict(record, skipped=False))
    return records


def sweep(params: dict, key: str, values: list, stages: Iterable[str] | None = None, log=print) -> list[dict]:
    """Run the experiment once per value of ``stage.key`` (or a common ``key``) in its own folder.

    The base run folder is run first; each value's folder ``<run_dir>/sweep/<key>=<value>`` starts
    as a copy of it, so the stages upstream of the swept one are up to date there and skipped.

    Returns:
        One summary row per value (from its ``metrics.json`` when the evaluation ran).
    """
    base = Path(params["run_dir"])
    variants = [
        apply_overrides(dict(params, run_dir=str(base / "sweep" / f"{key}={value}")), [f"{key}={json.dumps(value)}"])
        for value in values
    ]
    for variant in variants:  # every value checked before the base run starts
        preflight(dict(variant, run_dir=str(base)), stages)
    run_experiment(params, stages, log=log)
    rows = []
    for value, swept in zip(values, variants):
        folder = base / "sweep" / f"{key}={value}"
        if not folder.exists():
            shutil.copytree(base, folder, ignore=shutil.ignore_patterns("sweep", "report"))
        log(f"--- sweep {key}={value} -> {folder}")
        run_experiment(swept, stages, log=log)
        rows.append(dict(value=value, run_dir=str(folder), **summarise(folder)))
    atomic_write_json(base / "sweep" / f"summary_{key}.json", rows)
    return rows


def summarise(run_dir) -> dict:
    """Headline of a run: CRS against the best baseline over every comparison in ``metrics.json``, in its headline
    metric (notebook 05's: NLL where there is a density, else FID, else the teacher error, else any compared)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return {"comparisons": 0}
    comparisons = json.loads(path.read_text())["comparisons"]
    names = [c["metric"] for c in comparisons]
    fid = next((m for m in names if m.startswith("fid_")), None)
    headline = next((m for m in ("nll", fid, "teacher_error") if m in names), min(names, default=None))
    sel = [c for c in comparisons if c["metric"] == headline and c["ratio"] is not None]
    return {
        "metric": headline,
        "comparisons": len(sel),
        "crs_significantly_better": sum(c["significant"] and c["crs_better"] for c in sel),
        "crs_significantly_worse": sum(c["significant"] and not c["crs_better"] for c in sel),
        "median_ratio": sorted(c["ratio"] for c in sel)[len(sel) // 2] if sel else None,
    }


def run_locations(run_dir) -> list[str]:
    """The lines ``python -m crs run`` ends with: where the run folder, its metrics, report and site are.

    Only what exists is named: ``metrics.json`` and the summary command when the evaluation stage wrote it,
    ``report/index.html`` and ``site/index.html`` when they were built.
    """
    run_dir = Path(run_dir)
    lines = [f"run folder: {run_dir}"]
    if (run_dir / "metrics.json").is_file():
        lines.append(f"metrics:    {run_dir / 'metrics.json'}")
        lines.append(f"summary:    python -m crs summary {run_dir}")
    for name in ("report", "site"):
        if (run_dir / name / "index.html").is_file():
            lines.append(f"{name + ':':<11} {run_dir / name / 'index.html'}")
    return lines
