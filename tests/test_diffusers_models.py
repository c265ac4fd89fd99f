"""Discrete-time diffusers models as denoisers: exact conversions, and tiny pipelines saved and loaded locally."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import crs
from crs.models import DiffusersDenoiser, load_denoiser


class _Out:
    def __init__(self, sample):
        self.sample = sample


class _ExactGaussianUNet(nn.Module):
    """Stands in for a UNet: the exact eps / v / x0 prediction for x0 ~ N(0, s^2 I) on VP inputs at timestep t."""

    def __init__(self, alphas_cumprod, prediction_type, s=0.7):
        super().__init__()
        self.ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.prediction_type, self.s = prediction_type, s
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.config = type("C", (), {"sample_size": 4, "in_channels": 1})()

    def forward(self, x_vp, t):
        # alphas_cumprod at a fractional timestep, by the same log-sigma interpolation
        log_sig = torch.log(torch.sqrt((1 - self.ac) / self.ac))
        lo = t.floor().long().clamp(0, len(self.ac) - 2)
        frac = (t - lo).reshape(-1, 1, 1, 1)
        sigma = torch.exp(log_sig[lo].reshape(-1, 1, 1, 1) * (1 - frac) + log_sig[lo + 1].reshape(-1, 1, 1, 1) * frac)
        a, sv = 1 / torch.sqrt(1 + sigma**2), sigma / torch.sqrt(1 + sigma**2)
        x0 = a * self.s**2 / (a**2 * self.s**2 + sv**2) * x_vp  # E[x0 | x_vp]
        eps = (x_vp - a * x0) / sv
        out = {"epsilon": eps, "v_prediction": a * eps - sv * x0, "sample": x0}[self.prediction_type]
        return _Out(out + 0 * self.w)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_conversion_reproduces_the_exact_denoiser(prediction_type):
    from diffusers import DDPMScheduler

    ac = DDPMScheduler().alphas_cumprod
    den = DiffusersDenoiser(_ExactGaussianUNet(ac, prediction_type), ac, prediction_type)
    data = crs.make_dataset("gaussian", dim=16, std=0.7)
    x = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigma in (0.05, 0.8, 20.0):  # between the table's levels: exercises the continuous timestep
        torch.testing.assert_close(
            den(x * (1 + sigma), sigma).flatten(1),
            data.denoiser((x * (1 + sigma)).flatten(1), sigma),
            rtol=1e-9,
            atol=1e-9,
        )
    assert den.sigma_min == pytest.approx(float(((1 - ac[0]) / ac[0]) ** 0.5), rel=1e-6)


def _tiny_pipeline(folder, prediction_type):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(prediction_type=prediction_type)).save_pretrained(folder)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_saved_pipelines_load_as_denoisers_and_run(tmp_path, prediction_type):
    _tiny_pipeline(tmp_path / "pipe", prediction_type)
    data = crs.make_dataset("digits")
    den = load_denoiser(str(tmp_path / "pipe"), data)
    assert isinstance(den, DiffusersDenoiser) and den.shape == (1, 8, 8) and den.prediction_type == prediction_type
    rate = crs.estimate_rate(
        "noise", data, denoiser=den, sigma_min=den.sigma_min, sigma_max=den.sigma_max, grid_size=4, n_samples=8
    )
    assert rate.evaluations == 5 * 8
    x = crs.sampling.generate(
        den, den.shape, 4, crs.baseline_sigmas("karras", 3, den.sigma_min, den.sigma_max), sampler="euler"
    )
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()


def test_unsupported_pipelines_are_named(tmp_path):
    import json

    _tiny_pipeline(tmp_path / "pipe", "epsilon")
    path = tmp_path / "pipe" / "model_index.json"
    index = json.loads(path.read_text())
    json.dump({**index, "unet": ["diffusers", "UNet2DConditionModel"]}, open(path, "w"))
    config = tmp_path / "pipe" / "unet" / "config.json"
    saved = config.read_text()
    config.write_text(json.dumps({**json.loads(saved), "addition_embed_type": "text_time"}))
    with pytest.raises(ValueError, match="UNet2DConditionModel with added conditioning \\('text_time': SDXL style"):
        load_denoiser(str(tmp_path / "pipe"))
    config.write_text(saved)
    unet = index.pop("unet")
    json.dump({**index, "transformer": ["diffusers", "SanaTransformer2DModel"]}, open(path, "w"))
    with pytest.raises(ValueError, match="SanaTransformer2DModel \\(not supported\\); supported: .*Flux"):
        load_denoiser(str(tmp_path / "pipe"))
    json.dump({**index, "other": ["diffusers", "UNet2DModel"]}, open(path, "w"))
    with pytest.raises(ValueError, match="has no unet or transformer \\(it has: other, scheduler\\)"):
        load_denoiser(str(tmp_path / "pipe"))
    index["unet"] = unet
    json.dump({**index, "scheduler": ["diffusers", "ScoreSdeVeScheduler"]}, open(path, "w"))
    with pytest.raises(ValueError, match="Unsupported scheduler ScoreSdeVeScheduler \\(no discrete noise table"):
        load_denoiser(str(tmp_path / "pipe"))
    with pytest.raises(ValueError, match="Unsupported prediction type 'flow'"):
        DiffusersDenoiser(nn.Linear(1, 1), torch.linspace(0.99, 0.01, 10), "flow")


def test_a_class_conditional_dit_pipeline_is_a_guided_denoiser(tmp_path):
    """A DiT pipeline (class-conditional transformer, learned variance, KL latents) loads as a conditional denoiser
    whose x0-prediction at a table timestep is DiTPipeline's own eps-prediction turned into x0, for every label and
    the null label; guided sampling and the conditional rate run on it."""
    from crs.conditioning import Guided, Labels
    from crs.run.standins import build_tiny_pipeline

    build_tiny_pipeline(tmp_path / "dit", kind="dit", shape=(3, 16, 16))
    den = load_denoiser(str(tmp_path / "dit"), crs.make_dataset("digits", resolution=16, channels=3))
    assert den.conditioning.num_classes == 1000 and den.conditioning.null == 1000 and den.is_latent  # DiT's
    assert den.shape == (4, 8, 8) and den.pixel_shape == (3, 16, 16)
    assert crs.models.describe_model(tmp_path / "dit") == {  # what the preflight reads, from the JSON files alone
        "network": "DiTTransformer2DModel",
        "shape": den.shape,
        "pixel_shape": den.pixel_shape,
        "num_classes": 1000,
        "text": False,
        "text_encoder": False,
        "side_multiple": None,
    }
    t = 500
    ac = den_ac = float(torch.exp(-torch.log1p(torch.exp(2 * den.log_sigmas[t]))))  # alpha_bar_t from the table
    sigma = float(den.log_sigmas[t].exp())
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 7, 1000])
    x_vp = x * ac**0.5
    with torch.no_grad():
        eps = den.unet(x_vp, timestep=torch.full((3,), t), class_labels=labels).sample[:, :4]
    expected = (x_vp - (1 - den_ac) ** 0.5 * eps) / ac**0.5
    # float32 network; the timestep interpolated in float64 lands on t to round-off: float32 tolerance
    torch.testing.assert_close(den(x, sigma, labels), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(den(x, sigma), den(x, sigma, torch.full((3,), 1000)))  # no labels: the null label
    guided, sigmas = Guided(den, 4.0), crs.baseline_sigmas("karras", 4, den.sigma_min, den.sigma_max)
    z = crs.sampling.generate(guided, den.shape, 3, sigmas, sampler="euler", conditions=Labels(1000))
    assert z.shape == (3, 4, 8, 8) and torch.isfinite(z).all()
    rate = crs.estimate_rate(
        "data",
        crs.adapters.model_space(crs.make_dataset("digits", resolution=16, channels=3), den),
        denoiser=den,
        grid_size=2,
        n_samples=8,
    )
    assert rate.meta["guidance"] == 1.0 and np.all(np.isfinite(rate.discrepancy))


# ----------------------------------------------------------------------------- latent models
RGB16 = dict(resolution=16, channels=3)


@pytest.fixture(scope="module")
def ldm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ldm") / "pipe"
    crs.run.standins.build_tiny_pipeline(folder, "ldm", (3, 16, 16))
    return folder


def test_latent_pipeline_loads_with_its_vae(ldm):
    data = crs.make_dataset("digits", **RGB16)
    den = load_denoiser(str(ldm), data)
    assert den.is_latent and den.shape == (3, 8, 8) and den.pixel_shape == (3, 16, 16)
    z = den.encode(data.images[:5])
    assert z.shape == (5, 3, 8, 8)
    images = den.decode(z)
    assert images.shape == (5, 3, 16, 16) and images.abs().max() <= 1.0
    with pytest.raises(
        ValueError, match=r"decodes to images of shape \(3, 16, 16\), but the dataset gives \(3, 8, 8\)"
    ):
        load_denoiser(str(ldm), crs.make_dataset("digits", channels=3))


def test_vae_scaling_follows_the_diffusers_pipelines():
    """z = encoder output * scaling_factor; decode(z) = vae.decode(z / scaling_factor) (LDMPipeline), VQ and KL."""
    from diffusers import AutoencoderKL, UNet2DModel, VQModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    )
    kw = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        latent_channels=4,
        norm_num_groups=4,
        scaling_factor=0.5,
    )
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    for vae in (VQModel(**kw), AutoencoderKL(**kw)):
        den = DiffusersDenoiser(unet, torch.linspace(0.999, 0.01, 50), vae=vae.eval())
        assert den.pixel_shape == (3, 8, 8)
        with torch.no_grad():
            enc = vae.encode(x)
            z = enc.latents if hasattr(enc, "latents") else enc.latent_dist.mode()
            torch.testing.assert_close(den.encode(x), z * 0.5)
            torch.testing.assert_close(den.decode(z * 0.5), vae.decode(z).sample.clamp(-1, 1))
            noised = z + 0.5 * torch.randn(z.shape, generator=torch.Generator().manual_seed(1))  # off the codebook
            raw = den.decode(noised * 0.5, quantize=False)
            if isinstance(vae, VQModel):  # the fid measure decodes noised latents without snapping them to the codebook
                torch.testing.assert_close(raw, vae.decode(noised, force_not_quantize=True).sample.clamp(-1, 1))
                assert not torch.allclose(raw, den.decode(noised * 0.5))
                seen = []
                crs.models.pixel_features(lambda images, seen=seen: seen.append(images) or images.flatten(1), den)(
                    noised * 0.5
                )
                torch.testing.assert_close(seen[0], raw)
            else:  # a KL decoder has no quantiser
                torch.testing.assert_close(raw, den.decode(noised * 0.5))


def test_rate_estimation_and_sampling_on_a_latent_pipeline(ldm, tmp_path):
    data = crs.make_dataset("digits", **RGB16)
    den = load_denoiser(str(ldm), data)
    latents = crs.models.model_space(data, den)
    assert latents.shape == (3, 8, 8)
    rate = crs.estimate_rate(
        "data", latents, denoiser=den, sigma_min=den.sigma_min, sigma_max=80.0, grid_size=4, n_samples=8
    )
    assert rate.evaluations == 5 * 8 and (rate.discrepancy > 0).all()
    seen = []
    features = crs.metrics.make_feature_extractor("identity")

    def record(x):
        seen.append(tuple(x.shape[1:]))
        return features.fn(x)

    fid = crs.estimate_rate(
        "fid",
        latents,
        sigma_min=den.sigma_min,
        sigma_max=80.0,
        grid_size=2,
        n_samples=40,
        feature_fn=crs.models.pixel_features(record, den),
    )
    assert set(seen) == {(3, 16, 16)} and fid.feature_evaluations == 3 * 40  # the fid measure sees decoded images
    schedule = crs.optimize_schedule(rate)
    index = crs.run.jobs.sample_grid(
        {"ldm": den}, {"crs": schedule.discretize}, ["euler"], [3], 6, tmp_path / "s", kinds={"crs": "crs"}
    )
    x = torch.load(index[0]["path"], weights_only=True)
    assert x.shape == (6, 3, 16, 16) and torch.isfinite(x).all() and x.abs().max() <= 1.0


def test_crs_schedule_in_a_loaded_ddpm_pipeline(tmp_path):
    """From a saved pipeline to a CRS schedule to a pipeline call, all offline."""
    from diffusers import DDPMPipeline

    _tiny_pipeline(tmp_path / "pipe", "epsilon")
    den = load_denoiser(str(tmp_path / "pipe"))
    data = crs.make_dataset("digits")
    rate = crs.estimate_rate(
        "noise", data, denoiser=den, sigma_min=den.sigma_min, sigma_max=den.sigma_max, grid_size=8, n_samples=16
    )
    crs.optimize_schedule(rate).save(tmp_path / "schedule.json")
    pipe = DDPMPipeline.from_pretrained(tmp_path / "pipe")
    crs.apply_schedule(pipe, str(tmp_path / "schedule.json"))
    out = pipe(batch_size=2, num_inference_steps=6, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 8, 8, 1)
    expect = crs.export.sigmas_to_timesteps(crs.Schedule.load(tmp_path / "schedule.json").discretize(6), pipe.scheduler)
    assert pipe.scheduler.timesteps.tolist() == expect.tolist()


def _into_hub_cache(cache, repo_id, build):
    """Lay out a locally built pipeline as the Hugging Face cache holds a download (refs/main -> snapshot)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    build(repo / "snapshots" / commit)


@pytest.mark.parametrize("kind,prediction_type", [("ddpm", "epsilon"), ("ddpm", "v_prediction"), ("ldm", "epsilon")])
def test_tiny_pipelines_load_by_hub_id_from_the_cache_offline(tmp_path, monkeypatch, kind, prediction_type):
    """The same path as a downloaded hub model: snapshot_download finds the id in the cache (HF_HUB_OFFLINE=1)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    repo_id = f"crs-test/tiny-{kind}-{prediction_type}"
    _into_hub_cache(
        tmp_path / "hub", repo_id, lambda f: crs.run.standins.build_tiny_pipeline(f, kind, (3, 16, 16), prediction_type)
    )
    data = crs.make_dataset("digits", **RGB16)
    den = load_denoiser(repo_id, data)
    assert den.prediction_type == prediction_type and den.is_latent == (kind == "ldm")
    space = crs.models.model_space(data, den)
    rate = crs.estimate_rate(
        "noise", space, denoiser=den, sigma_min=den.sigma_min, sigma_max=den.sigma_max, grid_size=3, n_samples=6
    )
    assert rate.evaluations == 4 * 6 and np.isfinite(rate.discrepancy).all()
    index = crs.run.jobs.sample_grid(
        {repo_id: den},
        {"crs": crs.optimize_schedule(rate).discretize},
        ["dpmpp_2m"],
        [3],
        4,
        tmp_path / "samples",
        kinds={"crs": "crs"},
    )
    x = torch.load(index[0]["path"], weights_only=True)
    assert x.shape == (4, 3, 16, 16) and torch.isfinite(x).all()
    assert index[0]["path"].startswith(str(tmp_path / "samples" / "crs-test--tiny-"))


def test_a_bare_unet_folder_assumes_ddpm_betas_with_a_warning(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
    ).save_pretrained(tmp_path / "unet")
    with pytest.warns(UserWarning, match="bare UNet2DModel with no scheduler: assuming DDPM's noise table"):
        den = load_denoiser(str(tmp_path / "unet"), crs.make_dataset("digits"))
    assert den.shape == (1, 8, 8) and den.sigma_min == pytest.approx(0.01, rel=1e-3)
    DDPMScheduler(prediction_type="v_prediction", beta_end=0.012).save_pretrained(
        tmp_path / "unet"
    )  # scheduler_config.json beside it
    den = load_denoiser(str(tmp_path / "unet"))
    assert den.prediction_type == "v_prediction" and den.sigma_max < 100


def test_a_text_conditional_unet_guides_with_a_table_of_prompt_embeddings(tmp_path):
    """A Stable-Diffusion-style pipeline (UNet2DConditionModel with cross-attention, KL latents, PNDM): conditions are
    indices into the prompt embeddings given with set_prompts, the last one the empty prompt's; the x0-prediction is
    the UNet's own eps-prediction with those embeddings, turned into x0."""
    from crs.conditioning import Guided, Labels
    from crs.run.standins import build_tiny_pipeline

    build_tiny_pipeline(tmp_path / "sd", kind="sd", shape=(3, 16, 16))
    assert crs.models.describe_model(tmp_path / "sd")["network"] == "UNet2DConditionModel"
    den = load_denoiser(str(tmp_path / "sd"))
    with pytest.raises(ValueError, match="has no prompts yet: give it prompt embeddings"):
        den(torch.zeros(1, 4, 8, 8), 1.0)
    g = torch.Generator().manual_seed(0)
    prompts, empty = torch.randn(3, 5, 16, generator=g), torch.randn(5, 16, generator=g)
    den.set_prompts(prompts, empty)
    assert den.conditioning.kind == "prompts" and den.conditioning.num_classes == 3 and den.conditioning.null == 3
    t = 400
    ac = float(torch.exp(-torch.log1p(torch.exp(2 * den.log_sigmas[t]))))
    sigma, x, cond = float(den.log_sigmas[t].exp()), torch.randn(4, 4, 8, 8, generator=g), torch.tensor([0, 2, 1, 3])
    context = torch.cat([prompts, empty[None]])[cond]
    with torch.no_grad():
        eps = den.unet(x * ac**0.5, torch.full((4,), t), encoder_hidden_states=context).sample
    expected = (x * ac**0.5 - (1 - ac) ** 0.5 * eps) / ac**0.5
    torch.testing.assert_close(den(x, sigma, cond), expected, rtol=1e-4, atol=1e-4)  # float32 network
    sigmas = crs.baseline_sigmas("karras", 4, den.sigma_min, den.sigma_max)
    z = crs.sampling.generate(Guided(den, 7.5), den.shape, 3, sigmas, sampler="euler", conditions=Labels(3))
    assert z.shape == (3, 4, 8, 8) and torch.isfinite(z).all()
    with pytest.raises(ValueError, match=r"must be \(P, L, 16\)"):
        den.set_prompts(torch.zeros(2, 5, 8), torch.zeros(5, 8))


def _guided_chain(den, space, pipe, tmp_path, conditions, w):
    """rate -> CRS schedule -> a schedule searched for the guided ODE -> apply_schedule on the pipeline: the parts a
    user chains, on a conditional pipeline. Returns the CRS schedule and the searched one."""
    from crs.conditioning import Guided

    rate = crs.estimate_rate("data", space, denoiser=den, grid_size=3, n_samples=8)  # each x0 at its own label
    assert rate.meta["guidance"] == 1.0 and np.all(np.isfinite(rate.discrepancy))
    schedule = crs.optimize_schedule(rate)
    schedule.save(tmp_path / "schedule.json")
    found = crs.search_schedule(
        "gits", Guided(den, w), space, "euler", 3, conditions=conditions, n=4, teacher_steps=8, grid=6, substeps=1
    )
    assert found.meta["guidance"] == w and found.meta["conditions"] == conditions.state()
    assert len(found.sigmas) == 4 and np.all(np.diff(found.sigmas) < 0)
    crs.apply_schedule(pipe, str(tmp_path / "schedule.json"))
    return schedule, found


def test_a_dit_pipeline_from_its_rate_to_its_own_guided_call(tmp_path):
    """A class-conditional DiT pipeline end to end, offline: load -> conditional rate -> CRS schedule -> search for
    the guided ODE -> apply_schedule -> DiTPipeline's own call with class labels and guidance, on the CRS levels."""
    from diffusers import DiTPipeline, DPMSolverMultistepScheduler

    from crs.run.standins import build_tiny_pipeline

    build_tiny_pipeline(tmp_path / "dit", kind="dit", shape=(3, 16, 16))
    data = crs.make_dataset("digits", resolution=16, channels=3)
    den = load_denoiser(str(tmp_path / "dit"), data)
    pipe = DiTPipeline.from_pretrained(tmp_path / "dit")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # DDIM takes no custom levels
    labels = crs.conditioning.condition_source(den, data, "data")  # the digits' 10 labels among DiT's 1000
    schedule, _ = _guided_chain(den, crs.adapters.model_space(data, den), pipe, tmp_path, labels, 4.0)
    out = pipe(
        class_labels=[1, 7],
        guidance_scale=4.0,
        num_inference_steps=5,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (2, 16, 16, 3) and np.isfinite(out).all()
    expect = crs.export.sigmas_to_timesteps(
        schedule.fit(*crs.export.scheduler_sigma_range(pipe.scheduler)).discretize(5), pipe.scheduler
    )
    assert pipe.scheduler.timesteps.tolist() == expect.tolist()


def test_a_text_conditional_pipeline_from_its_rate_to_its_own_guided_call(tmp_path):
    """A Stable-Diffusion-style pipeline end to end, offline, with one prompt per class of the digits, embedded by
    the pipeline's own text encoder: load with prompts -> the rate of the prompt-conditional distributions -> CRS
    schedule -> search for the guided ODE -> apply_schedule on the pipeline (Euler swapped in) ->
    StableDiffusionPipeline's own call with the prompts and classifier-free guidance, which lands where the suite's
    own guided Euler sampler does from the same noise, on the CRS levels."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from crs.conditioning import Guided, Labels
    from crs.run.standins import build_tiny_pipeline

    folder = build_tiny_pipeline(tmp_path / "sd", kind="sd", shape=(3, 16, 16))
    data = crs.make_dataset("digits", resolution=16, channels=3)
    prompts = [f"a handwritten digit {k}" for k in range(10)]  # prompt k: digit k (the data's label k)
    den = load_denoiser(str(folder), data, prompts=prompts)
    assert den.prompt_texts == prompts and den.conditioning.num_classes == 10
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)  # as a user swaps it in
    pipe.set_progress_bar_config(disable=True)
    schedule, _ = _guided_chain(den, crs.adapters.model_space(data, den), pipe, tmp_path, Labels(10), 7.5)
    w, chosen, g = 7.5, [1, 7], torch.Generator().manual_seed(0)
    x_T = torch.randn(2, 4, 8, 8, generator=g)
    latents = pipe(
        [prompts[k] for k in chosen], guidance_scale=w, num_inference_steps=4, latents=x_T, output_type="latent"
    ).images
    levels = schedule.fit(*crs.export.scheduler_sigma_range(pipe.scheduler)).discretize(4)
    torch.testing.assert_close(pipe.scheduler.sigmas.double(), levels, rtol=1e-5, atol=0)  # the CRS levels (float32)
    # from the pipeline's own start (SD's schedulers scale the noise by init_noise_sigma, sqrt(sigma_max^2 + 1) with
    # its `leading` spacing, not sigma_max)
    start = (x_T * pipe.scheduler.init_noise_sigma).double()
    ours = crs.sampling.sample_euler(lambda x, s: Guided(den, w)(x, s, torch.tensor(chosen)), start, levels)
    # float32 network in both loops, diffusers' timestep found from its sigma: float32 tolerance on O(1) latents
    torch.testing.assert_close(latents.double(), ours.double(), rtol=1e-3, atol=1e-3)


def test_prompts_are_embedded_as_the_pipeline_embeds_them_or_read_from_a_file(tmp_path):
    """A prompt list is embedded with the pipeline's own tokenizer and text encoder as
    StableDiffusionPipeline.encode_prompt does (the same code path with other batch shapes: equal to float32
    round-off), the empty prompt the unconditional branch; a table saved to a file loads back the same; what cannot
    work (prompts for a DiT, no text encoder, a ControlNet pipeline) is refused by name."""
    from diffusers import StableDiffusionPipeline

    from crs.prompts import PromptTable, encode_prompts
    from crs.run.standins import build_tiny_pipeline

    folder = build_tiny_pipeline(tmp_path / "sd", kind="sd", shape=(3, 16, 16))
    prompts = ["a photo of a cat", "two dogs", "a very long prompt " * 8]  # the last one truncated to 16 tokens
    table = encode_prompts(folder, prompts)
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    cond, uncond = pipe.encode_prompt(prompts, "cpu", 1, True, None)
    torch.testing.assert_close(table.embeds, cond, rtol=1e-5, atol=1e-6)  # float32 encoder
    torch.testing.assert_close(table.null, uncond[:1], rtol=1e-5, atol=1e-6)
    table.save(tmp_path / "prompts.pt")
    den = load_denoiser(str(folder), prompts=str(tmp_path / "prompts.pt"))
    torch.testing.assert_close(den.prompt_table, torch.cat([table.embeds, table.null]), rtol=0, atol=0)  # the file
    assert (
        den.prompt_texts == prompts and den.prompt_digest == load_denoiser(str(folder), prompts=prompts).prompt_digest
    )
    assert crs.conditioning.condition_source(den, None, "balanced").state()["prompts"] == den.prompt_digest
    build_tiny_pipeline(tmp_path / "dit", kind="dit", shape=(3, 16, 16))
    with pytest.raises(ValueError, match="takes none"):
        load_denoiser(str(tmp_path / "dit"), prompts=prompts)
    with pytest.raises(FileNotFoundError, match="No prompt embeddings file"):
        load_denoiser(str(folder), prompts=str(tmp_path / "missing.pt"))
    torch.save({"prompt_embeds": torch.zeros(2, 16, 16)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="lacks null_embeds"):
        PromptTable.load(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="NaN"):
        PromptTable(torch.full((1, 16, 16), float("nan")), torch.zeros(16, 16))
    with pytest.raises(ValueError, match="non-empty list of prompts"):
        crs.prompts.check_prompts([])
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "text_encoder": [None, None]}))
    assert crs.models.describe_model(folder)["text_encoder"] is False
    with pytest.raises(ValueError, match="no text encoder and tokenizer"):
        load_denoiser(str(folder), prompts=prompts)
    (folder / "model_index.json").write_text(json.dumps({**index, "controlnet": ["diffusers", "ControlNetModel"]}))
    with pytest.raises(ValueError, match=r"has a ControlNet \(controlnet: ControlNetModel\), not supported; supported"):
        crs.models.describe_model(folder)  # refused by name, not loaded without its control
