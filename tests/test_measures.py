"""Discrepancy measures: parsing, the Frechet distance against clean-fid, implied and combined velocities."""

import numpy as np
import pytest
import torch

import crs
from crs.distances import fid_from_stats
from crs.measures import (
    combine_velocities,
    format_measure,
    parse_measure,
    rms_with_stderr,
    schedule_pass,
)


def test_parse_measure_forms():
    assert parse_measure("data") == {"data": 1.0}
    assert parse_measure("data+cosine") == {"data": 0.5, "cosine": 0.5}
    assert parse_measure("data:3+noise:1") == {"data": 0.75, "noise": 0.25}
    assert parse_measure({"fid": 2, "kl_optimal": 2}) == {"fid": 0.5, "kl_optimal": 0.5}
    assert format_measure(parse_measure("data:3+noise:1")) == "data:0.75+noise:0.25"


@pytest.mark.parametrize(
    "spec,msg",
    [
        ("dta", "Unknown measure 'dta'; valid choices: fid, data, noise, karras"),
        ("data+data", "appears twice"),
        ("data:x", "Bad weight 'x'"),
        ("data:-1", "must be a positive number"),
        ("", "non-empty string"),
        (3, "non-empty string"),
    ],
)
def test_parse_measure_errors(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse_measure(spec)


def test_fid_from_stats_equals_clean_fid():
    from cleanfid.fid import frechet_distance

    rng = np.random.default_rng(0)
    # 1-D: (m1 - m2)^2 + (sqrt(c1) - sqrt(c2))^2 (clean-fid's sqrtm call fails on 1x1 with scipy 1.17)
    assert fid_from_stats([0.0], [[4.0]], [1.0], [[1.0]]) == pytest.approx(1.0 + 1.0)
    for dim in (2, 3, 16):
        a, b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
        cov1, cov2 = a @ a.T + 0.1 * np.eye(dim), b @ b.T
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        assert fid_from_stats(mu1, cov1, mu2, cov2) == pytest.approx(frechet_distance(mu1, cov1, mu2, cov2), rel=1e-6)
    assert fid_from_stats(mu1, cov1, mu1, cov1) == pytest.approx(0.0, abs=1e-9)


def test_rms_with_stderr():
    ms = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 0.0, 2.0]])
    rms, se = rms_with_stderr(ms)
    np.testing.assert_allclose(rms, [1.0, 1.0])
    assert se[0] == 0.0 and se[1] == pytest.approx(np.std([0, 2, 0, 2], ddof=1) / 2 / 2)


def test_kl_optimal_implied_velocity_is_the_cosine_closed_form():
    """alpha = cos(pi t / 2) (the tan schedule) has constant rate under v = 1/sqrt(1 - alpha^2)."""
    grid = crs.logsnr_grid(0.002, 80.0, 64)
    d = schedule_pass("kl_optimal", grid)
    alpha = crs.sigma_to_alpha(grid)
    exact = np.abs(np.diff(np.arccos(alpha)))  # integral of 1/sqrt(1-alpha^2) d alpha over each interval
    np.testing.assert_allclose(d / d.sum(), exact / exact.sum(), rtol=1e-8)


def test_implied_velocity_reproduces_its_schedule():
    """CRS (xi = 1) on the velocity a baseline implies gives back that baseline."""
    for name in ("karras", "cosine", "vp"):
        rate = crs.estimate_rate(name, None, sigma_min=0.002, sigma_max=80.0, grid_size=256)
        sched = crs.optimize_schedule(rate)
        np.testing.assert_allclose(sched.discretize(10), crs.baseline_sigmas(name, 10), rtol=2e-3)


def test_combination_is_a_weighted_geometric_mean():
    d1, d2 = np.array([1.0, 2.0, 1.0]), np.array([4.0, 1.0, 1.0])
    zero = np.zeros(3)
    d, se = combine_velocities({"a": 0.5, "b": 0.5}, {"a": (d1, zero), "b": (d2, zero)})
    np.testing.assert_allclose(d, np.sqrt(d1 / 4 * d2 / 6))
    np.testing.assert_allclose(se, 0)
    with pytest.raises(ValueError, match="zero over the whole grid"):
        combine_velocities({"a": 1.0}, {"a": (zero, zero)})


def test_fid_from_features_wide_path_is_exact():
    from crs.distances import fid_from_features

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 50)), rng.normal(0.3, 1.2, size=(40, 50))
    cov = lambda x: np.cov(x, rowvar=False)  # noqa: E731
    assert fid_from_features(a, b) == pytest.approx(fid_from_stats(a.mean(0), cov(a), b.mean(0), cov(b)), rel=1e-6)
    tall_a, tall_b = rng.normal(size=(300, 5)), rng.normal(size=(200, 5))
    assert fid_from_features(tall_a, tall_b) == pytest.approx(
        fid_from_stats(tall_a.mean(0), cov(tall_a), tall_b.mean(0), cov(tall_b))
    )


def test_fid_measure_on_images_with_offline_features():
    from crs.metrics import make_feature_extractor

    data = crs.make_dataset("digits")
    rate = crs.estimate_rate(
        "fid",
        data,
        feature_fn=make_feature_extractor("efficientnet-lite0"),
        grid_size=4,
        n_samples=40,
        sigma_min=0.01,
        sigma_max=10.0,
    )
    assert rate.feature_evaluations == 5 * 40 and np.all(rate.discrepancy > 0) and np.all(np.isfinite(rate.stderr))


@pytest.mark.parametrize("sampler, power", [("euler", 1 / 2), ("heun", 1 / 3), ("dpmpp_2m", 1 / 3)])
def test_a_solver_measure_is_the_local_errors_root_of_the_samplers_order(sampler, power):
    """solver-<sampler>: the RMS local error to the power 1 / (p + 1); the standard error by the delta method."""
    from crs.measures import solver_discrepancy

    ms = torch.tensor([[1.0, 3.0], [4.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    disc, se = solver_discrepancy(sampler, ms)
    rms, rms_se = rms_with_stderr(ms)
    np.testing.assert_allclose(disc, rms**power)
    np.testing.assert_allclose(se[:2], power * rms[:2] ** (power - 1) * rms_se[:2])
    assert se[2] == 0
