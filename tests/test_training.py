"""Training: noise distributions, EDM loss, exact resume, online CRS, refusals of bad input."""

import math

import numpy as np
import pytest
import torch

import crs
from crs.models import build_denoiser
from crs.training import LogNormalNoise, TrainConfig, loss_by_sigma, make_noise, train


def test_lognormal_is_edms():
    s = LogNormalNoise().sample(100_000, torch.Generator().manual_seed(0))
    assert float(torch.log(s).mean()) == pytest.approx(-1.2, abs=0.02)
    assert float(torch.log(s).std()) == pytest.approx(1.2, abs=0.02)
    grid = np.linspace(-8, 6, 4001)
    assert np.trapezoid(LogNormalNoise().density(np.exp(grid)).numpy(), grid) == pytest.approx(1.0, rel=1e-4)


def test_schedule_distributions(tmp_path):
    g = torch.Generator().manual_seed(1)
    u = make_noise("logsnr", 0.01, 10.0).sample(50_000, g)
    assert float(torch.log(u).mean()) == pytest.approx(0.5 * (math.log(0.01) + math.log(10.0)), abs=0.03)
    rate = crs.estimate_rate("kl_optimal", None, sigma_min=0.002, sigma_max=80.0)
    crs.optimize_schedule(rate).save(tmp_path / "schedule.json")
    crs_noise = make_noise("crs", 0.002, 80.0, str(tmp_path / "schedule.json"))
    # t ~ U(0, 1) through the tan schedule: arctan(sigma) is uniform between its end points
    a = torch.atan(crs_noise.sample(50_000, g))
    lo, hi = math.atan(0.002), math.atan(80.0)
    assert float(a.mean()) == pytest.approx(0.5 * (lo + hi), abs=0.01)
    with pytest.raises(
        ValueError, match=r"covers sigma in \[0.002, 80\], which does not cover the model's range \[0.001, 80\]"
    ):
        make_noise("crs", 0.001, 80.0, str(tmp_path / "schedule.json"))
    with pytest.raises(ValueError, match="Unknown noise distribution 'uniform'; valid choices: edm, logsnr"):
        make_noise("uniform")
    with pytest.raises(ValueError, match="No schedule file"):
        make_noise("crs", schedule=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="needs a schedule"):
        make_noise("crs")


def test_training_learns_the_mixture():
    data = crs.make_dataset("gmm")
    result = train(
        build_denoiser((2,)), data, TrainConfig(steps=600, batch_size=256, lr=2e-3, ema_decay=0.99), progress=False
    )
    assert np.mean(result.losses[-50:]) < 0.8 * np.mean(result.losses[:50])
    levels = np.array([0.05, 0.5, 5.0])
    learned = loss_by_sigma(result.ema, data, levels, 2048)
    exact = loss_by_sigma(data.denoiser, data, levels, 2048)
    assert np.all(learned < 1.3 * exact), (learned, exact)


def test_a_flow_matching_model_is_a_velocity_model_trained_with_the_flow_matching_loss(tmp_path):
    """precond="flow": D = x_s - s v with the network's v at x_s = (1 - s) x and time input s (the MLP's; float64
    here, one code path: 1e-12), the loss is |v - (eps - x0)|^2 (to the float32 rounding of D the loss makes: 1e-5),
    the parameterisation survives saving, and on the mixture (logit-normal flow times, `noise="flow"`) the model
    learns (its denoising loss within 1.3x the exact denoiser's, as the EDM model's test asks)."""
    from crs.networks import EDMDenoiser
    from crs.training import EDMLoss, make_noise

    den = build_denoiser((2,), sigma_max=999.0, seed=0, precond="flow").double()
    x0, eps = torch.randn(64, 2, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)
    sigma = torch.exp(torch.randn(64, dtype=torch.float64))
    s = (sigma / (1 + sigma))[:, None]
    x = x0 + sigma[:, None] * eps
    v = den.net((1 - s) * x, s[:, 0])
    torch.testing.assert_close(den(x, sigma), (1 - s) * x - s * v, rtol=1e-12, atol=1e-12)
    loss = EDMLoss(make_noise("flow"), precond="flow")(den, x0, sigma, eps)
    torch.testing.assert_close(loss, ((v - (eps - x0)) ** 2).mean(), rtol=1e-5, atol=0)  # the loss rounds D to float32
    den.float().save_pretrained(tmp_path / "flow")
    assert EDMDenoiser.from_pretrained(tmp_path / "flow").precond == "flow"
    with pytest.raises(ValueError, match="Unknown preconditioning 'vp'"):
        build_denoiser((2,), precond="vp")
    data = crs.make_dataset("gmm")
    cfg = TrainConfig(steps=600, batch_size=256, lr=2e-3, ema_decay=0.99, noise="flow")
    result = train(build_denoiser((2,), sigma_max=999.0, precond="flow"), data, cfg, progress=False)
    levels = np.array([0.05, 0.5, 5.0])
    learned = loss_by_sigma(result.ema, data, levels, 2048)
    exact = loss_by_sigma(data.denoiser, data, levels, 2048)
    assert np.all(learned < 1.3 * exact), (learned, exact)


def test_loss_by_sigma_closed_form_for_gaussian():
    """E[lambda |D - x0|^2] per element with the exact denoiser is lambda s^2 sigma^2 / (s^2 + sigma^2)."""
    data = crs.make_dataset("gaussian", dim=4, std=0.7)
    levels = np.array([0.1, 1.0, 10.0])
    got = loss_by_sigma(data.denoiser, data, levels, 20_000)
    lam = (levels**2 + 0.25) / (levels * 0.5) ** 2
    np.testing.assert_allclose(got, lam * 0.49 * levels**2 / (0.49 + levels**2), rtol=0.03)


class _Crashing:
    """A dataset that dies (like a killed process) on its ``crash_at``-th training batch."""

    def __init__(self, data, crash_at, batch_size):
        self.data, self.crash_at, self.batch_size, self.calls = data, crash_at, batch_size, 0
        self.name, self.shape = data.name, data.shape

    def sample(self, n, generator):
        self.calls += n == self.batch_size
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("killed")
        return self.data.sample(n, generator)


@pytest.mark.parametrize(
    "name,cfg",
    [
        (
            "gmm",
            TrainConfig(
                steps=12,
                batch_size=32,
                checkpoint_every=4,
                noise="crs-online",
                online_every=3,
                online_grid=6,
                online_samples=48,
            ),
        ),
        ("digits", TrainConfig(steps=6, batch_size=8, checkpoint_every=2, noise="cosine", lr=1e-3, warmup_steps=3)),
    ],
)
def test_interrupted_run_resumes_to_identical_weights(tmp_path, name, cfg):
    data = crs.make_dataset(name)
    full = train(build_denoiser(data.shape), data, cfg, checkpoint_dir=tmp_path / "full", progress=False)
    crash_at = cfg.checkpoint_every + 2  # dies one step after a checkpoint: that step is lost
    with pytest.raises(KeyboardInterrupt):
        train(
            build_denoiser(data.shape),
            _Crashing(data, crash_at, cfg.batch_size),
            cfg,
            checkpoint_dir=tmp_path / "cut",
            progress=False,
        )
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["step"] == cfg.checkpoint_every
    resumed = train(build_denoiser(data.shape), data, cfg, checkpoint_dir=tmp_path / "cut", progress=False)
    assert resumed.resumed_from == cfg.checkpoint_every and resumed.losses == full.losses
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(
        full.ema.state_dict().values(),
        train(build_denoiser(data.shape), data, cfg, checkpoint_dir=tmp_path / "cut", progress=False)
        .ema.state_dict()
        .values(),
    ):
        assert torch.equal(a, b)  # a finished run resumes as a no-op


def test_resume_refuses_other_settings(tmp_path):
    data = crs.make_dataset("gmm")
    cfg = TrainConfig(steps=3, batch_size=8)
    train(build_denoiser((2,)), data, cfg, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(lr\)"):
        train(
            build_denoiser((2,)),
            data,
            TrainConfig(steps=3, batch_size=8, lr=0.1),
            checkpoint_dir=tmp_path,
            progress=False,
        )


def test_online_crs_updates_and_measures_its_overhead():
    data = crs.make_dataset("gmm")
    cfg = TrainConfig(steps=40, batch_size=64, noise="crs-online", online_every=10, online_grid=8, online_samples=64)
    result = train(build_denoiser((2,)), data, cfg, progress=False)
    assert result.online_updates == 1 + 3  # the first estimate (no schedule given), then at steps 10, 20, 30
    assert 0 < result.online_seconds < result.seconds and result.online_overhead > 0
    assert result.noise.schedule.meta["measure"] == "data"


class _NaNData:
    name, shape = "nan", (2,)

    def sample(self, n, generator):
        x = torch.randn(n, 2, generator=generator)
        x[0, 0] = float("nan")
        return x


def test_non_finite_loss_stops_and_keeps_the_checkpoint(tmp_path):
    data = crs.make_dataset("gmm")
    cfg = TrainConfig(steps=4, batch_size=8, checkpoint_every=2)
    train(build_denoiser((2,)), data, cfg, checkpoint_dir=tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="Non-finite loss .* at step 0"):
        train(
            build_denoiser((2,)),
            _NaNData(),
            TrainConfig(steps=4, batch_size=8),
            checkpoint_dir=tmp_path / "other",
            progress=False,
        )
    assert not (tmp_path / "other" / "checkpoint.pt").exists()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(steps=0), "`steps` must be an integer >= 1, got 0"),
        (dict(lr=-1.0), "`lr` must be a positive finite number, got -1.0"),
        (dict(noise="uniform"), "Unknown noise distribution 'uniform'"),
        (dict(ema_decay=1.0), "`ema_decay` must be in"),
        (dict(noise="crs-online", online_measure="fid"), "`online_measure` must use the model"),
    ],
)
def test_bad_settings(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kwargs).validate()


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"takes samples of shape \(1, 8, 8\), but the dataset gives \(2,\)"):
        train(build_denoiser((1, 8, 8)), crs.make_dataset("gmm"), TrainConfig(steps=1), progress=False)


def _launch(tmp_path, *args):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        str(Path(__file__).parent / "mp_train.py"),
        *map(str, args),
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # each process's RESULT line from its own file (on the shared stdout pipe two lines can interleave)
    lines = [Path(f"{args[0]}.result{rank}").read_text().strip() for rank in (0, 1)]
    rows = [dict(kv.split("=") for kv in line.split()[1:]) for line in lines if line.startswith("RESULT")]
    return sorted(rows, key=lambda r: r["rank"])


@pytest.mark.slow
def test_two_processes_with_accelerate_launch_and_resume(tmp_path):
    """Two CPU processes (gloo): synchronised weights, different batches, and an exact resume."""
    full = _launch(tmp_path, tmp_path / "full")
    assert [r["world"] for r in full] == ["2", "2"]
    assert full[0]["ema"] == full[1]["ema"]  # gradients are averaged: both processes hold the same model
    assert full[0]["first_loss"] != full[1]["first_loss"]  # each draws its own batches
    _launch(tmp_path, tmp_path / "cut", 3)
    resumed = _launch(tmp_path, tmp_path / "cut")
    assert resumed[0]["ema"] == full[0]["ema"] and resumed[1]["ema"] == full[1]["ema"]


def test_edm_loss_owns_its_noise_distribution():
    """EDMLoss: lambda(sigma) |D - x0|^2 averaged (EDM eq. 8); it owns the noise distribution a schedule replaces."""
    from crs.training import EDMLoss, loss_weight, make_noise

    data = crs.make_dataset("gmm")
    edm = EDMLoss(make_noise("edm"), sigma_data=0.5)
    x0, sigma, eps = edm.draw(data, 64, torch.Generator().manual_seed(0), "cpu")
    assert x0.shape == eps.shape == (64, 2) and sigma.shape == (64,) and x0.dtype == torch.float32

    def zero(x, s):
        return torch.zeros_like(x)

    expect = (loss_weight(sigma[:, None], 0.5) * x0**2).mean()
    torch.testing.assert_close(edm(zero, x0, sigma, eps), expect, rtol=1e-6, atol=0)
    edm.noise = make_noise("logsnr", 0.002, 80.0)  # crs-online swaps the distribution while training
    _, other, _ = edm.draw(data, 64, torch.Generator().manual_seed(0), "cpu")
    assert not torch.equal(other, sigma) and float(other.min()) >= 0.002 * (1 - 1e-6)
