"""The prepared GPU check (benchmarks.gpu_check): its parts run here on the CPU as a self-test; real runs need CUDA."""

import json

import pytest
import torch

from benchmarks import gpu_check


def test_consistency_cases_cover_models_measures_samplers_and_training():
    rows = gpu_check.consistency("cpu")  # CPU against CPU: the same kernels, so every case agrees exactly
    cases = {r["case"] for r in rows}
    assert {
        "denoiser exact",
        "denoiser mlp",
        "denoiser ldm",
        "rate data (ldm)",
        "rate noise (ldm)",
        "rate fid (ldm)",
        "training loss fp32",
        "training loss bf16",
    } <= cases
    assert {f"sampler {s} (mlp)" for s in ("euler", "heun", "dpmpp_2m", "edm")} <= cases
    assert all(r["ok"] and r["difference"] == 0.0 and r["tolerance"] > 0 and r["why"] for r in rows)


def test_dry_run_failures_are_reported_with_their_error(tmp_path):
    (run,) = gpu_check.dry_runs("cpu", ["no-such-experiment"], tmp_path, jobs=1)
    assert not run["ok"] and "No params file" in run["error"] and run["stages"] == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_the_gpu_check_refuses_to_run_without_a_gpu(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_gpu_check_passes_on_a_gpu(tmp_path):
    assert gpu_check.main(["--device", "cuda", "--experiments", "smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["environment"]["cuda"] and all(r["ok"] for r in report["dry_runs"])
