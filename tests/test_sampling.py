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
    assert torch.allclose(
        out.std(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.03 if sampler is sample_heun else 0.06
    )


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


def _drive_euler(scheduler, denoiser, noise):
    """diffusers' own loop with an eps-prediction made from our denoiser (VE input)."""
    x = noise * scheduler.sigmas[0].double()
    for i, t in enumerate(scheduler.timesteps):
        s = scheduler.sigmas[i].double()
        scheduler.scale_model_input(x, t)
        x = scheduler.step((x - denoiser(x, s)) / s, t, x).prev_sample
    return x


def test_euler_equals_diffusers_euler_discrete_with_sigmas():
    from diffusers import EulerDiscreteScheduler

    data = crs.make_dataset("gmm")
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigmas in (
        crs.baseline_sigmas("karras", 10, 0.03, 14.6),
        crs.optimize_schedule(
            crs.estimate_rate("data", data, denoiser=data.denoiser, sigma_min=0.03, sigma_max=14.6, n_samples=512)
        ).discretize(7),
    ):
        sched = EulerDiscreteScheduler()
        sched.set_timesteps(sigmas=sigmas.tolist())
        ref = _drive_euler(sched, data.denoiser, noise)
        ours = sample_euler(data.denoiser, noise * sigmas[0], sigmas)
        assert float((ref - ours).abs().max()) < 1e-4


@pytest.mark.parametrize("steps", [5, 10, 25])
def test_dpmpp_2m_equals_diffusers_dpm_solver_multistep(steps):
    from diffusers import DPMSolverMultistepScheduler

    from crs.sampling import sample_dpmpp_2m

    data = crs.make_dataset("gmm")
    sched = DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, prediction_type="sample", final_sigmas_type="zero"
    )
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.double()  # the VE sigmas of diffusers' own timesteps: where the two coincide
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = noise.clone()  # diffusers works on VP samples: x_vp = alpha x_ve, init_noise_sigma = 1
    for i, t in enumerate(sched.timesteps):
        alpha = 1 / torch.sqrt(1 + sigmas[i] ** 2)
        x = sched.step(data.denoiser(x / alpha, sigmas[i]), t, x).prev_sample
    ours = sample_dpmpp_2m(data.denoiser, noise * torch.sqrt(1 + sigmas[0] ** 2), sigmas)
    assert float((x - ours).abs().max()) < 1e-4


def test_results_do_not_depend_on_batch_size():
    """Per-sample seeds: the noise of sample i is the same in any batch. The exact denoiser multiplies (B, K)
    matrices, and BLAS may pick another kernel (another order of the K-term sums) for another B or CPU, so the
    samples agree to float64 round-off (1e-12 on values of order 1; measured equal here), not bit for bit."""
    data = crs.make_dataset("gmm")
    sigmas = crs.baseline_sigmas("karras", 6)
    for sampler in ("euler", "heun", "dpmpp_2m", "edm"):
        a = generate(data.denoiser, (2,), 50, sigmas, seed=9, sampler=sampler, batch_size=50, dtype=torch.float64)
        b = generate(data.denoiser, (2,), 50, sigmas, seed=9, sampler=sampler, batch_size=7, dtype=torch.float64)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=sampler)
        # sample i depends on seed + i only: the tail of a run starting 20 later matches
        c = generate(data.denoiser, (2,), 30, sigmas, seed=29, sampler=sampler, batch_size=16, dtype=torch.float64)
        torch.testing.assert_close(a[20:], c, rtol=0, atol=1e-12, msg=sampler)


def test_edm_churn_is_stochastic_and_reduces_to_heun():
    from crs.sampling import SampleNoise, sample_edm

    data = crs.make_dataset("gmm")
    sigmas = crs.baseline_sigmas("karras", 8)
    x = 80 * torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.equal(sample_edm(data.denoiser, x, sigmas, s_churn=0.0), sample_heun(data.denoiser, x, sigmas))
    churned = sample_edm(data.denoiser, x, sigmas, noise=SampleNoise(range(64), (2,), torch.float64))
    assert not torch.allclose(churned, sample_heun(data.denoiser, x, sigmas))
    with pytest.raises(ValueError, match="needs `noise`"):
        sample_edm(data.denoiser, x, sigmas)


def test_nfe_accounting():
    from crs.sampling import check_nfe_plan, nfe_of, steps_for_nfe

    assert [steps_for_nfe("heun", v) for v in (3, 5, 21)] == [2, 3, 11]
    assert steps_for_nfe("dpmpp_2m", 10) == 10 and nfe_of("edm", 11) == 21
    with pytest.raises(ValueError, match="cannot spend exactly nfe=10"):
        steps_for_nfe("heun", 10)
    with pytest.raises(ValueError, match="heun@10, heun@20, edm@10"):
        check_nfe_plan(["euler", "heun", "edm"], [5, 10, 20])
    with pytest.raises(ValueError, match="Unknown sampler 'ddim'"):
        check_nfe_plan(["ddim"], [5])
    assert check_nfe_plan(["euler", "heun"], {"euler": [4], "heun": [3]}) == {"euler": [4], "heun": [3]}


def test_edm_churn_keeps_edms_per_step_gamma_at_any_step_count():
    """Default churn: EDM's ImageNet-64 gamma = 40 / 256 on every level in [s_min, s_max], not sqrt(2) - 1."""
    from crs.sampling import EDM_CHURN_PER_STEP, SampleNoise, sample_edm

    data = crs.make_dataset("gmm")
    for n in (3, 6, 11):
        seen = []

        def den(x, sigma, seen=seen):
            seen.append(float(sigma[0]))
            return data.denoiser(x, sigma)

        sigmas = crs.baseline_sigmas("karras", n)
        x = 80 * torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        sample_edm(den, x, sigmas, noise=SampleNoise(range(4), (2,), torch.float64))
        churned = [s for s in sigmas[:-1].tolist() if 0.05 <= s <= 50.0]
        assert churned and all(any(abs(v - s * (1 + EDM_CHURN_PER_STEP)) < 1e-9 * s for v in seen) for s in churned)
    assert EDM_CHURN_PER_STEP == pytest.approx(0.15625)


def test_an_nfe_error_names_only_the_rule_of_the_sampler_asked():
    from crs.sampling import check_nfe_plan, steps_for_nfe

    rule = "heun spends 2n - 1 evaluations for n steps, so nfe must be odd and >= 3"
    with pytest.raises(ValueError, match=f"cannot spend exactly nfe=10: {rule}\\.$"):
        steps_for_nfe("heun", 10)
    with pytest.raises(ValueError, match="nfe=1: euler spends n evaluations for n steps, so nfe must be >= 2\\.$"):
        steps_for_nfe("euler", 1)
    with pytest.raises(ValueError, match=f"exactly: heun@4, heun@10 \\({rule}\\)\\.$"):
        check_nfe_plan(["euler", "heun"], [4, 10])


def test_generate_returns_the_dtype_asked_and_checks_the_models_shape():
    data = crs.make_dataset("gmm")  # its exact denoiser computes in float64
    sigmas = crs.baseline_sigmas("karras", 4)
    for dtype in (torch.float32, torch.float64):
        assert generate(data.denoiser, (2,), 4, sigmas, sampler="euler", dtype=dtype).dtype == dtype
    with pytest.raises(ValueError, match=r"takes samples of shape \(2,\), but `shape` is \(3,\)"):
        generate(data.denoiser, (3,), 4, sigmas)
