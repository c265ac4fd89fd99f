"""Schedules into diffusers: sigmas, quantised timesteps, apply_schedule on schedulers and pipelines."""

import numpy as np
import pytest
import torch

import crs
from crs.export import apply_schedule, scheduler_sigma_range, sigmas_to_timesteps


@pytest.fixture(scope="module")
def crs_schedule():
    # a CRS schedule inside the range of diffusers' default betas (sigma ~0.01 .. 157)
    rate = crs.estimate_rate("kl_optimal", None, sigma_min=0.03, sigma_max=14.6)
    return crs.optimize_schedule(rate)


def test_euler_scheduler_samples_on_crs_sigmas(crs_schedule, tmp_path):
    from diffusers import EulerDiscreteScheduler

    crs_schedule.save(tmp_path / "schedule.json")
    sched = apply_schedule(EulerDiscreteScheduler(), str(tmp_path / "schedule.json"), steps=12)
    torch.testing.assert_close(sched.sigmas.double(), crs_schedule.discretize(12), rtol=1e-6, atol=1e-7)
    sched.set_timesteps(7)  # what a pipeline does inside __call__
    torch.testing.assert_close(sched.sigmas.double(), crs_schedule.discretize(7), rtol=1e-6, atol=1e-7)
    # and sampling through it equals crs' Euler on the same sigmas
    data = crs.make_dataset("gmm")
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = noise * sched.sigmas[0].double()
    for i, t in enumerate(sched.timesteps):
        s = sched.sigmas[i].double()
        sched.scale_model_input(x, t)
        x = sched.step((x - data.denoiser(x, s)) / s, t, x).prev_sample
    ours = crs.sampling.sample_euler(data.denoiser, noise * crs_schedule.sigma_max, crs_schedule.discretize(7))
    assert float((x - ours).abs().max()) < 1e-4


@pytest.mark.parametrize("cls", ["HeunDiscreteScheduler", "DPMSolverMultistepScheduler", "DDPMScheduler"])
def test_timestep_schedulers_get_quantised_timesteps(crs_schedule, cls):
    import diffusers

    sched = getattr(diffusers, cls)()
    apply_schedule(sched, crs_schedule, steps=10)
    expect = sigmas_to_timesteps(crs_schedule.discretize(10), sched)
    got = sched.timesteps.numpy()
    if cls == "HeunDiscreteScheduler":  # Heun repeats interior timesteps for its two stages
        got = np.array(list(dict.fromkeys(got.round().astype(int).tolist())))
    np.testing.assert_array_equal(np.asarray(got, dtype=np.int64), expect)
    # the quantised levels are the nearest training levels in log sigma
    table = np.sqrt((1 - sched.alphas_cumprod.double().numpy()) / sched.alphas_cumprod.double().numpy())
    want = crs_schedule.discretize(10)[:-1].numpy()
    assert np.abs(np.log(table[expect]) - np.log(want)).max() < np.abs(np.diff(np.log(table))).max()


def test_quantisation_and_clipping_warn(crs_schedule):
    from diffusers import DDPMScheduler, EulerDiscreteScheduler

    sched = DDPMScheduler(num_train_timesteps=20)
    with pytest.warns(UserWarning, match="quantise the schedule: 30 levels became"):
        sigmas_to_timesteps(crs_schedule.discretize(30), sched)
    wide = crs.Schedule.from_baseline("karras", 0.002, 500.0)
    lo, hi = scheduler_sigma_range(EulerDiscreteScheduler())
    with pytest.warns(
        UserWarning, match=r"outside the noise range of the scheduler \(EulerDiscreteScheduler \[0.01, 157.4\]\)"
    ):
        s = apply_schedule(EulerDiscreteScheduler(), wide, steps=10)
    assert float(s.sigmas[0]) == pytest.approx(hi, rel=1e-5) and float(s.sigmas[-2]) == pytest.approx(lo, rel=1e-4)
    # clipped as a schedule (re-timed), not level by level: no two levels merge at the clipped ends
    levels = s.sigmas[:-1].double()
    assert bool(torch.all(levels[:-1] > levels[1:])) and len(set(levels.tolist())) == 10
    with pytest.warns(UserWarning, match=r"clipped to \[0.01, 157.4\]"):
        fitted = wide.fit(lo, hi)
    torch.testing.assert_close(levels, fitted.discretize(10)[:-1], rtol=1e-5, atol=0)


def test_apply_schedule_on_a_pipeline_and_errors(crs_schedule, tmp_path):
    from diffusers import DDIMScheduler, DDPMPipeline, EulerDiscreteScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    pipe = DDPMPipeline(unet=unet, scheduler=EulerDiscreteScheduler())
    apply_schedule(pipe, crs_schedule)
    pipe.scheduler.set_timesteps(5)
    torch.testing.assert_close(pipe.scheduler.sigmas.double(), crs_schedule.discretize(5), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="takes neither `sigmas` nor `timesteps`"):
        apply_schedule(DDIMScheduler(), crs_schedule)
    with pytest.raises(ValueError, match="No schedule file"):
        apply_schedule(EulerDiscreteScheduler(), str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text('{"t": [0, 1]}')
    with pytest.raises(ValueError, match="needs the key 'sigma'"):
        apply_schedule(EulerDiscreteScheduler(), str(tmp_path / "bad.json"))


def test_trained_betas_for_ddpm(crs_schedule):
    from diffusers import DDPMScheduler

    from crs.export import to_trained_betas

    betas = to_trained_betas(crs_schedule, 1000)
    sched = DDPMScheduler(num_train_timesteps=1000, trained_betas=betas.tolist())
    sigma = np.sqrt((1 - sched.alphas_cumprod.double().numpy()) / sched.alphas_cumprod.double().numpy())
    np.testing.assert_allclose(sigma, crs_schedule(np.linspace(0, 1, 1000)).numpy(), rtol=1e-4)
