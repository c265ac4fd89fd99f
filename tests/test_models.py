"""Denoisers: EDM preconditioning, diffusers save/load round trips, loading by name and its errors."""

import json
import math
import time

import pytest
import torch
from torch import nn

import crs
from crs.models import EDMDenoiser, MLPNet, build_denoiser, load_denoiser


class _Const(nn.Module):
    """F returns a constant; lets the preconditioning be read off D."""

    def __init__(self, value):
        super().__init__()
        self.value = value
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x, c_noise):
        self.seen = (x.clone(), c_noise.clone())
        return torch.full_like(x, self.value) + 0 * self.w


def test_edm_preconditioning():
    net = _Const(1.0)
    den = EDMDenoiser(net, sigma_data=0.5)
    x, sigma = torch.randn(3, 2), torch.tensor([0.1, 1.0, 10.0])
    out = den(x, sigma)
    sd = 0.5
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / torch.sqrt(sigma**2 + sd**2)
    torch.testing.assert_close(out, c_skip[:, None] * x + c_out[:, None])
    torch.testing.assert_close(net.seen[0], x / torch.sqrt(sigma**2 + sd**2)[:, None])
    torch.testing.assert_close(net.seen[1], torch.log(sigma) / 4)
    # dtype and device of the input are kept
    assert den(x.double(), 1.0).dtype == torch.float64


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8), (3, 8, 8)])
def test_save_load_round_trip_in_diffusers_format(tmp_path, shape):
    den = build_denoiser(shape, sigma_min=0.01, sigma_max=50.0).eval()
    den.save_pretrained(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["config.json", "crs_denoiser.json", "diffusion_pytorch_model.safetensors"]
    back = load_denoiser(str(tmp_path / "m"))
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(back(x, 0.7), den(x, 0.7), rtol=0, atol=0)
    assert (back.sigma_min, back.sigma_max, back.shape) == (0.01, 50.0, shape)
    # an ordinary diffusers artifact: diffusers' own loaders read it
    from diffusers import UNet2DModel

    net = (MLPNet if len(shape) == 1 else UNet2DModel).from_pretrained(tmp_path / "m")
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in den.net.parameters())


def test_build_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = build_denoiser((1, 8, 8), seed=3), build_denoiser((1, 8, 8), seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(before, torch.random.get_rng_state())


def test_saving_over_a_model_is_atomic(tmp_path, monkeypatch):
    good = build_denoiser((2,), seed=1)
    good.save_pretrained(tmp_path / "m")
    other = build_denoiser((2,), seed=2)

    def broken(folder, **kwargs):
        (folder / "config.json").write_text("{half")
        raise OSError("disk full")

    monkeypatch.setattr(other.net, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(tmp_path / "m")
    back = load_denoiser(str(tmp_path / "m"))
    x = torch.randn(5, 2)
    torch.testing.assert_close(back(x, 1.0), good.eval()(x, 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_load_errors(tmp_path):
    data = crs.make_dataset("digits")
    with pytest.raises(ValueError, match="No model at 'no/such/folder/x'"):
        load_denoiser("no/such/folder/x", data)
    with pytest.raises(ValueError, match="No diffusers model"):
        load_denoiser(str(tmp_path), data)
    build_denoiser((1, 16, 16)).save_pretrained(tmp_path / "m16")
    with pytest.raises(ValueError, match=r"takes samples of shape \(1, 16, 16\), but the dataset gives \(1, 8, 8\)"):
        load_denoiser(str(tmp_path / "m16"), data)
    cfg = json.loads((tmp_path / "m16" / "crs_denoiser.json").read_text())
    (tmp_path / "m16" / "crs_denoiser.json").unlink()
    with pytest.warns(UserWarning, match="bare UNet2DModel with no scheduler: assuming DDPM's noise table"):
        load_denoiser(str(tmp_path / "m16"))  # without its crs_denoiser.json it is a plain diffusers UNet
    cfg["net_class"] = "Transformer2DModel"
    (tmp_path / "m16" / "crs_denoiser.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="Unsupported network class 'Transformer2DModel'"):
        load_denoiser(str(tmp_path / "m16"))
    with pytest.raises(ValueError, match="needs an analytic dataset"):
        load_denoiser("analytic", data)


def test_hub_id_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ValueError, match="Could not load the hub model 'crs-nonexistent/model'.*local folder"):
        load_denoiser("crs-nonexistent/model")
    assert time.perf_counter() - start < 10


def test_learned_denoiser_feeds_rate_estimation(tmp_path):
    data = crs.make_dataset("digits")
    den = build_denoiser(data.shape)
    rate = crs.estimate_rate("noise", data, denoiser=den, grid_size=4, n_samples=8)
    assert rate.evaluations == 5 * 8 and all(math.isfinite(v) for v in rate.discrepancy)
