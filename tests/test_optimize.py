"""Schedule optimisation: the tan schedule of docs/method.md section 5, xi, per-step discrepancy, density."""

import numpy as np
import pytest
import torch

import crs
from crs.analytic import gaussian_discrepancy


def _exact_rate(measure, std, dim=2, grid_size=64, lo=0.002, hi=80.0):
    grid = crs.logsnr_grid(lo, hi, grid_size)
    d = gaussian_discrepancy(measure, grid[:-1], grid[1:], std=std, dim=dim).numpy()
    return crs.RateEstimate(measure, grid, d, np.zeros_like(d))


def _tan(std, t, lo=0.002, hi=80.0):
    a, b = np.arctan(lo / std), np.arctan(hi / std)
    return std * np.tan(a + np.asarray(t) * (b - a))


@pytest.mark.parametrize("measure", ["data", "noise"])
@pytest.mark.parametrize("std", [1.0, 0.5, 2.0])
def test_xi1_gives_the_tan_schedule(measure, std):
    t = np.linspace(0, 1, 401)
    exact = crs.optimize_schedule(_exact_rate(measure, std), xi=1.0)
    np.testing.assert_allclose(exact(t).numpy(), _tan(std, t), rtol=2e-3)  # 64-interval grid
    data = crs.make_dataset("gaussian", dim=2, std=std)
    mc = crs.optimize_schedule(crs.estimate_rate(measure, data, denoiser=data.denoiser, seed=4), xi=1.0)
    np.testing.assert_allclose(mc(t).numpy(), _tan(std, t), rtol=0.02)


def test_std1_is_the_kl_optimal_baseline():
    sched = crs.optimize_schedule(_exact_rate("data", 1.0))
    for n in (5, 10, 20):
        np.testing.assert_allclose(sched.discretize(n), crs.baseline_sigmas("kl_optimal", n), rtol=1e-3)


def test_xi_changes_the_schedule_and_the_per_step_discrepancy():
    rate = _exact_rate("noise", 0.5)
    s1, s12 = crs.optimize_schedule(rate, xi=1.0), crs.optimize_schedule(rate, xi=1.2)
    steps1 = crs.step_discrepancy(rate, s1.discretize(10))
    steps12 = crs.step_discrepancy(rate, s12.discretize(10))
    assert steps1.std() / steps1.mean() < 1e-3  # constant rate: equal steps
    assert steps12.std() / steps12.mean() > 0.05
    assert np.sum(steps1) == pytest.approx(rate.discrepancy.sum(), rel=1e-9)  # steps partition the path


def test_crs_is_evener_than_every_baseline():
    data = crs.make_dataset("gmm")
    rate = crs.estimate_rate("data", data, denoiser=data.denoiser)
    sched = crs.optimize_schedule(rate)
    schedules = crs.sampling_schedules(sched, [10])
    cv = {name: (lambda d: d.std() / d.mean())(crs.step_discrepancy(rate, s[10])) for name, s in schedules.items()}
    assert cv["crs"] < 0.01
    assert all(cv["crs"] < value for name, value in cv.items() if name != "crs")


def test_density_is_proportional_to_v_pow_xi_dalpha_dsigma():
    rate = _exact_rate("data", 0.5, grid_size=128)
    for xi in (1.0, 1.5):
        sched = crs.optimize_schedule(rate, xi=xi)
        mid = rate.sigma_mid[5:-5]
        v = crs.gaussian_velocity("data", mid, std=0.5).numpy()
        dalpha_dsigma = mid / (1 + mid**2) ** 1.5
        expect = v**xi * dalpha_dsigma
        ratio = sched.density(mid).numpy() / expect
        np.testing.assert_allclose(ratio / ratio.mean(), 1.0, rtol=0.01)


def test_sampling_convention_and_discretisation():
    sched = crs.optimize_schedule(_exact_rate("data", 0.5))
    for n in (2, 3, 10, 50):
        s = sched.discretize(n)
        assert s.shape == (n + 1,) and s[-1] == 0 and s[0] == 80.0 and s[-2] == 0.002
        assert torch.all(s[:-2] > s[1:-1])
        np.testing.assert_allclose(s[:-1].numpy(), sched(1 - np.arange(n) / (n - 1)).numpy(), rtol=1e-12)


@pytest.mark.parametrize("xi", [0, -1.0, float("nan"), "1"])
def test_bad_xi(xi):
    with pytest.raises(ValueError, match="`xi` must be a positive finite number"):
        crs.optimize_schedule(_exact_rate("data", 1.0), xi=xi)


def test_bad_steps_and_out_of_range():
    rate = _exact_rate("data", 1.0, lo=0.01, hi=10.0)
    sched = crs.optimize_schedule(rate)
    with pytest.raises(ValueError, match="step count must be an integer >= 2"):
        sched.discretize(1)
    with pytest.raises(ValueError, match="outside the rate's grid"):
        crs.step_discrepancy(rate, crs.baseline_sigmas("karras", 10, 0.002, 80.0))


def test_zero_velocity_intervals_are_floored_with_a_warning():
    grid = crs.logsnr_grid(0.01, 10.0, 8)
    v = np.array([1.0, 0.0, 1.0, 2.0, 1.0, 1.0, 0.5, 1.0])
    with pytest.warns(UserWarning, match="zero velocity"):
        sched = crs.schedule_from_velocity(grid, v)
    assert torch.all(torch.diff(sched.discretize(20)[:-1]) < 0)
    with pytest.raises(ValueError, match="zero everywhere"):
        crs.schedule_from_velocity(grid, np.zeros(8))


def test_smoothing_reduces_noise():
    data = crs.make_dataset("gmm")
    rate = crs.estimate_rate("noise", data, denoiser=data.denoiser, n_samples=256, seed=0)
    rough = np.log(rate.velocity())
    smooth_sched = crs.optimize_schedule(rate, smoothing=1.0)
    assert smooth_sched.meta["smoothing"] == 1.0
    # the smoothed schedule's log-density is less jagged than the raw log-velocity
    d = np.log(smooth_sched.density(rate.sigma_mid).numpy() * rate.sigma_mid)
    assert np.abs(np.diff(d, 2)).mean() < np.abs(np.diff(rough, 2)).mean()


def test_schedule_functions_for_sampling():
    sched = crs.optimize_schedule(_exact_rate("data", 0.5, lo=0.01, hi=20.0))
    fns = crs.optimize.schedule_functions(sched, ["karras", "vp"])
    assert list(fns) == ["crs", "karras", "vp"]
    assert torch.equal(fns["crs"](7), sched.discretize(7))
    assert torch.equal(fns["karras"](7), crs.baseline_sigmas("karras", 7, 0.01, 20.0))
    with pytest.raises(ValueError, match="Unknown baseline 'karas'"):
        crs.optimize.schedule_functions(sched, ["karas"])


@pytest.mark.parametrize("sigmas", [[0.1, 1.0, 5.0, 0.0], [0.1, 1.0, 5.0], [5.0, 1.0, 1.0, 0.0], [5.0, 0.0, 1.0]])
def test_step_discrepancy_refuses_levels_that_are_not_descending(sigmas):
    rate = _exact_rate("data", 1.0, lo=0.01, hi=10.0)
    with pytest.raises(ValueError, match="`sigmas` must be 1-D, strictly descending and positive, with an optional"):
        crs.step_discrepancy(rate, sigmas)
    assert len(crs.step_discrepancy(rate, [5.0, 1.0, 0.1])) == len(crs.step_discrepancy(rate, [5.0, 1.0, 0.1, 0])) == 2
