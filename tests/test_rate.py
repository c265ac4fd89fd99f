"""Rate estimation: Monte Carlo against exact discrepancies, cost accounting, determinism, bad input."""

import json

import numpy as np
import pytest

import crs
from crs.analytic import fid_discrepancy, gaussian_discrepancy

GAUSS = dict(mean=0.5, std=0.7, dim=2)


@pytest.fixture(scope="module")
def gauss():
    return crs.make_dataset("gaussian", **GAUSS)


@pytest.mark.parametrize("measure", ["data", "noise"])
def test_model_measures_agree_with_exact_within_error(gauss, measure):
    rate = crs.estimate_rate(measure, gauss, denoiser=gauss.denoiser, grid_size=64, n_samples=4096, seed=1)
    exact = gaussian_discrepancy(measure, rate.sigma[:-1], rate.sigma[1:], **GAUSS).numpy()
    z = (rate.discrepancy - exact) / rate.stderr
    assert np.all(np.abs(z) < 4), np.abs(z).max()
    assert np.abs(rate.discrepancy / exact - 1).max() < 0.05
    # the velocity approaches the closed form (finite grid and samples)
    v = crs.gaussian_velocity(measure, rate.sigma_mid, **GAUSS).numpy()
    np.testing.assert_allclose(rate.velocity(), v, rtol=0.05)


def test_fid_measure_agrees_with_exact_within_error(gauss):
    rate = crs.estimate_rate("fid", gauss, grid_size=64, n_samples=4096, seed=2)
    exact = gaussian_discrepancy("fid", rate.sigma[:-1], rate.sigma[1:], **GAUSS).numpy()
    z = (rate.discrepancy - exact) / rate.stderr
    assert np.all(np.abs(z) < 4), np.abs(z).max()
    # antithetic noise removes the data-noise cross-covariance: accurate at every level, even where
    # the true change is tiny (without it the lowest levels were biased upwards tenfold)
    assert np.abs(rate.discrepancy / exact - 1).max() < 0.05
    assert rate.evaluations == 0 and rate.feature_evaluations == 65 * 4096
    assert rate.floor is not None and rate.floor > 0


def test_fid_measure_on_a_mixture_against_its_exact_moments():
    data = crs.make_dataset("gmm")
    rate = crs.estimate_rate("fid", data, grid_size=32, n_samples=8192, sigma_min=0.1, sigma_max=20.0, seed=3)
    exact = fid_discrepancy(data, rate.sigma[:-1], rate.sigma[1:]).numpy()
    z = (rate.discrepancy - exact) / rate.stderr
    assert np.all(np.abs(z) < 4), np.abs(z).max()


def test_cost_and_determinism():
    data = crs.make_dataset("gmm")
    a = crs.estimate_rate("data", data, denoiser=data.denoiser, grid_size=16, n_samples=300, batch_size=128, seed=7)
    b = crs.estimate_rate("data", data, denoiser=data.denoiser, grid_size=16, n_samples=300, batch_size=300, seed=7)
    assert a.evaluations == 17 * 300
    np.testing.assert_allclose(a.discrepancy, b.discrepancy, rtol=1e-12)  # batch size does not matter
    c = crs.estimate_rate("data", data, denoiser=data.denoiser, grid_size=16, n_samples=300, seed=8)
    assert not np.allclose(a.discrepancy, c.discrepancy)
    # data and noise share evaluations: a combination costs the same as one of them
    d = crs.estimate_rate("data+noise", data, denoiser=data.denoiser, grid_size=16, n_samples=300, seed=7)
    assert d.evaluations == 17 * 300 and set(d.components) == {"data", "noise"}


def test_counting_calls_to_the_model():
    data = crs.make_dataset("gmm")
    calls = []

    def model(x, sigma):
        calls.append(len(x))
        return data.denoiser(x, sigma)

    rate = crs.estimate_rate("noise", data, denoiser=model, grid_size=8, n_samples=100, batch_size=64)
    assert sum(calls) == rate.evaluations == 9 * 100


def test_rate_file_round_trip_and_validation(tmp_path):
    data = crs.make_dataset("gmm")
    rate = crs.estimate_rate("data", data, denoiser=data.denoiser, grid_size=8, n_samples=200)
    rate.save(tmp_path / "rate.json")
    raw = json.loads((tmp_path / "rate.json").read_text())
    assert len(raw["sigma"]) == 9 and len(raw["discrepancy"]) == len(raw["stderr"]) == 8
    back = crs.RateEstimate.load(tmp_path / "rate.json")
    np.testing.assert_array_equal(back.discrepancy, rate.discrepancy)
    for key, value, msg in [("discrepancy", -1.0, "negative"), ("stderr", float("nan"), "non-finite")]:
        bad = dict(raw)
        bad[key] = list(raw[key])
        bad[key][3] = value
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=f"`{key}` holds {msg} values"):
            crs.RateEstimate.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="No rate file"):
        crs.RateEstimate.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(measure="dat"), "Unknown measure 'dat'"),
        (dict(sigma_min=1.0, sigma_max=0.5), "`sigma_min` .* must be smaller than `sigma_max`"),
        (dict(sigma_min=-1.0), "`sigma_min` must be positive"),
        (dict(grid_size=1), "`grid_size` must be an integer >= 2"),
        (dict(n_samples=1), "`n_samples` must be an integer >= 2"),
        (dict(measure="fid", n_samples=39), "`n_samples` must be an integer >= 40"),
        (dict(measure="data", denoiser=None), "needs a model"),
    ],
)
def test_bad_input_raises_before_any_work(kwargs, msg):
    data = crs.make_dataset("gmm")
    calls = []

    def model(x, sigma):
        calls.append(1)
        return data.denoiser(x, sigma)

    args = dict(measure="data", denoiser=model, sigma_min=0.002, sigma_max=80.0, grid_size=8, n_samples=64)
    args.update(kwargs)
    with pytest.raises(ValueError, match=msg):
        crs.estimate_rate(data=data, **args)
    assert not calls


def test_nan_from_the_model_is_named():
    data = crs.make_dataset("gmm")
    with pytest.raises(ValueError, match="non-finite values at sigma="):
        crs.estimate_rate("data", data, denoiser=lambda x, s: x * float("nan"), grid_size=4, n_samples=16)


def test_zero_rate_is_refused():
    data = crs.make_dataset("gmm")
    with pytest.raises(ValueError, match="zero over the whole grid"):
        crs.estimate_rate("data", data, denoiser=lambda x, s: 0 * x, grid_size=4, n_samples=16)


def test_the_range_defaults_to_the_models_own():
    """No range given: a model with a range uses its own ([0.01, 20] here), exact denoisers EDM's [0.002, 80]."""
    gmm = crs.make_dataset("gmm")
    model = crs.models.build_denoiser((2,), sigma_min=0.01, sigma_max=20.0)
    rate = crs.estimate_rate("data", gmm, denoiser=model, grid_size=4, n_samples=16)
    assert (rate.sigma[0], rate.sigma[-1]) == (0.01, 20.0)
    exact = crs.estimate_rate("data", gmm, denoiser=gmm.denoiser, grid_size=4, n_samples=16)
    assert (exact.sigma[0], exact.sigma[-1]) == (0.002, 80.0)
    one_end = crs.estimate_rate("data", gmm, denoiser=model, sigma_max=10.0, grid_size=4, n_samples=16)
    assert (one_end.sigma[0], one_end.sigma[-1]) == (0.01, 10.0)


def test_a_model_of_another_shape_than_the_data_is_named_before_any_work():
    """A 1-channel model on 3-channel data: a ValueError naming both shapes, not torch's RuntimeError."""
    model = crs.models.build_denoiser((1, 8, 8))
    digits = crs.make_dataset("digits", resolution=8, channels=3)
    with pytest.raises(ValueError, match=r"takes samples of shape \(1, 8, 8\), but the dataset gives \(3, 8, 8\)"):
        crs.estimate_rate("data", digits, denoiser=model, grid_size=4, n_samples=16)
