"""The flow-matching experiment at toy size through the batch runner (params/digits-flow.yaml): a rectified-flow
UNet trained on the digits, its rate from its own samples with the dataset's beside it, CRS against the schedules
flow models ship with. Apart from the other dry runs so that the parallel runner can give it its own worker."""

import json
from pathlib import Path

import pytest

from crs.run.experiment import dry_run, load_params, run_experiment

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # every stage through papermill


def test_the_flow_matching_experiment_chains_every_stage(tmp_path):
    params = load_params(ROOT / "params" / "digits-flow.yaml")
    params["run_dir"] = str(tmp_path / "digits-flow")
    tiny = dry_run(params, log=lambda *_: None)
    assert tiny["stages"]["rate_estimation"]["data_free"] == {"n": 8, "steps": 4}
    records = run_experiment(tiny, progress=False, log=lambda *_: None)
    assert [r["status"] for r in records] == ["ok"] * 5
    run = Path(tiny["run_dir"])
    saved = json.loads((run / "models" / "base" / "crs_denoiser.json").read_text())
    assert saved["precond"] == "flow" and saved["sigma_max"] == 999.0
    rate = json.loads((run / "rate.json").read_text())
    assert rate["meta"]["data_free"]["n"] == 8 and rate["sigma"][-1] == pytest.approx(999.0)  # the model's range
    assert json.loads((run / "rate_dataset.json").read_text())["sigma"] == rate["sigma"]
    metrics = json.loads((run / "metrics.json").read_text())
    schedules = {r["schedule"] for r in metrics["rows"]}
    assert {"crs", "flow"} <= schedules and "teacher_error" in {r["metric"] for r in metrics["rows"]}


@pytest.mark.parametrize("name,kind", [("sd3-text", "sd3"), ("flux-text", "flux")])
def test_the_flow_transformer_experiments_dry_run_without_a_dataset(tmp_path, name, kind):
    """params/sd3-text.yaml and flux-text.yaml with no network and no dataset in any stage: tiny SD3- and Flux-layout
    stand-ins (32 px, their tiny CLIP and T5 encoders embedding the prompt list) through a data-free rate, CRS,
    GITS, sampling against the model's shipped shift and the teacher error."""
    params = load_params(ROOT / "params" / f"{name}.yaml")
    params["run_dir"] = str(tmp_path / name)
    said = []
    tiny = dry_run(params, log=said.append, side=32)
    assert any(f"a tiny untrained {kind} pipeline at 32 px" in line for line in said)
    records = run_experiment(tiny, progress=False, log=lambda *_: None)
    assert [r["status"] for r in records] == ["ok"] * 4
    run = Path(tiny["run_dir"])
    rate = json.loads((run / "rate.json").read_text())
    assert rate["meta"]["dataset"] is None and rate["meta"]["data_free"]["n"] == 8
    index = json.loads((run / "samples" / "index.json").read_text())
    assert {e["schedule"] for e in index["entries"]} == {"crs", kind, "gits"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert {r["metric"] for r in metrics["rows"]} == {"teacher_error"} and metrics["reference"] == "none (no dataset)"
