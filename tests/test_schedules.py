"""Schedules: baselines against their peers (diffusers), the continuous schedule object, conversions."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import crs
from crs.schedules import BASELINES, Schedule, baseline_sigmas, check_sigma_range


def _diffusers_euler(n, **flags):
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(**flags)
    sched.set_timesteps(n)
    return sched


@pytest.mark.parametrize("n", [2, 5, 10, 37])
@pytest.mark.parametrize(
    "flag,name",
    [("use_karras_sigmas", "karras"), ("use_exponential_sigmas", "exponential"), ("use_beta_sigmas", "beta")],
)
def test_baselines_equal_diffusers_euler(n, flag, name):
    sched = _diffusers_euler(n, **{flag: True})
    ref = sched.sigmas.double()
    ours = baseline_sigmas(name, n, float(ref[n - 1]), float(ref[0]))
    # diffusers stores float32 sigmas: compare at float32 precision
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2e-6, atol=1e-7)


def test_karras_equals_diffusers_for_an_explicit_range():
    sched = _diffusers_euler(12, use_karras_sigmas=True, sigma_min=0.002, sigma_max=80.0)
    torch.testing.assert_close(
        baseline_sigmas("karras", 12, 0.002, 80.0).float(), sched.sigmas.float(), rtol=2e-6, atol=1e-7
    )


@pytest.mark.parametrize("model", ["StableDiffusion", "StableDiffusionXL", "StableDiffusionVideo"])
def test_ays_lists_equal_diffusers(model):
    from diffusers.schedulers import AysSchedules

    ref = torch.tensor(AysSchedules[f"{model}Sigmas"], dtype=torch.float64)
    torch.testing.assert_close(crs.ays_sigmas(10, model), ref)


def test_ays_loglinear_interpolation():
    s20 = crs.ays_sigmas(20)
    ref = torch.tensor(crs.schedules._AYS["StableDiffusion"], dtype=torch.float64)
    assert len(s20) == 21 and s20[-1] == 0
    assert s20[0] == pytest.approx(float(ref[0])) and s20[-2] == pytest.approx(float(ref[-1]))
    # the paper's recipe: linear interpolation of log sigma at uniform positions
    xs = np.linspace(0, 1, 10)
    expect = np.exp(np.interp(np.linspace(0, 1, 20), xs, np.log(ref.numpy()[::-1])))[::-1]
    np.testing.assert_allclose(s20[:-1].numpy(), expect)


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("n", [2, 3, 10, 50])
def test_baseline_convention(name, n):
    s = baseline_sigmas(name, n, 0.002, 80.0)
    assert s.dtype == torch.float64 and s.shape == (n + 1,)
    assert s[-1] == 0 and s[0] == pytest.approx(80.0, rel=1e-12) and s[-2] == pytest.approx(0.002, rel=1e-12)
    assert torch.all(s[:-2] > s[1:-1]), "strictly descending"


def test_closed_forms_of_baselines():
    n, lo, hi = 9, 0.01, 50.0
    i = np.arange(n) / (n - 1)
    np.testing.assert_allclose(
        baseline_sigmas("exponential", n, lo, hi)[:-1], np.exp(np.log(hi) + i * (np.log(lo) - np.log(hi)))
    )
    a, b = math.atan(lo), math.atan(hi)
    np.testing.assert_allclose(baseline_sigmas("kl_optimal", n, lo, hi)[:-1], np.tan(b + i * (a - b)))
    # cosine with s = 0 is alpha = cos(pi t / 2), i.e. exactly the KL-optimal (tan) schedule
    np.testing.assert_allclose(
        baseline_sigmas("cosine", n, lo, hi, s=0.0), baseline_sigmas("kl_optimal", n, lo, hi), rtol=1e-10
    )
    # VP with DDPM's linear betas: time-uniform, sigma(t)^2 = exp(beta_d t^2 / 2 + beta_min t) - 1
    vp = baseline_sigmas("vp", n, lo, hi)[:-1].numpy()
    t = (np.sqrt(0.1**2 + 2 * 19.9 * np.log1p(vp**2)) - 0.1) / 19.9
    np.testing.assert_allclose(np.diff(t), np.full(n - 1, np.diff(t)[0]), rtol=1e-9)


def test_bad_inputs_raise_with_names():
    with pytest.raises(ValueError, match="Unknown baseline 'karas'.*karras"):
        baseline_sigmas("karas", 10)
    with pytest.raises(ValueError, match="step count must be an integer >= 2"):
        baseline_sigmas("karras", 1)
    with pytest.raises(ValueError, match="sigma_min.*smaller than.*sigma_max"):
        baseline_sigmas("karras", 10, 80.0, 0.002)
    with pytest.raises(ValueError, match="sigma_min.*smaller"):
        check_sigma_range(1.0, 1.0)
    with pytest.raises(ValueError, match="`sigma_min` must be positive"):
        check_sigma_range(0.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        check_sigma_range(float("nan"), 1.0)
    with pytest.raises(ValueError, match="Unknown Align Your Steps model"):
        crs.ays_sigmas(10, "SD3")
    with pytest.raises(ValueError, match="Unknown keyword"):
        baseline_sigmas("karras", 10, rh=7)


def test_conversions_round_trip():
    s = torch.logspace(-3, 2, 50, dtype=torch.float64)
    torch.testing.assert_close(crs.alpha_to_sigma(crs.sigma_to_alpha(s)), s)
    torch.testing.assert_close(crs.logsnr_to_sigma(crs.sigma_to_logsnr(s)), s)
    a = crs.sigma_to_alpha(s)
    torch.testing.assert_close(crs.sigma_to_logsnr(s), torch.log(a**2 / (1 - a**2)))


def test_schedule_object_matches_its_baseline_and_inverts():
    sched = Schedule.from_baseline("karras", 0.002, 80.0)
    for n in (2, 7, 40):
        torch.testing.assert_close(sched.discretize(n), baseline_sigmas("karras", n, 0.002, 80.0), rtol=1e-7, atol=0)
    t = torch.rand(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(sched.inverse(sched(t)), t, atol=1e-12, rtol=0)
    assert float(sched.inverse(torch.tensor(1e-6))) == 0.0 and float(sched.inverse(torch.tensor(1e6))) == 1.0


def test_schedule_training_draws_are_seeded_and_follow_the_density():
    sched = Schedule.from_baseline("exponential", 0.01, 10.0)
    a = sched.sample_sigmas(4096, torch.Generator().manual_seed(3))
    b = sched.sample_sigmas(4096, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() >= 0.01 and a.max() <= 10.0
    # exponential = uniform in log sigma: density over log sigma is 1 / log(10 / 0.01)
    dens = sched.density(torch.tensor([0.02, 0.5, 5.0]), wrt="log_sigma")
    torch.testing.assert_close(dens, torch.full((3,), 1 / math.log(1000.0), dtype=torch.float64), rtol=1e-6, atol=0)
    # the density over sigma integrates to 1
    s = np.exp(np.linspace(np.log(0.01), np.log(10.0), 20001))
    assert np.trapezoid(sched.density(s).numpy(), s) == pytest.approx(1.0, rel=1e-4)
    # and the draws follow it: a Kolmogorov-Smirnov distance consistent with 4096 draws
    cdf = np.log(np.sort(a.numpy()) / 0.01) / np.log(1000.0)
    assert np.max(np.abs(cdf - np.arange(1, 4097) / 4096)) < 1.63 / np.sqrt(4096)


def test_schedule_json_round_trip_is_exact(tmp_path):
    sched = Schedule.from_baseline("beta", 0.002, 80.0)
    path = tmp_path / "s.json"
    sched.save(path, note="x")
    assert json.loads(path.read_text())["note"] == "x"
    back = Schedule.load(path)
    assert back.discretize(13).tolist() == sched.discretize(13).tolist()
    assert back.meta == {"baseline": "beta"}


def test_schedule_rejects_bad_tables():
    with pytest.raises(ValueError, match="from 0 to 1"):
        Schedule([0.0, 0.5], [1.0, 2.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        Schedule([0.0, 0.5, 1.0], [1.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        Schedule([0.0, 0.5, 1.0], [1.0, float("nan"), 2.0])


@pytest.mark.parametrize("name", BASELINES)
def test_closed_form_inverse_of_every_baseline(name):
    t = np.linspace(0, 1, 101)
    fn, inv = crs.baseline_sigma_fn(name, 0.002, 80.0), crs.schedules.baseline_t_fn(name, 0.002, 80.0)
    np.testing.assert_allclose(inv(fn(t)), t, atol=1e-9)


def test_fit_range_is_the_one_clipping_rule():
    """Inside the range (to a relative 1e-6) unchanged and silent; outside cut with a warning; None ends free."""
    import warnings

    from crs.schedules import fit_range

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_range(0.01, 50.0, 0.002, 80.0) == (0.01, 50.0)
        assert fit_range(0.002 * (1 - 1e-7), 80.0 * (1 + 1e-7), 0.002, 80.0) == (0.002 * (1 - 1e-7), 80.0 * (1 + 1e-7))
        assert fit_range(1e-5, 1e5, None, None) == (1e-5, 1e5)
    with pytest.warns(UserWarning, match=r"The schedule \[0.001, 100\] reaches outside the noise range of M: "):
        assert fit_range(0.001, 100.0, 0.002, 80.0, "The schedule", "M") == (0.002, 80.0)
    with pytest.warns(UserWarning, match=r"clipped to \[0.001, 80\]"):
        assert fit_range(0.001, 100.0, None, 80.0) == (0.001, 80.0)


def test_a_models_range_follows_the_model_and_clips_with_a_warning():
    from crs.schedules import fit_model_range

    den = SimpleNamespace(sigma_min=0.03876, sigma_max=83.82)  # the range is all a model contributes
    assert fit_model_range(den, None, None) == (den.sigma_min, den.sigma_max)
    assert fit_model_range(den, 0.1, 10.0) == (0.1, 10.0)
    with pytest.warns(
        UserWarning,
        match=r"reaches outside the noise range of the model \[0.03876, 83.82\]: clipped to \[0.03876, 80\]",
    ):
        assert fit_model_range(den, 0.002, 80.0) == (den.sigma_min, 80.0)
    assert fit_model_range(crs.make_dataset("gmm").denoiser, None, None) == (0.002, 80.0)


def test_a_schedule_outside_the_models_range_is_clipped_keeping_its_spacing():
    from crs.schedules import fit_schedule

    den = SimpleNamespace(sigma_min=0.03876, sigma_max=83.82)
    wide = Schedule.from_baseline("kl_optimal", 0.002, 200.0)
    with pytest.warns(UserWarning, match=r"outside the noise range of the models \(ldm \[0.03876, 83.82\]\): clipped"):
        fitted = fit_schedule(wide, {"ldm": den, "exact": crs.make_dataset("gmm").denoiser})
    assert fitted.sigma_min == pytest.approx(den.sigma_min) and fitted.sigma_max == pytest.approx(den.sigma_max)
    # inside the kept range the schedule is the same curve: equal steps in t of the original schedule
    t = wide.inverse(fitted.discretize(8)[:-1]).numpy()
    assert np.allclose(np.diff(t), np.diff(t)[0], atol=1e-6)
    assert fit_schedule(fitted, {"ldm": den}) is fitted
    assert fit_schedule(wide, {"exact": crs.make_dataset("gmm").denoiser}) is wide  # no range: any schedule


def test_log_gap_is_the_largest_gap_in_log_sigma_between_levels():
    """Two discretised schedules compared level by level, the final 0 left out (float64 logs of exact powers of 2:
    to round-off)."""

    assert crs.schedules.log_gap([4.0, 2.0, 1.0, 0.0], [4.0, 1.0, 1.0, 0.0]) == pytest.approx(math.log(2), rel=1e-12)
    assert crs.schedules.log_gap([4.0, 2.0, 0.0], [4.0, 2.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match="Schedules of 3 and 2 levels"):
        crs.schedules.log_gap([4.0, 2.0, 0.0], [4.0, 0.0])
