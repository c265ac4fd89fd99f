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
    """A pipeline that scales its inputs takes Euler's exact levels; one that does not (DDPMPipeline, DDIMPipeline)
    is refused an Euler-type scheduler, and DDIMScheduler (uniform steps) is refused naming what to swap in."""
    from diffusers import (
        DDIMScheduler,
        DDPMPipeline,
        DDPMScheduler,
        DiTPipeline,
        EulerDiscreteScheduler,
        LDMPipeline,
        UNet2DModel,
    )

    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    pipe = LDMPipeline(vqvae=None, unet=unet, scheduler=EulerDiscreteScheduler())  # calls scale_model_input
    apply_schedule(pipe, crs_schedule)
    pipe.scheduler.set_timesteps(5)
    torch.testing.assert_close(pipe.scheduler.sigmas.double(), crs_schedule.discretize(5), rtol=1e-6, atol=1e-7)
    # DDPMPipeline never scales its input: Euler there would sample wrongly on any schedule, refused
    with pytest.raises(ValueError, match="DDPMPipeline does not both call `scheduler.scale_model_input`"):
        apply_schedule(DDPMPipeline(unet=unet, scheduler=EulerDiscreteScheduler()), crs_schedule)
    apply_schedule(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()), crs_schedule)  # timesteps: no scaling needed
    # DiTPipeline scales its inputs but not its starting noise: refused too
    from crs.run.standins import build_tiny_pipeline

    dit = DiTPipeline.from_pretrained(build_tiny_pipeline(tmp_path / "dit", kind="dit", shape=(3, 16, 16)))
    dit.scheduler = EulerDiscreteScheduler.from_config(dit.scheduler.config)
    with pytest.raises(ValueError, match="DiTPipeline does not both call"):
        apply_schedule(dit, crs_schedule)
    with pytest.raises(ValueError, match="DDIMScheduler takes neither .* uniformly spaced.*EulerDiscreteScheduler"):
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


def test_export_writes_what_each_front_end_reads(crs_schedule, tmp_path):
    """`python -m crs export`: the ComfyUI list reads back through ComfyUI's own ManualSigmas parsing (a regular
    expression that knows no exponents: small levels are written positionally), the A1111 / Forge list through the
    Extra Schedulers extension's parsing (used as it is: it ends at 0.0 and does not start at exactly 1.0), and the
    diffusers JSON through set_timesteps(sigmas=...) of Euler and of a shifted flow scheduler, each giving back the
    CRS levels (to the 7 digits written, or float32)."""
    import json
    import re

    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    from crs.__main__ import main
    from crs.export import export_schedule
    from crs.flow import sigma_to_flow

    path = tmp_path / "schedule.json"
    crs_schedule.save(path)
    levels = crs_schedule.discretize(8).numpy()
    comfy = export_schedule(path, 8, "comfyui")
    assert "e" not in comfy.lower()
    parsed = [float(x) for x in re.findall(r"[-+]?(?:\d*\.*\d+)", comfy)]  # ComfyUI's ManualSigmas
    np.testing.assert_allclose(parsed, levels, rtol=1e-6)
    a1111 = export_schedule(path, 8, "a1111")
    listed = [float(x) for x in a1111.strip("[]").split(",")]  # the Extra Schedulers extension's custom list
    assert listed[-1] == 0.0 and listed[0] != 1.0
    np.testing.assert_allclose(listed, levels, rtol=1e-6)
    euler = EulerDiscreteScheduler()
    euler.set_timesteps(sigmas=json.loads(export_schedule(path, 8, "diffusers"))["sigmas"])
    np.testing.assert_allclose(euler.sigmas.double().numpy(), levels, rtol=1e-6)
    flow = FlowMatchEulerDiscreteScheduler(shift=3.0)
    flow.set_timesteps(sigmas=json.loads(export_schedule(path, 8, "diffusers", flow=True, shift=3.0))["sigmas"])
    np.testing.assert_allclose(flow.sigmas.double().numpy(), sigma_to_flow(levels), rtol=1e-6)
    flow_list = [float(x) for x in export_schedule(path, 8, "comfyui", flow=True).split(",")]
    np.testing.assert_allclose(flow_list, sigma_to_flow(levels), rtol=1e-6)  # flow models' sigmas are flow times
    out = tmp_path / "sigmas.txt"
    assert main(["export", str(path), "--steps", "8", "--format", "comfyui", "--output", str(out)]) == 0
    assert out.read_text().strip() == comfy
    assert main(["export", str(path), "--steps", "8", "--format", "forge"]) == 2
    with pytest.raises(ValueError, match="cut a full schedule by their `strength`"):
        export_schedule(path, 8, "diffusers", denoise=0.5)
    with pytest.raises(ValueError, match="leaves no step"):
        export_schedule(path, 3, "json", denoise=0.2)


@pytest.mark.parametrize("steps,strength", [(10, 0.55), (7, 0.3), (20, 0.75), (5, 1.0)])
def test_partial_schedules_cut_as_diffusers_img2img_cuts_them(crs_schedule, steps, strength, tmp_path):
    """A partial schedule at denoise d is the levels diffusers' img2img pipeline runs with the CRS schedule applied,
    num_inference_steps = steps and strength = d (its get_timesteps, on a tiny Stable Diffusion img2img pipeline):
    the last int(steps * d) steps (float32 scheduler)."""
    import json

    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

    from crs.export import export_schedule, partial_levels
    from crs.run.standins import build_tiny_pipeline

    folder = build_tiny_pipeline(tmp_path / "sd", kind="sd", shape=(3, 16, 16))
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(folder)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    lo, hi = scheduler_sigma_range(pipe.scheduler)
    fitted = crs_schedule.fit(lo, hi)
    apply_schedule(pipe, fitted)
    pipe.scheduler.set_timesteps(steps)
    timesteps, run = pipe.get_timesteps(steps, strength, "cpu")
    start = len(pipe.scheduler.timesteps) - len(timesteps)
    ours = partial_levels(fitted.discretize(steps), strength)
    assert run == len(ours) - 1
    np.testing.assert_allclose(pipe.scheduler.sigmas[start:].double().numpy(), ours.numpy(), rtol=1e-5)
    fitted.save(tmp_path / "s.json")
    doc = json.loads(export_schedule(tmp_path / "s.json", steps, "json", denoise=strength))
    np.testing.assert_allclose(doc["sigmas"], ours.numpy(), rtol=1e-12)
