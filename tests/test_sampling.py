"""Samplers: exactness on Gaussian data with the exact denoiser, network-evaluation counts, errors."""

import pytest
import torch

import crs
from crs.sampling import generate, sample_euler, sample_heun


def _counting(denoiser):
    calls = []

    def wrapped(x, sigma):
        calls.append(1)
        return denoiser(x, sigma)

    return wrapped, calls


@pytest.mark.parametrize("sampler,nfe", [(sample_euler, lambda n: n), (sample_heun, lambda n: 2 * n - 1)])
def test_nfe_and_accuracy_on_gaussian_data(sampler, nfe):
    data = crs.make_dataset("gaussian", dim=2, mean=1.0, std=0.5)
    sigmas = crs.baseline_sigmas("karras", 32, 0.002, 80.0)
    den, calls = _counting(data.denoiser)
    x = 80.0 * torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sampler(den, x, sigmas)
    assert len(calls) == nfe(32)
    assert torch.allclose(out.mean(0), torch.full((2,), 1.0, dtype=torch.float64), atol=0.03)
    assert torch.allclose(out.std(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.03 if sampler is sample_heun else 0.06)


def test_generate_is_seeded_and_checks_its_input():
    data = crs.make_dataset("gmm")
    sigmas = crs.baseline_sigmas("karras", 5)
    a = generate(data.denoiser, (2,), 16, sigmas, seed=3, dtype=torch.float64)
    b = generate(data.denoiser, (2,), 16, sigmas, seed=3, dtype=torch.float64)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="Unknown sampler 'dpm'"):
        generate(data.denoiser, (2,), 4, sigmas, sampler="dpm")
    with pytest.raises(ValueError, match="strictly descending"):
        generate(data.denoiser, (2,), 4, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="non-finite"):
        generate(lambda x, s: x * float("nan"), (2,), 4, sigmas)
