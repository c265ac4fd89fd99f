"""Conditional models and classifier-free guidance in the engine (crs.conditioning), against exact answers.

Ground truth: a labelled Gaussian mixture, whose exact conditional denoiser E[x0 | x, c] is the denoiser of the
mixture of class c's components, and whose null label gives the exact unconditional denoiser.
"""

import math
import warnings

import numpy as np
import pytest
import torch

import crs
from crs.analytic import GaussianMixture, gaussian_discrepancy, gmm
from crs.conditioning import Bound, Guided, Labels, bind, guidance_of
from crs.sampling import generate, sample_conditions
from crs.seeds import condition_seed, sample_seed

RING = dict(n_components=8, radius=2.0, stds=0.2)


@pytest.fixture
def labelled():
    return gmm(labels=[0, 1] * 4, **RING)  # two classes: the even and the odd components of the ring


def _class_mixture(data: GaussianMixture, c: int) -> GaussianMixture:
    keep = data.labels == c
    return GaussianMixture(data.means[keep], data.stds[keep], data.weights[keep])


def test_exact_conditional_denoiser_is_the_class_mixtures_denoiser(labelled):
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    sigma = torch.linspace(0.05, 5.0, 64, dtype=torch.float64)
    den = labelled.denoiser
    assert den.conditioning.num_classes == 2 and den.conditioning.null == 2
    for c in (0, 1):
        cond = torch.full((64,), c)
        # the same formula on fewer components: equal to round-off of a softmax over 4 vs 8 log-weights (float64)
        torch.testing.assert_close(den(x, sigma, cond), _class_mixture(labelled, c).denoiser(x, sigma))
    torch.testing.assert_close(den(x, sigma, torch.full((64,), 2)), den(x, sigma))  # null label: unconditional
    mixed = torch.tensor([0, 1] * 32)
    torch.testing.assert_close(den(x, sigma, mixed)[::2], den(x[::2], sigma[::2], mixed[::2]))  # per row


def test_guidance_interpolates_and_extrapolates_the_two_branches(labelled):
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma, cond = 0.7, torch.tensor([0, 1] * 16)
    den = labelled.denoiser
    d_c, d_u = den(x, sigma, cond), den(x, sigma, torch.full((32,), 2))
    for w in (0.0, 1.0, 2.5):
        guided = Guided(den, w)
        torch.testing.assert_close(guided(x, sigma, cond), d_u + w * (d_c - d_u))
        assert guided.shape == den.shape and guided.conditioning == den.conditioning and guidance_of(guided) == w
    assert guidance_of(den) == 1.0 and guidance_of(crs.make_dataset("gmm").denoiser) is None
    with pytest.raises(ValueError, match="needs a conditional model"):
        Guided(crs.make_dataset("gmm").denoiser, 2.0)
    with pytest.raises(ValueError, match="must be a finite number >= 0.0"):
        Guided(den, -1.0)


def test_labels_are_seeded_per_sample_and_follow_their_shares():
    labels = Labels(3, probs=[0.2, 0.3, 0.5])
    seeds = list(range(100, 4100))
    drawn = labels(seeds)
    assert torch.equal(drawn[10:20], labels(seeds[10:20]))  # a sample's label is its seed's alone
    g = torch.Generator().manual_seed(condition_seed(sample_seed(100, 7)))
    assert drawn[7] == torch.multinomial(labels.probs, 1, generator=g)[0]
    shares = np.bincount(drawn.numpy(), minlength=3) / len(seeds)
    # 4000 draws: each share within 4.5 binomial standard errors (a false failure about 1 in 10^5)
    assert np.all(np.abs(shares - [0.2, 0.3, 0.5]) < 4.5 * np.sqrt(np.array([0.16, 0.21, 0.25]) / len(seeds)))
    assert set(Labels(10, choices=[3, 7])(seeds).tolist()) == {3, 7}
    data = crs.make_dataset("gmm", labels=[0, 0, 0, 1, 1, 1, 1, 1])
    torch.testing.assert_close(Labels.from_data(data).probs, torch.tensor([3 / 8, 5 / 8], dtype=torch.float64))
    for bad, msg in [
        (dict(probs=[1.0]), "needs 3 non-negative values"),
        (dict(choices=[5]), r"labels in 0\.\.2"),
        (dict(probs=[1, 1, 1], choices=[0]), "not several"),
    ]:
        with pytest.raises(ValueError, match=msg):
            Labels(3, **bad)


def test_generate_pairs_conditions_with_seeds_whatever_the_batch(labelled):
    den, labels = Guided(labelled.denoiser, 2.0), Labels(2)
    sigmas = crs.baseline_sigmas("karras", 8, 0.002, 80.0)
    a = generate(den, (2,), 12, sigmas, seed=5, sampler="heun", batch_size=12, conditions=labels)
    b = generate(den, (2,), 12, sigmas, seed=5, sampler="heun", batch_size=5, conditions=labels)
    # the exact denoiser computes each row on its own in float64, but batches of other sizes may take other matmul
    # kernels on another CPU: a float64 round-off can flip the last bit of the float32 samples returned, so the
    # agreement asked is float32's (a few ulp of values of order 1), not bit for bit
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    first = generate(den, (2,), 4, sigmas, seed=5, sampler="heun", conditions=labels)
    torch.testing.assert_close(first, a[:4], rtol=1e-6, atol=1e-6)  # sample i does not depend on n
    assert torch.equal(sample_conditions(labels, 12, seed=5)[:4], sample_conditions(labels, 4, seed=5))
    with pytest.raises(ValueError, match="give `conditions`"):
        generate(den, (2,), 4, sigmas, sampler="heun")
    with pytest.raises(ValueError, match="unconditional: it takes no `conditions`"):
        generate(crs.make_dataset("gmm").denoiser, (2,), 4, sigmas, sampler="heun", conditions=labels)
    with pytest.raises(ValueError, match="draws from 3 classes; the model has 2"):
        generate(den, (2,), 4, sigmas, sampler="heun", conditions=Labels(3))


def test_conditional_samples_land_in_their_class(labelled):
    """At w = 1 a converged solve of the conditional ODE samples p(x | c): every sample lands on a component of its
    own class (components 1.53 apart, std 0.2: a sample nearer another class's component has probability < 1e-4)."""
    sigmas = crs.baseline_sigmas("karras", 65, 0.002, 80.0)
    labels = Labels(2)
    x = generate(labelled.denoiser, (2,), 400, sigmas, seed=0, sampler="heun", conditions=labels)
    cond = sample_conditions(labels, 400, seed=0)
    assert torch.equal(labelled.labels[labelled.assign(x)], cond)
    # w = 0 samples the whole ring, with no regard for the labels drawn
    x0 = generate(Guided(labelled.denoiser, 0.0), (2,), 400, sigmas, sampler="heun", conditions=labels)
    agree = float((labelled.labels[labelled.assign(x0)] == cond).double().mean())
    assert abs(agree - 0.5) < 4.5 * math.sqrt(0.25 / 400)


def test_rate_at_w1_of_one_gaussian_per_class_is_the_gaussian_closed_form():
    """With one component per class, p(x | c) is N(m_c, s^2 I): the conditional `data` rate is the Gaussian's
    closed form whatever the means, while the unconditional rate (w = 0) is the ring's, which differs."""
    data = gmm(labels=list(range(8)), **RING)
    kw = dict(sigma_min=0.01, sigma_max=20.0, grid_size=16, n_samples=4096, seed=0)
    rate = crs.estimate_rate("data", data, denoiser=data.denoiser, **kw)
    exact = gaussian_discrepancy("data", rate.sigma[:-1], rate.sigma[1:], std=0.2).numpy()
    # the estimate is an RMS over 4096 samples: within 5 of its own standard errors plus 1 % (the RMS of a
    # finite sample is biased low by about se^2 / value)
    assert np.all(np.abs(rate.discrepancy - exact) < 5 * rate.stderr + 0.01 * exact)
    assert rate.meta["guidance"] == 1.0 and rate.evaluations == 17 * 4096
    uncond = crs.estimate_rate("data", data, denoiser=Guided(data.denoiser, 0.0), **kw)
    assert uncond.meta["guidance"] == 0.0
    assert np.max(np.abs(uncond.discrepancy - exact) / exact) > 0.5  # the ring's rate is another curve
    guided = crs.estimate_rate("data", data, denoiser=Guided(data.denoiser, 3.0), **kw)
    assert guided.evaluations == 2 * 17 * 4096  # two network calls per evaluation under guidance
    with pytest.raises(ValueError, match="has no class labels"):
        crs.estimate_rate("data", crs.make_dataset("gmm"), denoiser=data.denoiser, **kw)


def test_teacher_error_of_a_guided_model_uses_each_samples_condition(labelled):
    den, labels = Guided(labelled.denoiser, 3.0), Labels(2)
    sigmas = crs.baseline_sigmas("karras", 6, 0.002, 80.0)
    teacher = crs.solve_teacher(den, (2,), n=64, seed=3, sigma_min=0.002, sigma_max=80.0, steps=128, conditions=labels)
    assert torch.equal(teacher.cond, sample_conditions(labels, 64, seed=3))
    assert teacher.evaluations == 2 * ((2 * 128 + 1) + (128 + 1))
    err = crs.teacher_error(den, labelled, "heun", sigmas, teacher=teacher)
    again = crs.teacher_error(den, labelled, "heun", sigmas, n=64, seed=3, conditions=labels, steps=128)
    assert err.value > 0 and math.isclose(err.value, again.value, rel_tol=1e-9)
    with pytest.raises(ValueError, match="disagree on conditioning"):
        crs.teacher_error(crs.make_dataset("gmm").denoiser, labelled, "heun", sigmas, teacher=teacher)


def test_bind_fixes_a_batch_and_checks_it(labelled):
    bound = bind(labelled.denoiser, torch.tensor([0, 1, 1]))
    assert isinstance(bound, Bound) and bound.shape == (2,) and bind(labelled.denoiser, None) is labelled.denoiser
    assert isinstance(bound, crs.protocols.Denoiser)
    with pytest.raises(ValueError, match="A batch of 2 samples for 3 conditions"):
        bound(torch.zeros(2, 2, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="Class label 5 is outside 0..1"):
        bind(labelled.denoiser, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="integers of shape"):
        bind(labelled.denoiser, torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("shape,kwargs", [((2,), dict(hidden=32)), ((1, 8, 8), dict(block_out_channels=(8, 16)))])
def test_class_conditional_networks_take_labels_and_round_trip(tmp_path, shape, kwargs):
    from crs.networks import EDMDenoiser, build_denoiser

    den = build_denoiser(shape, num_classes=10, seed=0, **kwargs)
    assert den.conditioning.num_classes == 10 and den.conditioning.null == 10
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    a, b = den(x, 1.0, torch.tensor([0, 1, 2, 3])), den(x, 1.0, torch.tensor([9, 9, 9, 9]))
    assert not torch.allclose(a, b)  # the label changes the prediction
    torch.testing.assert_close(den(x, 1.0), den(x, 1.0, torch.full((4,), 10)))  # no labels: the null label
    den.save_pretrained(tmp_path / "m")
    again = EDMDenoiser.from_pretrained(tmp_path / "m")
    assert again.conditioning == den.conditioning
    torch.testing.assert_close(again(x, 1.0, torch.tensor([0, 1, 2, 3])), a)
    plain = build_denoiser(shape, seed=0, **kwargs)
    assert plain.conditioning is None
    with pytest.raises(ValueError, match="unconditional: it takes no class labels"):
        plain(x, 1.0, torch.tensor([0, 1, 2, 3]))


@pytest.mark.parametrize("method", ["crs", "gits", "optimal", "dmn", "ld3", "oss", "ays-opt"])
@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m"])
def test_schedule_search_for_a_guided_model(labelled, method, sampler):
    """Every search method runs on a guided model: its objective is the teacher error of its schedule judged on the
    search batch with each sample's own condition, equal to what teacher_error reports for that batch."""
    from crs.seeds import search_seed

    den, labels = Guided(labelled.denoiser, 2.0), Labels(2)
    opts = dict(n=32, teacher_steps=64, grid_size=8, n_samples=256, grid=8, substeps=2, maxiter=3, init="best")
    opts.update(pairs=8, rounds=(1, 0), mc_samples=64, sweeps=2)  # ld3's, ays-opt's
    opts = {k: v for k, v in opts.items() if k in crs.search.check_options(method, {}) or k in ("n", "teacher_steps")}
    result = crs.search_schedule(method, den, labelled, sampler, 5, 0.002, 80.0, seed=1, conditions=labels, **opts)
    steps = 16 if method in ("gits", "oss") else 64  # GITS and OSS solve a teacher on a grid: grid * substeps
    teacher = crs.solve_teacher(den, (2,), 32, search_seed(1), 0.002, 80.0, steps, conditions=labels)
    with warnings.catch_warnings():  # the tiny teacher is not accurate; it is the search's own, judged the same way
        warnings.simplefilter("ignore")
        judged = crs.teacher_error(den, labelled, sampler, result.sigmas_tensor, teacher=teacher)
    assert math.isclose(result.objective, judged.value, rel_tol=1e-9)
    with pytest.raises(ValueError, match="give `conditions`"):
        crs.search_schedule(method, den, labelled, sampler, 5, 0.002, 80.0, **opts)


def test_class_conditional_training_learns_both_branches():
    """A conditional MLP trained with label dropout on a two-class mixture: at a small noise level its conditional
    prediction moves towards its class's components, and its null-label (unconditional) prediction does not."""
    from crs.networks import build_denoiser
    from crs.training import EDMLoss, TrainConfig, loss_by_sigma, make_noise, train

    data = gmm(labels=[0, 1] * 4, **RING)
    den = build_denoiser((2,), num_classes=2, seed=0, hidden=64)
    cfg = TrainConfig(steps=600, batch_size=256, lr=3e-3, ema_decay=0.99, seed=0, label_dropout=0.2)
    ema = train(den, data, cfg, progress=False).ema
    # halfway between component 0 (class 0) and component 1 (class 1) at sigma = 0.5, each class's exact
    # conditional mean lies towards its own component; the unconditional one halfway
    x, sigma = ((data.means[0] + data.means[1]) / 2).float().expand(2, 2), 0.5
    cond = torch.tensor([0, 1])
    exact_c, exact_u = data.denoiser(x.double(), sigma, cond), data.denoiser(x.double(), sigma)
    with torch.no_grad():
        pred_c, pred_u = ema(x, sigma, cond).double(), ema(x, sigma).double()
    # trained for 600 steps the model is not exact; it must be nearer the exact conditional mean of each class
    # than the exact unconditional one is (which it would match without conditioning)
    assert torch.all((pred_c - exact_c).norm(dim=1) < (exact_u - exact_c).norm(dim=1))
    # the null branch: near the unconditional mean (tolerance: a tenth of the classes' separation here)
    assert torch.all((pred_u - exact_u).norm(dim=1) < 0.1 * (exact_c[0] - exact_c[1]).norm())
    held = loss_by_sigma(ema, data, [0.5, 2.0], n_samples=512)
    assert np.all(np.isfinite(held))
    edm = EDMLoss(make_noise("edm"), 0.5, ema.conditioning, label_dropout=0.5)
    x0, _, _, labels = edm.draw_labeled(data, 4000, torch.Generator().manual_seed(0), "cpu")
    dropped = float((labels == 2).double().mean())
    assert abs(dropped - 0.5) < 4.5 * math.sqrt(0.25 / 4000)  # binomial: 4.5 standard errors
    x_plain, _, _ = EDMLoss(make_noise("edm"), 0.5).draw(data, 4000, torch.Generator().manual_seed(0), "cpu")
    torch.testing.assert_close(x0, x_plain)  # the labelled draw takes the same data as the plain one
    with pytest.raises(ValueError, match="`label_dropout` must be in"):
        TrainConfig(label_dropout=1.0).validate()


def test_balanced_labels_hold_every_class_equally_often_in_any_run_of_seeds():
    labels = Labels(3, balanced=True)
    for start, n in ((0, 9), (7, 10), (1000, 31)):
        counts = torch.bincount(labels(range(start, start + n)), minlength=3)
        assert counts.max() - counts.min() <= 1 and counts.sum() == n
    torch.testing.assert_close(labels([5, 6]), labels(range(7))[5:])  # a function of the seed alone
    assert labels.state() == {"kind": "labels", "num_classes": 3, "balanced": True}
    with pytest.raises(ValueError, match="not several"):
        Labels(3, probs=[1, 1, 1], balanced=True)


def test_condition_source_names_what_does_not_fit(labelled):
    from crs.conditioning import condition_source

    den = labelled.denoiser
    assert condition_source(crs.make_dataset("gmm").denoiser, labelled, "balanced") is None  # unconditional
    assert condition_source(den, labelled, "data").state() == Labels.from_data(labelled).state()
    assert condition_source(den, labelled, "balanced").balanced
    assert condition_source(den, labelled, [1]).probs.tolist() == [0.0, 1.0]
    # data with fewer classes than the model: its labels are the model's first classes, the others at share 0
    wide = gmm(labels=[0, 1, 2, 0, 1, 2, 0, 1], **RING).denoiser
    assert condition_source(wide, labelled, "data").probs.tolist() == [0.5, 0.5, 0.0]
    with pytest.raises(ValueError, match="has no class labels"):
        condition_source(den, crs.make_dataset("gmm"), "data")
    with pytest.raises(ValueError, match="has 3 classes and the model only 2"):
        condition_source(den, gmm(labels=[0, 1, 2, 0, 1, 2, 0, 1], **RING), "data")
    with pytest.raises(ValueError, match="Unknown label source 'balance'"):
        condition_source(den, labelled, "balance")
    with pytest.raises(ValueError, match=r"`choices` must be labels in 0..1, got \[2\]"):
        condition_source(den, labelled, [2])


def _guided_grid(data, tmp_path, guidance, labels="data", log=lambda *_: None):
    """Notebook 04's sample grid for the labelled ring's exact denoiser at each guidance scale, with a searched
    schedule: the index as sampling_job writes it."""
    from crs.conditioning import condition_source
    from crs.optimize import schedule_functions, schedule_kinds
    from crs.run.jobs import sample_grid, searched_schedules

    den = data.denoiser
    conditions = {"analytic": condition_source(den, data, labels)}
    schedules = schedule_functions(crs.Schedule.from_baseline("karras", 0.01, 20.0), ["vp"])
    searched = searched_schedules(
        {"analytic": den},
        ["gits"],
        ["euler"],
        [4],
        data,
        (0.01, 20.0),
        tmp_path,
        options={"n": 32, "teacher_steps": 32, "gits": {"grid": 12, "substeps": 2}},
        guidance=guidance,
        conditions=conditions,
        log=log,
    )
    kinds = {**schedule_kinds(["vp"]), "gits": "peer"}
    index = sample_grid(
        {"analytic": den},
        {**schedules, **searched},
        ["euler"],
        [4],
        64,
        tmp_path / "samples",
        kinds=kinds,
        guidance=guidance,
        conditions=conditions,
    )
    doc = dict(seed=0, n_samples=64, schedule_range=[0.01, 20.0], labels=labels, guidance=guidance, entries=index)
    return index, doc, searched


def test_a_guided_grid_samples_searches_and_scores_each_guidance_scale(labelled, tmp_path):
    """Notebooks 04-05 on a guided conditional model: one sample set, one searched schedule and one teacher per
    guidance scale; each set equals generate() with the guided model and the data's labels; rows and comparisons
    carry the scale."""
    from crs.metrics import make_feature_extractor
    from crs.run.jobs import evaluate_grid, teacher_endpoints

    index, doc, searched = _guided_grid(labelled, tmp_path, [1.0, 3.0])
    assert sorted(searched["gits"]) == [("analytic@w=1", "euler", 4), ("analytic@w=3", "euler", 4)]
    assert not torch.equal(*searched["gits"].values())  # the schedule moves with the scale
    assert {(e["schedule"], e["guidance"]) for e in index} == {(s, w) for s in ("crs", "vp", "gits") for w in (1, 3)}
    assert all(f"/analytic/w{e['guidance']:g}/euler/" in e["path"] for e in index)
    one = next(e for e in index if e["schedule"] == "vp" and e["guidance"] == 3.0)
    sigmas = crs.Schedule.from_baseline("vp", 0.01, 20.0).discretize(4)
    expected = generate(
        Guided(labelled.denoiser, 3.0), (2,), 64, sigmas, sampler="euler", conditions=Labels.from_data(labelled)
    )
    # float32 samples: the grid's levels come from the schedule functions (float64), so a last bit may differ
    torch.testing.assert_close(torch.load(one["path"], weights_only=True), expected)
    ends, errors = teacher_endpoints(doc, tmp_path, labelled, steps=32)
    assert sorted(ends) == ["analytic@w=1", "analytic@w=3"]
    # the teacher of w = 3 is the guided ODE from the samples' own noise and labels (same code path: exact)
    own = crs.quality.solve_teacher(
        Guided(labelled.denoiser, 3.0), (2,), 64, 0, 0.01, 20.0, 32, conditions=Labels.from_data(labelled)
    )
    torch.testing.assert_close(ends["analytic@w=3"], own.endpoint.cpu(), rtol=0, atol=0)
    scores = evaluate_grid(
        index,
        labelled.sample(256, torch.Generator().manual_seed(9)),
        make_feature_extractor("identity"),
        data=labelled,
        n_boot=20,
        which=["fid", "teacher_error"],
        teachers=ends,
    )
    te = {(r["schedule"], r["guidance"]): r["value"] for r in scores["rows"] if r["metric"] == "teacher_error"}
    by_hand = (torch.load(one["path"], weights_only=True).double() - own.endpoint.double()).pow(2).mean().sqrt()
    assert len(te) == 6 and te[("vp", 3.0)] == pytest.approx(float(by_hand), rel=1e-12)  # float64 sums of 128 terms
    assert sorted((c["guidance"], c["metric"]) for c in scores["comparisons"]) == [
        (1.0, "fid_identity"),
        (1.0, "teacher_error"),
        (3.0, "fid_identity"),
        (3.0, "teacher_error"),
    ]
    # a stored search is reused for the same conditions only
    said = []
    _guided_grid(labelled, tmp_path, [3.0], log=said.append)
    _guided_grid(labelled, tmp_path, [3.0], labels="balanced", log=said.append)
    assert [line.split(": ")[1] for line in said] == [
        "0 schedules searched in 0.0 s, 1 reused from run_dir/search/",
        said[1].split(": ")[1],
    ] and said[1].split(": ")[1].startswith("1 schedules searched")


def test_guidance_needs_a_conditional_model(tmp_path):
    from crs.run.jobs import model_variants

    with pytest.raises(ValueError, match=r"`guidance` \[2\.0\] needs a conditional model"):
        model_variants({"analytic": crs.make_dataset("gmm").denoiser}, [2.0])


def test_the_crs_trained_model_is_compared_with_the_control_at_each_scale():
    from crs.run.jobs import model_comparisons

    boot = lambda v: np.full(50, v) + np.random.default_rng(0).normal(0, 0.01, 50)  # noqa: E731
    values = {}
    for w, (c, k) in {2.0: (1.0, 2.0), 4.0: (3.0, 1.0)}.items():
        values[(f"crs@w={w:g}", "karras", "euler", 5, "fid_identity")] = (c, boot(c))
        values[(f"control@w={w:g}", "karras", "euler", 5, "fid_identity")] = (k, boot(k))
    rows = model_comparisons(values)
    assert [(r["guidance"], r["crs_better"], r["significant"]) for r in rows] == [(2.0, True, True), (4.0, False, True)]


def test_the_rate_at_guidance_zero_needs_no_labels_and_is_the_data_rate():
    """Guided with scale 0, a conditional model is its unconditional branch: estimate_rate takes unlabelled data for
    it (a text model's uncaptioned images), and on the ring the exact conditional model's null branch gives the rate
    of the unlabelled mixture's exact denoiser from the same draws (same function, same inputs: float64 round-off);
    any other scale still asks for labels."""
    labelled, plain = gmm(labels=[0, 1] * 4, **RING), gmm(**RING)
    common = dict(grid_size=4, n_samples=256, seed=3)
    null = crs.estimate_rate("data", plain, denoiser=Guided(labelled.denoiser, 0.0), **common)
    exact = crs.estimate_rate("data", plain, denoiser=plain.denoiser, **common)
    np.testing.assert_allclose(null.discrepancy, exact.discrepancy, rtol=1e-9)
    assert null.meta["guidance"] == 0.0
    with pytest.raises(ValueError, match="has no class labels"):
        crs.estimate_rate("data", plain, denoiser=Guided(labelled.denoiser, 2.0), **common)
