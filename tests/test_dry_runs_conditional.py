"""Conditional experiments at toy size through the batch runner: the class-conditional digits (every stage, with
guidance) and the class-conditional DiT's GPU experiment with a tiny stand-in (crs.run.experiment.dry_run). Apart
from tests/test_dry_runs.py so that the parallel runner can give them their own worker."""

import json
from pathlib import Path

import pytest

from crs.run.experiment import load_params, run_experiment

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each runs every stage through papermill


def test_the_class_conditional_digits_experiment_chains_every_stage_with_guidance(tmp_path):
    """params/digits-cond.yaml at toy size: a class-conditional UNet through 00-05 (label dropout in training, samples
    drawn with the data's labels, the rate of the conditional distributions), sampled and scored at each guidance
    scale with balanced labels. Two overrides widen what the chain covers: stage 01 compares the `noise` and `fid`
    measures on the conditional model, and stage 03 fine-tunes with the online CRS schedule."""
    from crs.models import describe_model
    from crs.run.experiment import apply_overrides, dry_run

    params = load_params(ROOT / "params" / "digits-cond.yaml")
    params["run_dir"] = str(tmp_path / "digits-cond")
    params = apply_overrides(  # two of the three guidance scales: the test's time, not its coverage
        params,
        [
            "rate_estimation.compare_measures=[noise, fid]",
            "training_schedule_finetune.crs_noise=crs-online",
            "sampling.guidance=[1, 4]",
        ],
    )
    tiny = dry_run(params, log=lambda *_: None)
    records = run_experiment(tiny, progress=False, log=lambda *_: None)
    assert [r["status"] for r in records] == ["ok"] * 6
    run = Path(tiny["run_dir"])
    config = json.loads((run / "models" / "base" / "config.json").read_text())
    assert config["_class_name"] == "UNet2DModel" and config["num_class_embeds"] == 11  # 10 classes and the null
    assert describe_model(run / "models" / "base")["num_classes"] == 10
    rate = json.loads((run / "rate.json").read_text())
    grid, n = tiny["stages"]["rate_estimation"]["grid_size"], tiny["stages"]["rate_estimation"]["n_samples"]
    assert rate["meta"]["guidance"] == 1.0 and rate["evaluations"] == (grid + 1) * n  # each x0 at its own label
    finetune = json.loads((run / "finetune.json").read_text())
    assert finetune["runs"]["crs"]["noise"] == "crs-online" and finetune["runs"]["crs"]["online_updates"] >= 1
    assert set(finetune["heldout_loss"]) == {"base", "crs", "control"}
    index = json.loads((run / "samples" / "index.json").read_text())
    assert index["labels"] == "balanced" and index["guidance"] == [1, 4]
    assert {(e["model"], e["guidance"]) for e in index["entries"]} == {
        (m, w) for m in ("crs", "control") for w in (1, 4)
    }
    assert sorted(p.name for p in (run / "search" / "crs").iterdir()) == ["w1", "w4"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {r["guidance"] for r in metrics["rows"]} == {1.0, 4.0}
    assert {r["metric"] for r in metrics["rows"]} == {
        "fid_efficientnet-lite0",
        "precision_efficientnet-lite0",
        "recall_efficientnet-lite0",
        "kid_efficientnet-lite0",
        "teacher_error",
    }
    assert {c["guidance"] for c in metrics["model_comparisons"]} == {1.0, 4.0}
    assert (run / "teacher_error_w4.png").is_file() and (run / "metric_fid_efficientnet-lite0_w4.png").is_file()


def test_the_class_conditional_dit_experiment_dry_runs_with_a_stand_in(tmp_path):
    """params/imagenet-dit.yaml with no network: a tiny class-conditional DiT pipeline and labelled digits stand in
    (at 32 px: `dry_run(side=32)`, the user's `--side 32`; at DiT-XL-2-256's 256 px the VAE passes alone take a
    minute); sampling at both guidance scales with balanced labels."""
    from crs.run.experiment import dry_run

    params = load_params(ROOT / "params" / "imagenet-dit.yaml")
    params["run_dir"] = str(tmp_path / "imagenet-dit")
    said = []
    tiny = dry_run(params, log=said.append, side=32)
    assert any("facebook/DiT-XL-2-256 is not here: a tiny untrained dit pipeline" in line for line in said)
    records = run_experiment(tiny, progress=False, log=lambda *_: None)
    assert [r["status"] for r in records] == ["ok"] * 4
    run = Path(tiny["run_dir"])
    rate = json.loads((run / "rate.json").read_text())
    assert rate["meta"]["latent"] and rate["meta"]["guidance"] == 1.0
    index = json.loads((run / "samples" / "index.json").read_text())
    assert index["labels"] == "balanced" and {e["guidance"] for e in index["entries"]} == {1.5, 4.0}
    assert all("features_path" in e for e in index["entries"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert {(r["metric"], r["guidance"]) for r in metrics["rows"]} == {
        ("fid_efficientnet-lite0", 1.5),
        ("fid_efficientnet-lite0", 4.0),
    }


def test_the_text_conditional_experiment_runs_every_stage_with_a_tiny_pipeline(tmp_path):
    """params/sd15-text.yaml with no network: a tiny Stable-Diffusion-style pipeline with its own CLIP text encoder
    stands in, and embeds the params file's 16 prompts itself. Stage 01 measures the rate of the (unlabelled) data
    with the unconditional branch (guidance 0), 04 samples every prompt equally often at both guidance scales with a
    GITS schedule searched per scale, 05 scores each by teacher error alone (no FID reference). At 32 px
    (`dry_run(side=32)`): the 512 px stand-in costs minutes on a CPU (VAE passes over 512 x 512 images)."""
    from crs.run.experiment import dry_run

    params = load_params(ROOT / "params" / "sd15-text.yaml")
    params["run_dir"] = str(tmp_path / "sd15-text")
    said = []
    tiny = dry_run(params, log=said.append, side=32)
    assert any("stable-diffusion-v1-5 is not here: a tiny untrained sd pipeline" in line for line in said)
    run = Path(tiny["run_dir"])
    records = run_experiment(tiny, progress=False, log=lambda *_: None)
    assert [r["status"] for r in records] == ["ok"] * 4
    rate = json.loads((run / "rate.json").read_text())
    assert rate["meta"]["latent"] and rate["meta"]["guidance"] == 0.0
    index = json.loads((run / "samples" / "index.json").read_text())
    assert index["labels"] == "balanced" and index["prompts"] == params["common"]["prompts"]
    assert {e["guidance"] for e in index["entries"]} == {3.0, 7.5}
    assert {e["schedule"] for e in index["entries"]} >= {"crs", "gits"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert {(r["metric"], r["guidance"]) for r in metrics["rows"]} == {("teacher_error", 3.0), ("teacher_error", 7.5)}
    assert (run / "metric_teacher_error_w7.5.png").is_file()
