"""Sampling and feature extraction over two processes under `accelerate launch` (two CPU processes, gloo)."""

import json

import pytest
import torch

import crs
from crs.run.launch import run

DATA = dict(dataset="digits", dataset_kwargs={"resolution": 16, "channels": 3})


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    crs.run.standins.build_tiny_pipeline(root / "ldm", "ldm", (3, 16, 16))
    crs.Schedule.from_baseline("kl_optimal", 0.05, 80.0).save(root / "schedule.json")
    spec = dict(
        run_dir=str(root / "one"),
        models=[str(root / "ldm")],
        schedule=str(root / "schedule.json"),
        baselines=["karras"],
        samplers=["euler", "edm"],
        nfe=[3],
        n_samples=10,
        batch_size=5,
        seed=3,
        device="cpu",
        store="samples",
        features="efficientnet-lite0",
        keep=4,
        **DATA,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # launched processes run one thread each: the same reduction order, so equal bits
    try:
        return root, spec, run("sample", spec, 1)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_processes_sample_the_same_sets_as_one(job):
    root, spec, one = job
    two = run("sample", dict(spec, run_dir=str(root / "two")), 2)
    assert [(e["model"], e["schedule"], e["sampler"], e["nfe"]) for e in two] == [
        (e["model"], e["schedule"], e["sampler"], e["nfe"]) for e in one
    ]
    for a, b in zip(one, two):
        x, y = torch.load(a["path"], weights_only=True), torch.load(b["path"], weights_only=True)
        assert x.shape == (10, 3, 16, 16) and torch.equal(
            x, y
        )  # each process drew its share with the samples' own seeds
    assert not list((root / "two").rglob("*.part*"))  # the shares were gathered and removed
    saved = json.loads((root / "two" / "samples" / "index.json").read_text())
    assert saved["entries"] == two and saved["processes"] == 2  # really two shares, not two copies


@pytest.mark.slow
def test_other_batches_agree_to_round_off(job, tmp_path):
    """With batches that no longer align, batch composition and threads change the order of floating-point sums.

    The claim is about what the per-sample seeds fix, the sampler's output: for a pixel model the saved
    samples, for a latent model its latents. A VQ decoder snaps each latent to the nearest codebook entry,
    so a latent moved by round-off (1e-7) can decode to another code: decoded LDM images are compared only
    where the batches align (above). Tolerance: float32 round-off through a few network evaluations of an
    untrained tiny UNet, relative to the largest value of the set (the error scales with the set's magnitude, not
    with each element). Another batch size may also select another convolution algorithm (oneDNN picks by shape
    and instruction set; Winograd-type kernels err by up to ~1e-4 relative in float32). Measured here: at most
    6.3e-5 of the scale for the pixel samples (edm), 5.3e-6 for the latents; asserted at 1e-3 of the scale.
    """
    root, spec, _ = job
    # x0-prediction keeps an untrained UNet's samples O(1); eps-prediction multiplies its error by sigma up to 80
    pixels = crs.run.standins.build_tiny_pipeline(tmp_path / "ddpm", "ddpm", (3, 16, 16), prediction_type="sample")
    pix = dict(spec, models=[str(pixels)], run_dir=str(tmp_path / "one"))
    one = run("sample", pix, 1)
    other_batches = run("sample", dict(pix, run_dir=str(tmp_path / "two-b4"), batch_size=4), 2)
    for a, b in zip(one, other_batches):
        x, y = torch.load(a["path"], weights_only=True), torch.load(b["path"], weights_only=True)
        torch.testing.assert_close(y, x, rtol=0, atol=1e-3 * float(x.abs().max()))
    ldm = crs.load_denoiser(spec["models"][0])
    sigmas = crs.baseline_sigmas("karras", 3, ldm.sigma_min, 80.0)
    for sampler in spec["samplers"]:
        latents = [
            crs.sampling.generate(ldm, ldm.shape, 10, sigmas, seed=3, sampler=sampler, batch_size=b) for b in (5, 4, 3)
        ]
        for other in latents[1:]:
            torch.testing.assert_close(other, latents[0], rtol=0, atol=1e-3 * float(latents[0].abs().max()))


@pytest.mark.slow
def test_features_over_two_processes_match_features_stored_by_sampling(job):
    root, spec, one = job
    stored = run("sample", dict(spec, run_dir=str(root / "feat"), store="features"), 2)
    kept = torch.load(stored[0]["path"], weights_only=True)
    assert kept.shape == (4, 3, 16, 16) and torch.equal(kept, torch.load(one[0]["path"], weights_only=True)[:4])
    computed = run("features", dict(run_dir=spec["run_dir"], features="efficientnet-lite0", device="cpu", **DATA), 2)
    assert json.loads((root / "one" / "samples" / "index.json").read_text())["feature_processes"] == 2
    for a, b in zip(stored, computed):
        fa, fb = torch.load(a["features_path"], weights_only=True), torch.load(b["features_path"], weights_only=True)
        assert fa.shape == fb.shape == (10, 1280)
        torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-4)
    # evaluation scores stored features exactly as it scores the samples themselves
    extractor = crs.metrics.make_feature_extractor("efficientnet-lite0")
    reference = crs.make_dataset(split="test", **{"name": DATA["dataset"]}, **DATA["dataset_kwargs"]).images[:40]
    from_features = crs.run.jobs.evaluate_grid(stored, reference, extractor, n_boot=5, which=["fid"])
    from_samples = crs.run.jobs.evaluate_grid(one, reference, extractor, n_boot=5, which=["fid"])
    for a, b in zip(from_features["rows"], from_samples["rows"]):
        assert a["value"] == pytest.approx(b["value"], rel=1e-3)


def test_bad_launches_are_named(job):
    root, spec, _ = job
    with pytest.raises(ValueError, match="`num_processes` must be an integer >= 1"):
        run("sample", spec, 0)
    with pytest.raises(ValueError, match="Unknown job 'train'"):
        run("train", spec, 1)


@pytest.mark.slow
def test_a_failing_launched_job_reports_its_error(job):
    root, spec, _ = job
    with pytest.raises(
        ValueError,
        match="failed under accelerate launch with 2 processes: ValueError: Could not load the hub model "
        "'nowhere/model'",
    ):
        run("sample", dict(spec, run_dir=str(root / "bad"), models=["nowhere/model"]), 2)


@pytest.mark.slow
def test_finetuning_over_two_processes_saves_models_and_records(tmp_path):
    from dataclasses import asdict

    from crs.models import build_denoiser
    from crs.training import TrainConfig

    build_denoiser((2,)).save_pretrained(tmp_path / "models" / "base")
    crs.Schedule.from_baseline("kl_optimal", 0.002, 80.0).save(tmp_path / "schedule.json")
    common = dict(steps=4, batch_size=16, checkpoint_every=2, seed=0)
    configs = {
        "crs": asdict(TrainConfig(noise="crs", schedule=str(tmp_path / "schedule.json"), **common)),
        "control": asdict(TrainConfig(noise="edm", **common)),
    }
    spec = dict(
        run_dir=str(tmp_path),
        dataset="gmm",
        dataset_kwargs={},
        base_model=str(tmp_path / "models" / "base"),
        configs=configs,
    )
    results = run("finetune", spec, 2)
    assert set(results) == {"crs", "control"}
    for name, r in results.items():
        assert r.steps_done == 4 and len(r.losses) == 4 and r.extra["processes"] == 2
        assert (tmp_path / "models" / name / "crs_denoiser.json").is_file()
        x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(r.ema(x, torch.full((8,), 1.0))).all()
    assert (
        type(results["crs"].noise).__name__ == "ScheduleNoise"
        and type(results["control"].noise).__name__ == "LogNormalNoise"
    )
