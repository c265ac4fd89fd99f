"""Every value checked before any stage runs: the stage validators (crs.run.checks) and the runner's preflight."""

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import crs
from crs.run.checks import STAGE_CHECKS, check_model_reference, check_stage
from crs.run.experiment import (
    STAGES,
    ExperimentError,
    apply_overrides,
    load_params,
    notebook_defaults,
    notebook_parameters,
    preflight,
)

ROOT = Path(__file__).resolve().parents[1]

# One bad value at a time on the smoke experiment: (override, stage named, message). Each is found before
# any stage runs, by the validator the stage's notebook calls, with nothing written.
BAD = [
    ("rate_estimation.measure=dat", "rate_estimation", "Unknown measure 'dat'"),
    ("sampling.samplers=[euler,ddim]", "sampling", "Unknown sampler 'ddim'"),
    ("evaluation.metrics=[fid,fidd]", "evaluation", r"Unknown metric\(s\) \['fidd'\]"),
    ("schedule_optimization.baselines=[karas]", "schedule_optimization", "Unknown baseline 'karas'"),
    ("sampling.baselines=[karras,cosin]", "sampling", "Unknown baseline 'cosin'"),
    ("dataset=gmmm", "base_model", "Unknown dataset 'gmmm'"),
    ("base_model.noise=uniform", "base_model", "Unknown noise distribution 'uniform'"),
    (
        "training_schedule_finetune.control_noise=uniform",
        "training_schedule_finetune",
        "Unknown `control_noise` 'uniform'",
    ),
    ("schedule_optimization.xi=-1", "schedule_optimization", "`xi` must be a positive finite number, got -1"),
    ("schedule_optimization.steps=[1,5]", "schedule_optimization", "A step count must be an integer >= 2, got 1"),
    ("base_model.sigma_min=100", "base_model", r"`sigma_min` \(100\) must be smaller than `sigma_max`"),
    ("rate_estimation.grid_size=1", "rate_estimation", "`grid_size` must be an integer >= 2, got 1"),
    ("rate_estimation.grid_size=many", "rate_estimation", "`grid_size` must be an integer >= 2, got 'many'"),
    ("sampling.nfe=[10]", None, None),  # euler spends any nfe >= 2: valid
    ("sampling.n_samples=-5", "sampling", "`n_samples` must be an integer >= 1, got -5"),
    ("evaluation.k=1", "evaluation", "`k` must be an integer >= 2, got 1"),
    ("evaluation.reference=tset", "evaluation", "Unknown reference 'tset'"),
    ("evaluation.plot_model=base", "evaluation", "`plot_model` 'base' is not among the sampled models"),
    (
        "training_schedule_finetune.finetune_steps=0",
        "training_schedule_finetune",
        "`steps` must be an integer >= 1, got 0",
    ),
    ("sampling.device=tpu", "sampling", "Unknown device 'tpu'"),
    ("sampling.search=[optimal,gist]", "sampling", "Unknown schedule search method 'gist'"),
    (
        "sampling.search_options={gits: {grids: 10}}",
        "sampling",
        r"Unknown option\(s\) \['grids'\] for the search method 'gits'",
    ),
    ("sampling.search_options={n: 0}", "sampling", "`n` must be an integer >= 1, got 0"),
    ("sampling.search_options={teacher_steps: 33}", "sampling", "`teacher_steps` must be even"),
    ("evaluation.teacher_steps=7", "evaluation", "`teacher_steps` must be even"),
    ("sampling.search_models=[crs,contrl]", "sampling", r"`search_models` \['contrl'\] are not among the sampled"),
    (
        "training_schedule_finetune.finetune_seeds=[1,0]",
        "training_schedule_finetune",
        r"`finetune_seeds` must be distinct and differ from the run's seed 0 \(trained already\), got \[1, 0\]",
    ),
    (
        "training_schedule_finetune.finetune_seeds=2",
        "training_schedule_finetune",
        r"`finetune_seeds` must be a list of integers \(e.g. \[1, 2\]\), got 2",
    ),
]


@pytest.fixture
def smoke(tmp_path):
    params = load_params(ROOT / "params" / "smoke.yaml")
    params["run_dir"] = str(tmp_path / "run")
    return params


@pytest.mark.parametrize("override,stage,msg", BAD, ids=[b[0] for b in BAD])
def test_every_bad_value_stops_before_any_stage(smoke, override, stage, msg):
    params = apply_overrides(smoke, [override])
    start = time.perf_counter()
    if stage is None:
        preflight(params)
        return
    with pytest.raises(ExperimentError, match=msg) as err:
        preflight(params)
    assert f"Stage '{stage}'" in str(err.value)
    assert time.perf_counter() - start < 5.0  # no data read, no model loaded (measured: under 0.1 s after the imports)
    assert not Path(params["run_dir"]).exists()  # nothing written


def test_heun_at_an_even_nfe_is_refused_before_any_stage(smoke):
    params = apply_overrides(
        smoke, ["sampling.samplers=[heun]", "sampling.nfe={heun: [5, 10]}", "sampling.show_sampler=heun"]
    )
    with pytest.raises(ExperimentError, match=r"Stage 'sampling'.*heun@10"):
        preflight(params)
    with pytest.raises(ExperimentError, match=r"no budgets for \['heun'\]"):
        preflight(apply_overrides(smoke, ["sampling.samplers=[heun]", "sampling.show_sampler=heun"]))


def test_models_that_are_not_there_are_named_before_any_stage(smoke, tmp_path):
    with pytest.raises(ExperimentError, match=r"Stage 'sampling', `models`: .*'nowhere/model'"):
        preflight(apply_overrides(smoke, ["sampling.models=[crs,nowhere/model]"]))
    with pytest.raises(ExperimentError, match=r"Stage 'rate_estimation', `model`: No model at 'models/other'"):
        preflight(apply_overrides(smoke, ["rate_estimation.model=models/other"]))
    # a model the run does not make must exist when those stages run alone
    with pytest.raises(ExperimentError, match=r"`base_model`: No model at 'models/base'"):
        preflight(smoke, ["training_schedule_finetune"])
    crs.models.build_denoiser((2,)).save_pretrained(Path(smoke["run_dir"]) / "models" / "base")
    preflight(smoke, ["training_schedule_finetune"])  # now it is there
    assert check_model_reference("analytic") == "analytic"


def test_models_the_stages_cannot_use_are_named_before_any_stage(smoke, tmp_path):
    """The preflight reads each model's JSON files (no weights): an unsupported network, or a model whose samples
    have another shape than the stage's data, stops the run before any stage, naming both."""
    import json

    from crs.run.standins import build_tiny_pipeline

    gray = tmp_path / "gray"
    crs.models.build_denoiser((1, 8, 8), block_out_channels=(8, 16)).save_pretrained(gray)
    rgb_digits = ["rate_estimation.dataset=digits", "rate_estimation.dataset_kwargs={channels: 3}"]
    with pytest.raises(
        ExperimentError,
        match=r"Stage 'rate_estimation', `model`: The model at '.*gray' takes samples of shape \(1, 8, 8\), but the "
        r"dataset gives \(3, 8, 8\)",
    ):
        preflight(apply_overrides(smoke, [*rgb_digits, f"rate_estimation.model={gray}"]), ["rate_estimation"])
    preflight(
        apply_overrides(smoke, ["rate_estimation.dataset=digits", f"rate_estimation.model={gray}"]), ["rate_estimation"]
    )  # the same model with its own data: valid
    dit = build_tiny_pipeline(tmp_path / "dit", kind="dit", shape=(3, 16, 16))
    rgb16 = ["rate_estimation.dataset=digits", "rate_estimation.dataset_kwargs={channels: 3, resolution: 16}"]
    preflight(apply_overrides(smoke, [*rgb16, f"rate_estimation.model={dit}"]), ["rate_estimation"])
    with pytest.raises(ExperimentError, match=r"decodes to images of shape \(3, 16, 16\), but the dataset gives "):
        preflight(apply_overrides(smoke, [*rgb_digits, f"rate_estimation.model={dit}"]), ["rate_estimation"])
    index = json.loads((dit / "model_index.json").read_text())
    index["transformer"] = ["diffusers", "SanaTransformer2DModel"]
    (dit / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ExperimentError, match=r"has a SanaTransformer2DModel \(not supported\)"):
        preflight(apply_overrides(smoke, [*rgb16, f"rate_estimation.model={dit}"]), ["rate_estimation"])


def test_the_runner_stops_before_the_first_stage(smoke):
    from crs.run.experiment import run_experiment

    with pytest.raises(ExperimentError, match="Unknown metric"):
        run_experiment(apply_overrides(smoke, ["evaluation.metrics=[fid,fidd]"]), log=lambda *_: None)
    assert not Path(smoke["run_dir"]).exists()


def test_a_sweep_checks_every_value_before_the_base_run(smoke):
    from crs.run.experiment import sweep

    with pytest.raises(ExperimentError, match="`xi` must be a positive finite number, got -1"):
        sweep(smoke, "schedule_optimization.xi", [1.0, -1], log=lambda *_: None)
    assert not Path(smoke["run_dir"]).exists()


@pytest.mark.slow  # python -m crs check in subprocesses
def test_the_command_line_check(tmp_path):
    run = [sys.executable, "-m", "crs", "check", str(ROOT / "params" / "smoke.yaml"), "--run-dir", str(tmp_path / "r")]
    ok = subprocess.run(run, capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "valid" in ok.stdout
    bad = subprocess.run(run + ["--set", "sampling.n_samples=-5"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "`n_samples` must be an integer >= 1, got -5" in bad.stderr


@pytest.mark.parametrize("stage", list(STAGES))
def test_validators_cover_every_notebook_parameter_and_pass_the_defaults(stage):
    declared = set(notebook_parameters(stage)) - {"run_dir"}
    import inspect

    assert set(inspect.signature(STAGE_CHECKS[stage]).parameters) == declared
    check_stage(stage, notebook_defaults(stage))
    source = (ROOT / "notebooks" / f"{STAGES[stage]}.ipynb").read_text()
    assert f'crs.run.checks.check_stage(\\"{stage}\\", globals())' in source  # the notebook runs the same validator


def test_shipped_experiments_pass_the_checks_that_need_no_model():
    for path in sorted((ROOT / "params").glob("*.yaml")):
        params = load_params(path)
        for stage in params["stages"]:
            values = {
                **notebook_defaults(stage),
                **{k: v for k, v in params["common"].items() if k in notebook_parameters(stage)},
                **params["stages"][stage],
            }
            if values.get("dataset") == "folder":
                values["dataset"], values["dataset_kwargs"] = "digits", {}  # their images live on the GPU machine
            if "device" in values:
                values["device"] = "cpu"  # 'cuda' is refused where no GPU is visible
            check_stage(stage, values)


def test_defaults_parse_as_literals():
    for stage in STAGES:
        for p in notebook_parameters(stage).values():
            ast.literal_eval(p["default"])


def test_conditional_mismatches_are_named_before_any_stage(smoke, tmp_path):
    """Whether each model is conditional, and with how many classes, is read from the params (a model this run
    trains) or from the model's JSON files; mismatches with the data, the labels or the guidance stop the run before
    any stage."""
    cond = load_params(ROOT / "params" / "digits-cond.yaml")
    cond["run_dir"] = str(tmp_path / "cond")
    preflight(cond)
    bad = [
        (
            ["base_model.model_kwargs={num_classes: 5}"],
            "'base_model'",
            "The model to train' has 5 classes and the dataset more classes, 10",
        ),
        (["dataset=gmm", "base_model.model_kwargs={num_classes: 2}"], "'base_model'", "data, which has none"),
        (
            ["sampling.labels=[3, 12]"],
            "'sampling'",
            r"`labels` \[3, 12\] name classes 'crs' does not have \(it has 10\)",
        ),
        (["sampling.labels=some"], "'sampling'", "Unknown label source 'some'; valid choices: data, balanced"),
        (["sampling.guidance=[1, 1]"], "'sampling'", r"`guidance` lists a scale twice: \[1, 1\]"),
        (
            ["sampling.guidance=[-1]"],
            "'sampling'",
            "`guidance` must be None or a non-empty list of guidance scales >= 0",
        ),
        (["base_model.model_kwargs={}"], "'sampling'", r"`guidance` \[1, 2, 4\] needs a conditional model; every one"),
        (
            ["base_model.model_kwargs={}", "rate_estimation.guidance=2"],
            "'rate_estimation'",
            "needs a conditional model",
        ),
    ]
    for overrides, stage, msg in bad:
        with pytest.raises(ExperimentError, match=f"Stage {stage}.*{msg}"):
            preflight(apply_overrides(cond, overrides))
    assert not Path(cond["run_dir"]).exists()  # nothing written
    # a saved conditional model, read from its files: balanced labels need no labelled data
    folder = tmp_path / "cond-model"
    crs.models.build_denoiser((1, 8, 8), block_out_channels=(8, 16), num_classes=3).save_pretrained(folder)
    alone = apply_overrides(
        smoke,
        [
            "dataset=digits",
            f"sampling.models=[{folder}]",
            "sampling.search_models=null",
            f"evaluation.plot_model={folder}",
        ],
    )
    with pytest.raises(ExperimentError, match=r"Stage 'sampling'.*has 3 classes and the dataset more classes, 10"):
        preflight(alone, ["sampling"])
    preflight(apply_overrides(alone, ["sampling.labels=balanced", "sampling.guidance=[2]"]), ["sampling"])


def test_text_conditional_mismatches_are_named_before_any_stage(tmp_path):
    """A text-conditional pipeline (read from its model_index.json) needs `prompts`, a list only when it has its own
    text encoder; prompts for a model without text conditioning are refused; its rate on uncaptioned images is
    measured at guidance 0 (the unconditional branch), any other scale needs labelled data (label k: prompt k)."""
    from crs.run.standins import build_tiny_pipeline

    model = build_tiny_pipeline(tmp_path / "sd", kind="sd", shape=(3, 16, 16))
    images = tmp_path / "images"
    images.mkdir()
    params = load_params(ROOT / "params" / "sd15-text.yaml")
    params["run_dir"] = str(tmp_path / "run")
    params = apply_overrides(
        params,
        [
            f"dataset_kwargs={{path: {images}, resolution: 16, channels: 3}}",
            f"rate_estimation.model={model}",
            f"sampling.models=[{model}]",
            f"evaluation.plot_model={model}",
        ],
    )
    preflight(params)
    bad = [
        (["prompts=null"], "'rate_estimation'", "is text-conditional: give `prompts`"),
        (["rate_estimation.guidance=7.5"], "'rate_estimation'", "takes its labels from the data, which has none"),
        (["prompts=7"], "'rate_estimation'", "`prompts` must be a non-empty list of prompts"),
        (["sampling.labels=[0, 16]"], "'sampling'", r"`labels` \[0, 16\] name prompts .* \(it has 16\)"),
    ]
    for overrides, stage, msg in bad:
        with pytest.raises(ExperimentError, match=f"Stage {stage}.*{msg}"):
            preflight(apply_overrides(params, overrides))
    # without a dataset the rate is the model's own samples', drawn for every prompt: guided rates are then valid
    preflight(apply_overrides(params, ["rate_estimation.dataset=null", "rate_estimation.guidance=7.5"]))
    preflight(apply_overrides(params, ["sampling.dataset=null", "sampling.labels=balanced"]))  # no dataset: valid
    with pytest.raises(ExperimentError, match="Stage 'sampling'.*no label shares to draw"):
        preflight(apply_overrides(params, ["sampling.dataset=null", "sampling.labels=data"]))
    with pytest.raises(ExperimentError, match="Stage 'rate_estimation'.*No prompt embeddings file at 'prompts.pt'"):
        preflight(apply_overrides(params, ["prompts=prompts.pt"]))
    crs.prompts.PromptTable(torch.zeros(2, 16, 16), torch.zeros(16, 16)).save(tmp_path / "prompts.pt")
    preflight(apply_overrides(params, [f"prompts={tmp_path / 'prompts.pt'}"]))  # its count is read when loaded
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "text_encoder": [None, None]}))
    with pytest.raises(ExperimentError, match="lacks the text encoders and tokenizers to embed the `prompts` list"):
        preflight(params)
    dit = build_tiny_pipeline(tmp_path / "dit", kind="dit", shape=(3, 16, 16))
    with pytest.raises(ExperimentError, match="`prompts` are for a text-conditional model"):
        preflight(
            apply_overrides(
                params,
                [
                    f"rate_estimation.model={dit}",
                    f"sampling.models=[{dit}]",
                    f"evaluation.plot_model={dit}",
                    "rate_estimation.guidance=null",
                ],
            )
        )


def test_data_free_values_are_checked():
    """Notebook 01's `data_free`: None or {n, steps} with an even step count; anything else is named."""
    from crs.run.checks import check_data_free

    check_data_free(None)
    check_data_free({"n": 64, "steps": 16})
    for bad, msg in [
        ({"n": 64, "step": 16}, "must be None or a mapping with `n`, `steps` and `batch_size`"),
        ({"batch_size": 0}, "`data_free.batch_size` must be"),
        ({"steps": 15}, "must be even"),
        ({"n": 1}, "`data_free.n` must be"),
        (True, "must be None or a mapping"),
    ]:
        with pytest.raises(ValueError, match=msg):
            check_data_free(bad)


def test_without_a_dataset_the_stages_say_what_they_can_do():
    """`dataset: null` (a model without its dataset): stage 01 rates it on its own samples; stage 04 stores samples
    and draws labels of its own; stage 05 scores the teacher error alone. The rest is refused, naming what to give;
    the stages that train need their dataset."""
    defaults = {stage: dict(notebook_defaults(stage), dataset=None) for stage in STAGES}
    check_stage("rate_estimation", dict(defaults["rate_estimation"], model="some/model"))
    check_stage("sampling", dict(defaults["sampling"], labels="balanced"))
    with pytest.raises(ValueError, match="no label shares to draw: give `labels` 'balanced' or a list"):
        check_stage("sampling", defaults["sampling"])
    with pytest.raises(ValueError, match="store samples"):
        check_stage("sampling", dict(defaults["sampling"], labels="balanced", store="features"))
    check_stage("evaluation", dict(defaults["evaluation"], metrics=["teacher_error"]))
    with pytest.raises(ValueError, match=r"only the teacher error can be scored .* got \['fid', 'teacher_error'\]"):
        check_stage("evaluation", dict(defaults["evaluation"], metrics=["fid", "teacher_error"]))
    for stage in ("base_model", "training_schedule_finetune"):
        with pytest.raises(ValueError, match="Unknown dataset None"):
            check_stage(stage, defaults[stage])
    with pytest.raises(ValueError, match="`labels` 'data' draws the dataset's label shares, and there is no dataset"):
        crs.conditioning.condition_source(crs.make_dataset("gmm", labels=[0, 1] * 4).denoiser, None, "data")
