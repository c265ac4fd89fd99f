"""Device correctness without a GPU: models and inputs on a stand-in device (tests/standin_device.py).

Every model wrapper, rate estimation, every sampler and the training step run with the model (and,
where the API takes them, the inputs) on a device that is not the CPU. Tensors there keep real
values, so results are compared with a CPU run; a tensor left on the CPU by mistake raises torch's
own device-mismatch error, as on a GPU. The CPU and stand-in runs execute the same CPU kernels on the
same shapes, but the stand-in path may move and cast in a different order, so results are compared to
float32 round-off (rtol 1e-5) and not bit for bit.
"""

import pytest
import torch
from standin_device import OnStandin, StandinDevice

import crs
from crs.models import build_denoiser, load_denoiser
from crs.run.standins import build_tiny_pipeline
from crs.sampling import SAMPLERS, generate

CLOSE = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    return {
        kind: build_tiny_pipeline(root / kind, kind, (3, 8, 8) if kind == "ddpm" else (3, 16, 16))
        for kind in ("ddpm", "ldm")
    }


def _models(pipelines):
    return {
        "mlp": build_denoiser((2,), sigma_min=0.01, sigma_max=50.0),
        "unet": build_denoiser((1, 8, 8), block_out_channels=(8, 16), norm_num_groups=4),
        "ddpm": load_denoiser(str(pipelines["ddpm"])),
        "ldm": load_denoiser(str(pipelines["ldm"])),
    }


def test_the_stand_in_refuses_mixed_devices_as_a_gpu_does():
    with StandinDevice() as dev:
        x = torch.ones(3, 2).to(dev)
        assert isinstance(x, OnStandin) and x.device == dev
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            _ = x + torch.ones(3, 2)
        assert (x * torch.tensor(2.0)).device == dev  # 0-dim CPU tensors mix freely, as with CUDA
        assert torch.equal((x + 1).cpu(), torch.full((3, 2), 2.0))
        with pytest.raises(RuntimeError):
            x.numpy()


@pytest.mark.parametrize("name", ["mlp", "unet", "ddpm", "ldm", "exact"])
def test_model_wrappers_run_on_a_device_with_inputs_from_anywhere(pipelines, name):
    den = crs.make_dataset("gmm").denoiser if name == "exact" else _models(pipelines)[name].eval()
    shape = (2,) if name in ("mlp", "exact") else tuple(den.shape)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.05, 0.5, 2.0, 20.0])
    with torch.no_grad():
        expect = den(x, sigma)
        with StandinDevice() as dev:
            if name != "exact":
                den.to(dev)
            on_device = den(x.to(dev), sigma.to(dev))  # inputs on the model's device
            from_cpu = den(x, sigma)  # CPU inputs: moved to the model and back
            scalar = den(x.to(dev), 0.5)  # a Python scalar sigma
            assert on_device.device == dev and from_cpu.device == torch.device("cpu") and scalar.device == dev
            on_device, scalar = on_device.cpu(), scalar.cpu()
    torch.testing.assert_close(on_device, expect, **CLOSE)
    torch.testing.assert_close(from_cpu, expect, **CLOSE)
    if name == "ldm":  # the VAE too: encode and decode keep the caller's device
        images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
        with StandinDevice() as dev:
            den.to(dev)
            z = den.encode(images.to(dev))
            assert (
                z.device == dev
                and den.decode(z).device == dev
                and den.decode(z.cpu(), quantize=False).device.type == "cpu"
            )


def test_sigma_to_t_works_on_the_model_device(pipelines):
    den = load_denoiser(str(pipelines["ddpm"]))
    sigma = torch.tensor([0.01, 1.0, 50.0], dtype=torch.float64)
    expect = den.sigma_to_t(sigma)
    with StandinDevice() as dev:
        den.to(dev)
        got = den.sigma_to_t(sigma.to(dev))
        assert got.device == dev
        got = got.cpu()
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_runs_with_model_and_samples_on_a_device(pipelines, sampler):
    sigmas = crs.baseline_sigmas("karras", 3, 0.01, 50.0)
    for name, den in _models(pipelines).items():
        decode = den.decode if getattr(den, "is_latent", False) else None
        kwargs = dict(n=3, sigmas=sigmas, seed=5, sampler=sampler, batch_size=2, decode=decode)
        expect = generate(den.eval(), tuple(den.shape), **kwargs)
        with StandinDevice() as dev:
            den.to(dev)
            got = generate(den, tuple(den.shape), device=dev, **kwargs)
        assert got.device == torch.device("cpu") and not isinstance(got, OnStandin)
        torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4, msg=f"{sampler} on {name}")


def test_analytic_denoiser_samples_on_a_device():
    data = crs.make_dataset("gmm")
    sigmas = crs.baseline_sigmas("karras", 4)
    expect = generate(data.denoiser, (2,), 6, sigmas, seed=1, sampler="edm", dtype=torch.float64)
    with StandinDevice() as dev:
        got = generate(data.denoiser, (2,), 6, sigmas, seed=1, sampler="edm", dtype=torch.float64, device=dev)
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("measure", ["data", "noise", "fid"])
def test_rate_estimation_with_a_model_on_a_device(pipelines, measure):
    den = load_denoiser(str(pipelines["ldm"]))
    data = crs.models.model_space(crs.make_dataset("digits", resolution=16, channels=3), den)
    features = (
        crs.models.pixel_features(crs.metrics.make_feature_extractor("efficientnet-lite0"), den)
        if measure == "fid"
        else None
    )
    kwargs = dict(denoiser=den, sigma_min=0.05, sigma_max=20.0, grid_size=2, n_samples=40, seed=0, feature_fn=features)
    expect = crs.estimate_rate(measure, data, **kwargs)
    with StandinDevice() as dev:
        den.to(dev)
        if features is not None:
            kwargs["feature_fn"] = crs.models.pixel_features(
                crs.metrics.make_feature_extractor("efficientnet-lite0", device=dev), den
            )
        got = crs.estimate_rate(measure, data, **kwargs)
    torch.testing.assert_close(
        torch.from_numpy(got.discrepancy), torch.from_numpy(expect.discrepancy), rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_a_training_step_on_a_device(shape):
    from crs.training import EDMLoss, make_noise

    data = crs.make_dataset("gmm") if shape == (2,) else crs.make_dataset("digits")
    noise = make_noise("cosine", 0.002, 80.0)
    losses = {}
    for where in ("cpu", "standin"):
        model = (
            build_denoiser(shape, block_out_channels=(8, 16), norm_num_groups=4)
            if len(shape) == 3
            else build_denoiser(shape)
        )
        ema = (
            build_denoiser(shape, block_out_channels=(8, 16), norm_num_groups=4)
            if len(shape) == 3
            else build_denoiser(shape)
        )
        with StandinDevice() as dev:
            device = dev if where == "standin" else torch.device("cpu")
            model.to(device), ema.to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            edm = EDMLoss(noise, model.sigma_data)
            x0, sigma, eps = edm.draw(data, 8, torch.Generator().manual_seed(0), device)
            assert x0.device == sigma.device == eps.device == device
            loss = edm(model, x0, sigma, eps)
            assert loss.device == device and bool(torch.isfinite(loss.detach()))
            opt.zero_grad()
            loss.backward()
            grads = [p.grad.cpu().clone() for p in model.parameters()]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), model.parameters()):
                    p_ema.lerp_(p.detach(), 0.1)
            losses[where] = (float(loss.detach()), grads, [p.detach().cpu().clone() for p in ema.parameters()])
    assert losses["cpu"][0] == pytest.approx(losses["standin"][0], rel=1e-5)
    for a, b in zip(losses["cpu"][1], losses["standin"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)  # gradients: float32 round-off of the backward pass
    # Adam's first step moves a weight by lr * g / (|g| + eps): up to lr = 1e-3 wherever g is round-off sized, and the
    # EMA takes a tenth of that, so the averaged weights agree to 1e-4 at most (the optimiser may pick another
    # kernel there).
    for a, b in zip(losses["cpu"][2], losses["standin"][2]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
