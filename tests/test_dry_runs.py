"""Dry runs: every shipped GPU and hub-model experiment executes all its stages at tiny size on the CPU, offline
(crs.run.experiment.dry_run), so no typo survives to the GPU queue."""

import json
from pathlib import Path

import pytest

from crs.run.experiment import ExperimentError, load_params, run_experiment

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each runs every stage through papermill


def test_gpu_experiment_dry_run_on_cpu(tmp_path):
    """The GPU-sized experiment executes every stage at tiny size on the CPU (no typo survives to the GPU queue)."""
    from crs.run.experiment import dry_run

    params = load_params(ROOT / "params" / "mnist-gpu.yaml")
    params["run_dir"] = str(tmp_path / "mnist-gpu")
    tiny = dry_run(params)
    assert tiny["run_dir"].endswith("mnist-gpu-dry-run") and tiny["common"]["device"] == "cpu"
    assert tiny["stages"]["sampling"]["nfe"]["heun"] == [5] and tiny["stages"]["base_model"]["train_steps"] == 2
    records = run_experiment(tiny, progress=False, log=lambda *_: None)
    assert [r["status"] for r in records] == ["ok"] * 6
    metrics = json.loads((Path(tiny["run_dir"]) / "metrics.json").read_text())
    assert {r["sampler"] for r in metrics["rows"]} == {"euler", "dpmpp_2m", "heun", "edm"}
    assert any(r["metric"] == "fid_efficientnet-lite0" for r in metrics["rows"])


@pytest.mark.parametrize("name,kind,store", [("cifar10-ddpm", "ddpm", "features"), ("celebahq-ldm", "ldm", "features")])
def test_pretrained_model_experiments_dry_run_on_cpu(tmp_path, name, kind, store):
    """A hub-model experiment with no network: tiny stand-ins of the same kind run every stage, at the model's shape
    (CIFAR-10's 32 px) or at 32 px (`side`: CelebA-HQ's 256 px VQ passes would take a minute)."""
    from crs.run.experiment import dry_run

    params = load_params(ROOT / "params" / f"{name}.yaml")
    params["run_dir"] = str(tmp_path / name)
    said = []
    tiny = dry_run(params, log=said.append, side=32)
    model = params["stages"]["rate_estimation"]["model"]
    assert any(f"{model} is not here: a tiny untrained {kind} pipeline" in line for line in said)
    assert any("is not here: scikit-learn's digits" in line for line in said)
    assert (
        tiny["stages"]["sampling"]["models"]
        == [tiny["stages"]["rate_estimation"]["model"]]
        == [tiny["stages"]["evaluation"]["plot_model"]]
    )
    assert tiny["stages"]["evaluation"]["reference"] == "test" and tiny["stages"]["sampling"]["num_processes"] == 1
    records = run_experiment(tiny, progress=False, log=lambda *_: None)
    assert [r["status"] for r in records] == ["ok"] * 4
    run = Path(tiny["run_dir"])
    rate = json.loads((run / "rate.json").read_text())
    assert rate["sigma"][0] > 0.002 and rate["meta"]["latent"] == (kind == "ldm")  # the model's own noise range
    index = json.loads((run / "samples" / "index.json").read_text())
    assert index["store"] == store and all("features_path" in e for e in index["entries"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert {r["metric"] for r in metrics["rows"]} == {"fid_efficientnet-lite0"}


def test_dry_run_names_a_hub_model_it_cannot_stand_in_for(tmp_path):
    from crs.run.experiment import dry_run

    params = load_params(ROOT / "params" / "cifar10-ddpm.yaml")
    params["run_dir"] = str(tmp_path / "x")
    params["stages"]["rate_estimation"]["model"] = "someone/unknown-model"
    with pytest.raises(ExperimentError, match="'someone/unknown-model' is not in the local cache and has no stand-in"):
        dry_run(params, log=lambda *_: None)
