"""Discrete-time diffusers models as denoisers: exact conversions, and tiny pipelines saved and loaded locally."""

import pytest
import torch
from torch import nn

import crs
from crs.models import DiffusersDenoiser, load_denoiser


class _Out:
    def __init__(self, sample):
        self.sample = sample


class _ExactGaussianUNet(nn.Module):
    """Stands in for a UNet: the exact eps / v / x0 prediction for x0 ~ N(0, s^2 I) on VP inputs at timestep t."""

    def __init__(self, alphas_cumprod, prediction_type, s=0.7):
        super().__init__()
        self.ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.prediction_type, self.s = prediction_type, s
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.config = type("C", (), {"sample_size": 4, "in_channels": 1})()

    def forward(self, x_vp, t):
        # alphas_cumprod at a fractional timestep, by the same log-sigma interpolation
        log_sig = torch.log(torch.sqrt((1 - self.ac) / self.ac))
        lo = t.floor().long().clamp(0, len(self.ac) - 2)
        frac = (t - lo).reshape(-1, 1, 1, 1)
        sigma = torch.exp(log_sig[lo].reshape(-1, 1, 1, 1) * (1 - frac) + log_sig[lo + 1].reshape(-1, 1, 1, 1) * frac)
        a, sv = 1 / torch.sqrt(1 + sigma**2), sigma / torch.sqrt(1 + sigma**2)
        x0 = a * self.s**2 / (a**2 * self.s**2 + sv**2) * x_vp  # E[x0 | x_vp]
        eps = (x_vp - a * x0) / sv
        out = {"epsilon": eps, "v_prediction": a * eps - sv * x0, "sample": x0}[self.prediction_type]
        return _Out(out + 0 * self.w)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_conversion_reproduces_the_exact_denoiser(prediction_type):
    from diffusers import DDPMScheduler

    ac = DDPMScheduler().alphas_cumprod
    den = DiffusersDenoiser(_ExactGaussianUNet(ac, prediction_type), ac, prediction_type)
    data = crs.make_dataset("gaussian", dim=16, std=0.7)
    x = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigma in (0.05, 0.8, 20.0):  # between the table's levels: exercises the continuous timestep
        torch.testing.assert_close(den(x * (1 + sigma), sigma).flatten(1), data.denoiser((x * (1 + sigma)).flatten(1), sigma), rtol=1e-9, atol=1e-9)
    assert den.sigma_min == pytest.approx(float(((1 - ac[0]) / ac[0]) ** 0.5), rel=1e-6)


def _tiny_pipeline(folder, prediction_type):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(prediction_type=prediction_type)).save_pretrained(folder)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_saved_pipelines_load_as_denoisers_and_run(tmp_path, prediction_type):
    _tiny_pipeline(tmp_path / "pipe", prediction_type)
    data = crs.make_dataset("digits")
    den = load_denoiser(str(tmp_path / "pipe"), data)
    assert isinstance(den, DiffusersDenoiser) and den.shape == (1, 8, 8) and den.prediction_type == prediction_type
    rate = crs.estimate_rate("noise", data, denoiser=den, sigma_min=den.sigma_min, sigma_max=den.sigma_max, grid_size=4, n_samples=8)
    assert rate.evaluations == 5 * 8
    x = crs.sampling.generate(den, den.shape, 4, crs.baseline_sigmas("karras", 3, den.sigma_min, den.sigma_max), sampler="euler")
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()


def test_unsupported_pipelines_are_named(tmp_path):
    import json

    _tiny_pipeline(tmp_path / "pipe", "epsilon")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    json.dump({**index, "vae": ["diffusers", "AutoencoderKL"]}, open(tmp_path / "pipe" / "model_index.json", "w"))
    with pytest.raises(ValueError, match="latent model"):
        load_denoiser(str(tmp_path / "pipe"))
    with pytest.raises(ValueError, match="Unsupported prediction type 'flow'"):
        DiffusersDenoiser(nn.Linear(1, 1), torch.linspace(0.99, 0.01, 10), "flow")


def test_crs_schedule_in_a_loaded_ddpm_pipeline(tmp_path):
    """From a saved pipeline to a CRS schedule to a pipeline call, all offline."""
    from diffusers import DDPMPipeline

    _tiny_pipeline(tmp_path / "pipe", "epsilon")
    den = load_denoiser(str(tmp_path / "pipe"))
    data = crs.make_dataset("digits")
    rate = crs.estimate_rate("noise", data, denoiser=den, sigma_min=den.sigma_min, sigma_max=den.sigma_max, grid_size=8, n_samples=16)
    crs.optimize_schedule(rate).save(tmp_path / "schedule.json")
    pipe = DDPMPipeline.from_pretrained(tmp_path / "pipe")
    crs.apply_schedule(pipe, str(tmp_path / "schedule.json"))
    out = pipe(batch_size=2, num_inference_steps=6, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 8, 8, 1)
    expect = crs.export.sigmas_to_timesteps(crs.Schedule.load(tmp_path / "schedule.json").discretize(6), pipe.scheduler)
    assert pipe.scheduler.timesteps.tolist() == expect.tolist()
