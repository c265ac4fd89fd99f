"""Analytic datasets: exact denoisers (checked by Tweedie's formula) and the closed-form rates."""

import math

import numpy as np
import pytest
import torch

import crs
from crs.analytic import fid_discrepancy, gaussian_discrepancy, gaussian_velocity


def test_denoiser_is_tweedie():
    """D(x; sigma) = x + sigma^2 grad log p_sigma(x), with the log-density differentiated by autograd."""
    data = crs.make_dataset("gmm", dim=3, stds=[0.2, 0.5, 0.3, 0.1, 0.4, 0.2, 0.3, 0.6])
    gen = torch.Generator().manual_seed(0)
    for sigma in (0.05, 0.7, 5.0):
        x = data.sample_noised(64, sigma, gen).requires_grad_(True)
        (grad,) = torch.autograd.grad(data.log_prob(x, sigma).sum(), x)
        torch.testing.assert_close(data.denoiser(x.detach(), sigma), x.detach() + sigma**2 * grad, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(data.eps_prediction(x.detach(), sigma), -sigma * grad, rtol=1e-9, atol=1e-9)


def test_gaussian_denoiser_closed_form():
    data = crs.make_dataset("gaussian", dim=4, mean=[1.0, -2.0, 0.0, 0.5], std=0.7)
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mu = torch.tensor([1.0, -2.0, 0.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(data.denoiser(x, 0.3), mu + 0.49 / (0.49 + 0.09) * (x - mu))


def test_samples_and_moments():
    data = crs.make_dataset("gmm", weights=[3, 1, 1, 1, 1, 1, 1, 1])
    x = data.sample(200_000, torch.Generator().manual_seed(2))
    torch.testing.assert_close(x.mean(0), data.mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), data.cov, atol=0.03, rtol=0)
    # mode shares match the weights (nearest component)
    comp = torch.cdist(x, data.means).argmin(1)
    share = torch.bincount(comp, minlength=8).double() / len(x)
    torch.testing.assert_close(share, data.weights, atol=0.005, rtol=0)


def test_log_prob_is_normalised_in_2d():
    data = crs.make_dataset("gmm", radius=1.0, stds=0.3)
    g = torch.linspace(-4, 4, 401, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    p = data.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1), 0.5).exp()
    assert float(p.sum() * (g[1] - g[0]) ** 2) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("measure", ["data", "noise", "fid"])
@pytest.mark.parametrize("mean,std,dim", [(0.0, 1.0, 2), (0.5, 0.7, 3), ([1.0, -1.0], 2.0, 2)])
def test_gaussian_velocity_is_the_derivative_of_the_discrepancy(measure, mean, std, dim):
    if measure == "fid" and mean == 0.0 and std == 1.0:
        # N(0, I): the VP marginals never change, so the fid rate is exactly zero
        assert float(gaussian_velocity("fid", torch.tensor(0.3), mean, std, dim)) == 0.0
        return
    sigma = torch.logspace(-2, 1.5, 20, dtype=torch.float64)
    h = 1e-6 * sigma
    fd = gaussian_discrepancy(measure, sigma - h, sigma + h, mean, std, dim) / (2 * h)
    torch.testing.assert_close(gaussian_velocity(measure, sigma, mean, std, dim, wrt="sigma"), fd, rtol=1e-5, atol=0)
    dalpha = crs.sigma_to_alpha(sigma - h) - crs.sigma_to_alpha(sigma + h)
    fd_alpha = gaussian_discrepancy(measure, sigma - h, sigma + h, mean, std, dim) / dalpha
    torch.testing.assert_close(
        gaussian_velocity(measure, sigma, mean, std, dim, wrt="alpha"), fd_alpha, rtol=1e-5, atol=0
    )


def test_method_note_closed_forms():
    """docs/method.md section 5: data v = s^2/(s^2+sigma^2), noise v = s/(s^2+sigma^2) w.r.t. sigma."""
    s, sigma = 0.8, torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    torch.testing.assert_close(gaussian_velocity("data", sigma, std=s, wrt="sigma"), s**2 / (s**2 + sigma**2))
    torch.testing.assert_close(gaussian_velocity("noise", sigma, std=s, wrt="sigma"), s / (s**2 + sigma**2))


def test_mixture_fid_discrepancy_reduces_to_gaussian_and_matches_moments():
    g = crs.make_dataset("gaussian", dim=3, mean=0.5, std=0.7)
    a, b = torch.tensor([0.1, 1.0, 8.0]), torch.tensor([0.12, 1.3, 9.0])
    torch.testing.assert_close(
        fid_discrepancy(g, a, b), gaussian_discrepancy("fid", a, b, 0.5, 0.7, 3), rtol=1e-7, atol=0
    )
    mix = crs.make_dataset("gmm", weights=[2, 1, 1, 1, 1, 1, 1, 1])
    # Monte Carlo fit of the VP-scaled noised mixture at two levels, with many samples
    gen = torch.Generator().manual_seed(5)
    x0 = mix.sample(400_000, gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    stats = []
    for s in (0.5, 1.0):
        z = crs.sigma_to_alpha(s) * (x0 + s * eps)
        stats += [z.mean(0).numpy(), torch.cov(z.T).numpy()]
    mc = math.sqrt(crs.fid_from_stats(*stats))
    assert mc == pytest.approx(float(fid_discrepancy(mix, 0.5, 1.0)), rel=0.02)


def test_mixture_data_velocity_in_the_separated_limit():
    """Well-separated components at sigma << their distance: each behaves as its own Gaussian, so
    v_data(sigma)^2 = sum_k w_k s_k^4 / (s_k^2 + sigma^2)^2 (derived; the responsibilities are 0/1)."""
    w, stds = np.array([0.2, 0.5, 0.3]), np.array([0.3, 0.6, 1.0])
    mix = crs.analytic.GaussianMixture([[-40.0], [0.0], [40.0]], stds, w)
    rate = crs.estimate_rate(
        "data", mix, denoiser=mix.denoiser, sigma_min=0.01, sigma_max=2.0, grid_size=32, n_samples=20000
    )
    expect = np.sqrt((w * stds**4 / (stds**2 + rate.sigma_mid[:, None] ** 2) ** 2).sum(1))
    z = (rate.velocity("sigma") - expect) / rate.velocity_stderr("sigma")
    assert np.all(np.abs(z) < 4.5), np.abs(z).max()
    np.testing.assert_allclose(rate.velocity("sigma"), expect, rtol=0.03)


def test_dataset_registry_errors():
    with pytest.raises(ValueError, match="Unknown dataset 'gmmm'; valid choices: gaussian, gmm"):
        crs.make_dataset("gmmm")
    with pytest.raises(ValueError, match="Bad arguments for dataset 'gaussian'.*Valid keywords: dim, mean, std"):
        crs.make_dataset("gaussian", sd=1.0)
    with pytest.raises(ValueError, match="stds"):
        crs.make_dataset("gmm", stds=-1.0)
