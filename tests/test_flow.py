"""Flow-matching models (crs.flow): the map between flow time and sigma, the exact equivalence of a model through
the flow adapter and through the suite's own path, and the shifted schedules flow models ship with, against
diffusers' FlowMatchEulerDiscreteScheduler."""

import json

import numpy as np
import pytest
import torch

import crs
from crs.flow import FlowDenoiser, VelocityModel, flow_sigmas, flow_to_sigma, flux_mu, sigma_to_flow

RING = dict(n_components=8, radius=2.0, stds=0.2)


def _random_prompts(n: int, g: torch.Generator):
    """``n`` random prompt embeddings (5 tokens of 16 features) and pooled ones (8), the empty prompt's too: the
    shapes the tiny SD3 and Flux stand-ins take."""
    from crs.prompts import PromptTable

    return PromptTable(
        torch.randn(n, 5, 16, generator=g),
        torch.randn(5, 16, generator=g),
        pooled=torch.randn(n, 8, generator=g),
        null_pooled=torch.randn(8, generator=g),
    )


def test_flow_time_and_sigma_are_one_map():
    """sigma = s / (1 - s) and back, and x_s = (1 - s) x0 + s eps is (1 - s) times the VE sample x0 + sigma eps."""
    s = np.array([1e-3, 0.1, 0.5, 0.9, 0.999])
    np.testing.assert_allclose(sigma_to_flow(flow_to_sigma(s)), s, rtol=1e-14)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    for t in s:
        sigma = flow_to_sigma(float(t))
        torch.testing.assert_close((1 - t) * x0 + t * eps, (1 - t) * (x0 + sigma * eps), rtol=1e-13, atol=1e-13)


def test_the_mixture_through_the_flow_adapter_is_the_mixture():
    """The 2-D mixture's exact denoiser written as a velocity model gives the same rates (data and noise measures),
    samples (Euler, Heun, DPM-Solver++(2M)) and teacher errors through FlowDenoiser as through the suite's own path.
    Both are float64 throughout; the two paths differ by a few divisions by (1 - s) and s, so they agree to
    round-off amplified by at most sigma_max (1e-9 relative)."""
    data = crs.make_dataset("gmm", **RING)
    exact = data.denoiser
    flow = FlowDenoiser(VelocityModel(exact), data.shape, s_min=1e-4)
    common = dict(sigma_min=0.01, sigma_max=50.0, grid_size=8, n_samples=512, seed=1)
    for measure in ("data", "noise"):
        a = crs.estimate_rate(measure, data, denoiser=exact, **common)
        b = crs.estimate_rate(measure, data, denoiser=flow, **common)
        np.testing.assert_allclose(b.discrepancy, a.discrepancy, rtol=1e-9)
    sigmas = crs.baseline_sigmas("karras", 6, 0.01, 50.0)
    for sampler in ("euler", "heun", "dpmpp_2m"):
        kw = dict(sampler=sampler, seed=3, dtype=torch.float64)
        a = crs.sampling.generate(exact, data.shape, 64, sigmas, **kw)
        b = crs.sampling.generate(flow, data.shape, 64, sigmas, **kw)
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)
    a = crs.teacher_error(exact, data, "euler", sigmas, n=64, steps=64)
    b = crs.teacher_error(flow, data, "euler", sigmas, n=64, steps=64)
    assert b.value == pytest.approx(a.value, rel=1e-9)


def test_the_digits_unet_through_the_flow_adapter_is_the_unet():
    """A digits UNet (float32 network, randomly initialised: the map, not the training, is under test) written as a
    velocity model: the same rate and Euler samples through the flow adapter. The network sees inputs that went
    through (1 - s) and back, so the two paths differ at float32 round-off (1e-4 relative)."""
    data = crs.make_dataset("digits")
    unet = crs.models.build_denoiser(data.shape, block_out_channels=(8, 16), layers_per_block=1).eval()
    flow = FlowDenoiser(VelocityModel(unet), data.shape, s_min=sigma_to_flow(unet.sigma_min))
    common = dict(sigma_min=0.01, sigma_max=50.0, grid_size=4, n_samples=64, seed=1)
    with torch.no_grad():
        a = crs.estimate_rate("data", data, denoiser=unet, **common)
        b = crs.estimate_rate("data", data, denoiser=flow, **common)
        np.testing.assert_allclose(b.discrepancy, a.discrepancy, rtol=1e-4)
        sigmas = crs.baseline_sigmas("karras", 5, 0.01, 50.0)
        x = crs.sampling.generate(unet, data.shape, 16, sigmas, sampler="euler", seed=2)
        y = crs.sampling.generate(flow, data.shape, 16, sigmas, sampler="euler", seed=2)
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-4)


def test_the_shipped_flow_schedules_are_diffusers_shifted_levels():
    """SD3's static shift and Flux's dynamic (exponential) shift, as FlowMatchEulerDiscreteScheduler applies them to
    uniform flow times, are sigma scaled by shift or e^mu: the baselines `sd3`, `flux` and `flow` (and
    flow_sigmas) give the scheduler's levels on the same ends (float32 scheduler: 1e-6 relative)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    u = np.linspace(0.98, 0.01, 8)
    cases = [
        ("sd3", FlowMatchEulerDiscreteScheduler(shift=3.0), {}),
        ("flux", FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), {"mu": 1.15}),
        ("flow", FlowMatchEulerDiscreteScheduler(), {}),
    ]
    for name, scheduler, kw in cases:
        scheduler.set_timesteps(sigmas=u.tolist(), **kw)
        levels = flow_to_sigma(scheduler.sigmas[:-1].double().numpy())
        ours = crs.baseline_sigmas(name, len(u), levels[-1], levels[0])[:-1].numpy()
        np.testing.assert_allclose(ours, levels, rtol=1e-5)
    shifted = flow_sigmas(8, 0.01, 100.0, shift=3.0)
    np.testing.assert_allclose(shifted, crs.baseline_sigmas("sd3", 8, 0.01, 100.0)[:-1].numpy(), rtol=1e-12)
    assert flux_mu(4096) == pytest.approx(1.15) and flux_mu(256) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="Unknown baseline 'sd4'.*flow, sd3, flux"):
        crs.baseline_sigmas("sd4", 4)


def test_apply_schedule_gives_a_flow_scheduler_the_crs_levels_whatever_its_shift(tmp_path):
    """FlowMatchEulerDiscreteScheduler shifts the flow times it is given (statically by `shift`, or dynamically by
    the `mu` a Flux pipeline passes at call time): apply_schedule un-shifts the CRS levels first, so the scheduler
    ends on exactly the CRS levels (in flow time; float32 scheduler: 1e-5 relative), also when the pipeline passes
    its own default sigmas, as SD3's and Flux's do. Configurations that move given levels again are refused."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    data = crs.make_dataset("gmm", **RING)
    rate = crs.estimate_rate("data", data, denoiser=data.denoiser, sigma_min=0.01, sigma_max=50.0, n_samples=256)
    schedule = crs.optimize_schedule(rate)
    for scheduler, call in [
        (FlowMatchEulerDiscreteScheduler(shift=3.0), {}),
        (FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), {"mu": 0.8}),
        (FlowMatchEulerDiscreteScheduler(), {}),
    ]:
        crs.apply_schedule(scheduler, schedule)
        lo, hi = crs.export.scheduler_sigma_range(scheduler)
        expect = sigma_to_flow(schedule.fit(lo, hi).discretize(6)[:-1].numpy())
        scheduler.set_timesteps(6, **call)
        np.testing.assert_allclose(scheduler.sigmas[:-1].double().numpy(), expect, rtol=1e-5)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 6, 6).tolist(), **call)  # a flow pipeline's own call
        np.testing.assert_allclose(scheduler.sigmas[:-1].double().numpy(), expect, rtol=1e-5)
        assert float(scheduler.sigmas[-1]) == 0.0
    with pytest.raises(ValueError, match="use_karras_sigmas changes given levels further"):
        crs.apply_schedule(FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), schedule)
    dynamic = crs.apply_schedule(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), schedule)
    with pytest.raises(ValueError, match="`mu` is needed"):
        dynamic.set_timesteps(6)


def test_an_sd3_pipeline_from_its_rate_to_its_own_guided_call(tmp_path):
    """A tiny Stable Diffusion 3 pipeline (flow-matching SD3 transformer, shift 3, SD3's VAE factors) end to end,
    offline, with one prompt per digit (embeddings and pooled embeddings from a file): load -> the data-free rate of
    the prompt-conditional distributions (the model's own samples) -> CRS schedule -> GITS for the guided ODE ->
    apply_schedule -> StableDiffusion3Pipeline's own call with guidance. The transformer is called at exactly the
    CRS levels, and the pipeline's flow-matching Euler lands where the suite's guided Euler sampler does from the
    same noise (the two are the same update in different coordinates; float32 network: 1e-3 on O(1) latents)."""
    from diffusers import StableDiffusion3Pipeline

    from crs.conditioning import Guided, Labels
    from crs.run.standins import build_tiny_pipeline

    folder = build_tiny_pipeline(tmp_path / "sd3", kind="sd3", shape=(3, 16, 16))
    described = crs.models.describe_model(folder)
    assert described["network"] == "SD3Transformer2DModel" and described["text"] and described["text_encoder"]
    g = torch.Generator().manual_seed(0)
    table = _random_prompts(10, g)
    table.save(tmp_path / "prompts.pt")
    data = crs.make_dataset("digits", resolution=16, channels=3)
    den = crs.load_denoiser(str(folder), data, prompts=str(tmp_path / "prompts.pt"))
    assert den.is_flow and den.is_latent and den.conditioning.num_classes == 10
    # a prompt list goes through the pipeline's own encode_prompt (two CLIP encoders and T5): as the pipeline embeds
    listed = crs.prompts.encode_prompts(folder, ["a seven", "a one"])
    full = StableDiffusion3Pipeline.from_pretrained(folder)
    e, ne, pooled, npooled = full.encode_prompt(["a seven", "a one"], None, None, negative_prompt="")
    torch.testing.assert_close(listed.embeds, e, rtol=1e-4, atol=1e-4)  # float32 encoders: round-off
    torch.testing.assert_close(listed.pooled, pooled, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(listed.null, ne[:1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(listed.null_pooled, npooled[:1], rtol=1e-4, atol=1e-4)
    space = crs.model_data.ModelSamples(den, n=8, steps=8, conditions=Labels(10), cache=tmp_path / "pool.pt")
    assert space.labels is not None and space.shape == den.shape  # data-free: the model's own, labelled samples
    rate = crs.estimate_rate("data", space, denoiser=den, grid_size=3, n_samples=8)  # each x0 at its own prompt
    schedule = crs.optimize_schedule(rate)
    found = crs.search_schedule(
        "gits", Guided(den, 4.0), space, "euler", 3, conditions=Labels(10), n=4, teacher_steps=8, grid=6, substeps=1
    )
    assert len(found.sigmas) == 4 and np.all(np.diff(found.sigmas) < 0)
    encoders = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, **dict.fromkeys(encoders))  # embeddings given instead
    pipe.set_progress_bar_config(disable=True)
    crs.apply_schedule(pipe, schedule)
    seen = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(float(k["timestep"][0])), with_kwargs=True)
    w, chosen = 4.0, [1, 7]
    x_T = torch.randn(2, 4, 8, 8, generator=g)
    latents = pipe(
        prompt_embeds=table.embeds[chosen],
        pooled_prompt_embeds=table.pooled[chosen],
        negative_prompt_embeds=table.null.expand(2, -1, -1),
        negative_pooled_prompt_embeds=table.null_pooled.expand(2, -1),
        guidance_scale=w,
        num_inference_steps=4,
        latents=x_T,
        height=16,
        width=16,
        output_type="latent",
    ).images
    levels = schedule.fit(*crs.export.scheduler_sigma_range(pipe.scheduler)).discretize(4)
    np.testing.assert_allclose(seen, 1000 * sigma_to_flow(levels[:-1].numpy()), rtol=1e-5)
    start = x_T.double() / (1.0 - sigma_to_flow(float(levels[0])))  # the pipeline's x_s as the VE x
    ours = crs.sampling.sample_euler(lambda x, s: Guided(den, w)(x, s, torch.tensor(chosen)), start, levels)
    torch.testing.assert_close(latents.double(), ours.double(), rtol=1e-3, atol=1e-3)


def test_a_flux_pipeline_from_its_data_free_rate_to_its_own_guided_call(tmp_path):
    """A tiny Flux.1-dev pipeline (guidance-distilled Flux transformer on packed latents, Flux's dynamic shift and VAE
    factors) end to end, offline, with prompt embeddings from a file and no dataset: load (its size from the
    digits' 16 px) -> the data-free rate (the model's own samples) -> CRS schedule -> GITS for the guided ODE ->
    apply_schedule -> FluxPipeline's own call with its embedded guidance and true classifier-free guidance. The
    transformer sees exactly the CRS levels whatever `mu` the pipeline computes for the image size, and the
    pipeline lands where the suite's guided Euler sampler does from the same noise (float32 network: 1e-3)."""
    from diffusers import FluxPipeline

    from crs.conditioning import Guided, Labels
    from crs.run.standins import build_tiny_pipeline

    folder = build_tiny_pipeline(tmp_path / "flux", kind="flux", shape=(3, 16, 16))
    described = crs.models.describe_model(folder)
    assert described["network"] == "FluxTransformer2DModel" and described["side_multiple"] == 4
    assert described["text"] and described["text_encoder"]
    g = torch.Generator().manual_seed(0)
    table = _random_prompts(3, g)
    table.save(tmp_path / "prompts.pt")
    with pytest.raises(ValueError, match="side that is a multiple of 4"):
        crs.load_denoiser(str(folder), crs.make_dataset("digits", resolution=18, channels=3))
    den = crs.load_denoiser(
        str(folder), crs.make_dataset("digits", resolution=16, channels=3), prompts=str(tmp_path / "prompts.pt")
    )
    assert den.is_flow and den.shape == (16, 8, 8) and den.embedded_guidance == 3.5
    with pytest.raises(ValueError, match=r"set to samples of shape \(16, 8, 8\), got \(16, 4, 4\)"):
        den(torch.zeros(1, 16, 4, 4), 1.0, torch.tensor([0]))
    config = folder / "transformer" / "config.json"  # a Flux conditioned on images takes more input channels
    saved = config.read_text()
    config.write_text(json.dumps({**json.loads(saved), "in_channels": 384}))
    with pytest.raises(ValueError, match="taking 384 input channels.*Fill, Depth, Canny"):
        crs.models.describe_model(folder)
    config.write_text(saved)
    listed = crs.prompts.encode_prompts(folder, ["a seven"])  # CLIP's pooled output and T5's, as the pipeline's
    e, pooled, _ = FluxPipeline.from_pretrained(folder).encode_prompt(["a seven"], None)
    torch.testing.assert_close((listed.embeds, listed.pooled), (e, pooled), rtol=1e-4, atol=1e-4)
    assert listed.embeds.shape == (1, 512, 16) and listed.null.shape == (1, 512, 16)  # Flux's 512 T5 tokens
    pool = crs.model_data.ModelSamples(den, n=6, steps=8, conditions=Labels(3, balanced=True))
    rate = crs.estimate_rate("data", pool, denoiser=den, grid_size=3, n_samples=6)
    schedule = crs.optimize_schedule(rate)
    w = 2.0
    found = crs.search_schedule(
        "gits", Guided(den, w), pool, "euler", 3, conditions=Labels(3), n=3, teacher_steps=8, grid=6, substeps=1
    )
    assert len(found.sigmas) == 4 and np.all(np.diff(found.sigmas) < 0)
    encoders = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    pipe = FluxPipeline.from_pretrained(folder, **dict.fromkeys(encoders))  # embeddings given instead
    pipe.set_progress_bar_config(disable=True)
    crs.apply_schedule(pipe, schedule)
    seen = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(float(k["timestep"][0])), with_kwargs=True)
    chosen = [0, 2]
    x_T = torch.randn(2, *den.shape, generator=g)
    packed = pipe(
        prompt_embeds=table.embeds[chosen],
        pooled_prompt_embeds=table.pooled[chosen],
        negative_prompt_embeds=table.null.expand(2, -1, -1),
        negative_pooled_prompt_embeds=table.null_pooled.expand(2, -1),
        guidance_scale=den.embedded_guidance,
        true_cfg_scale=w,
        num_inference_steps=4,
        latents=FluxPipeline._pack_latents(x_T, 2, 16, 8, 8),
        height=16,
        width=16,
        output_type="latent",
    ).images
    latents = FluxPipeline._unpack_latents(packed, 16, 16, pipe.vae_scale_factor)
    levels = schedule.fit(*crs.export.scheduler_sigma_range(pipe.scheduler)).discretize(4)
    expect = sigma_to_flow(levels[:-1].numpy())
    np.testing.assert_allclose(seen[::2], expect, rtol=1e-5)  # each step: the prompt's branch, then the null's
    np.testing.assert_allclose(seen[1::2], expect, rtol=1e-5)
    start = x_T.double() / (1.0 - sigma_to_flow(float(levels[0])))  # the pipeline's x_s as the VE x
    ours = crs.sampling.sample_euler(lambda x, s: Guided(den, w)(x, s, torch.tensor(chosen)), start, levels)
    torch.testing.assert_close(latents.double(), ours.double(), rtol=1e-3, atol=1e-3)
