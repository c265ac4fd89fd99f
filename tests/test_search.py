"""Teacher error and schedule search (crs.quality, crs.search, the solver measures)."""

import itertools
import math

import numpy as np
import pytest
import torch

import crs
from crs.quality import solve_teacher, teacher_error
from crs.search import (
    METHODS,
    SearchCache,
    SearchResult,
    dp_path,
    dp_path_history,
    register_search,
    search_kind,
    search_schedule,
)

GMM = crs.make_dataset("gmm")
SMALL = dict(n=32, teacher_steps=32)  # search options small enough for a unit test


def brute_force_path(cost: np.ndarray, jumps: int, first: np.ndarray | None = None) -> tuple[float, list[int]]:
    """Enumerate every path (the reference for dp_path and, with ``first``, dp_path_history on small problems)."""
    g = (len(first) if first is not None else cost.shape[0]) - 1
    best = (math.inf, [])
    for inner in itertools.combinations(range(1, g), jumps - 1):
        path = [0, *inner, g]
        if first is None:
            total = sum(cost[a, b] for a, b in itertools.pairwise(path))
        else:
            total = first[path[1]] + sum(cost[path[m - 1], path[m], path[m + 1]] for m in range(1, len(path) - 1))
        if total < best[0]:
            best = (float(total), path)
    return best


@pytest.mark.parametrize("g, jumps", [(4, 1), (5, 2), (6, 3), (7, 4), (7, 7)])
def test_dynamic_programming_equals_brute_force(g, jumps):
    rng = np.random.default_rng(g * 10 + jumps)
    cost = rng.uniform(0.1, 1.0, size=(g + 1, g + 1))
    value, path = dp_path(cost, jumps)
    ref_value, ref_path = brute_force_path(cost, jumps)
    # sums of the same terms in another order: equal to round-off; random costs make ties improbable
    assert value == pytest.approx(ref_value, rel=1e-12) and path == ref_path and len(path) == jumps + 1
    first, cost3 = rng.uniform(0.1, 1.0, size=g + 1), rng.uniform(0.1, 1.0, size=(g + 1,) * 3)
    value, path = dp_path_history(first, cost3, jumps)
    ref_value, ref_path = brute_force_path(cost3, jumps, first)
    assert value == pytest.approx(ref_value, rel=1e-12) and path == ref_path


def test_dynamic_programming_refuses_more_jumps_than_intervals():
    with pytest.raises(ValueError, match="3 jumps need a grid of at least 3 intervals, got 2"):
        dp_path(np.ones((3, 3)), 3)


def test_teacher_starts_from_the_samples_generate_draws():
    """Sample i of a teacher with seed s starts where generate's sample i does: its error belongs to those samples."""
    sigmas = crs.baseline_sigmas("karras", 6, 0.002, 80.0)
    teacher = solve_teacher(GMM.denoiser, (2,), 16, seed=5, steps=16)
    x = crs.sampling.generate(GMM.denoiser, (2,), 16, sigmas, seed=5, sampler="euler")  # float32, as by default
    # the float64 start is the float32 draw times 80, exact in float64 and rounded once back: the same float32 start
    y = crs.quality.endpoints(GMM.denoiser, "euler", sigmas, teacher.x_T.float())
    assert x.dtype == torch.float32 and torch.equal(x, y.float())  # generate returns the dtype asked


def test_the_reference_solution_converges():
    """Halving the teacher's step changes its endpoint by less than the error it states (Richardson, order 2)."""
    coarse = solve_teacher(GMM.denoiser, (2,), 64, seed=0, steps=64)
    fine = solve_teacher(GMM.denoiser, (2,), 64, seed=0, steps=128)
    change = float((coarse.endpoint - fine.endpoint).pow(2).mean().sqrt())
    assert 0 < change < coarse.error and fine.error < coarse.error


def test_teacher_error_falls_with_nfe_and_its_teacher_is_accurate_enough():
    errors = []
    for steps in (4, 8, 16):
        result = teacher_error(GMM.denoiser, GMM, "heun", crs.baseline_sigmas("karras", steps, 0.002, 80.0), n=64)
        assert result.teacher_error < 0.01 * result.value  # refined until below 1 % of what it judges
        lo, hi = result.interval(n_boot=200)
        assert lo <= result.value <= hi
        errors.append(result.value)
    assert errors[0] > errors[1] > errors[2]


def test_teacher_error_refuses_a_stochastic_sampler_and_a_foreign_teacher():
    sigmas = crs.baseline_sigmas("karras", 5, 0.002, 80.0)
    with pytest.raises(ValueError, match="deterministic sampler.*'edm' adds fresh noise"):
        teacher_error(GMM.denoiser, GMM, "edm", sigmas)
    teacher = solve_teacher(GMM.denoiser, (2,), 8, sigma_max=40.0, steps=8)
    with pytest.raises(ValueError, match="starts at sigma 80, the teacher at 40"):
        teacher_error(GMM.denoiser, GMM, "euler", sigmas, teacher=teacher)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_the_solver_measure_reproduces_its_closed_form_on_gaussian_data(sampler):
    """solver-<sampler> on N(0, s^2 I) against the exact local error (crs.analytic.gaussian_local_error).

    Tolerance: the estimate uses M = 4096 samples in 2 dimensions, so sqrt(mean x_a^2) has a relative standard
    deviation of about 1/sqrt(2 * 8192) = 0.8 %; the 1/(p+1) power divides it by 2 or 3; the fine solve's own
    error (8 Heun substeps) is far below that. 3 % is over six standard deviations.
    """
    data = crs.make_dataset("gaussian", dim=2, std=0.5)
    rate = crs.estimate_rate(
        f"solver-{sampler}", data, denoiser=data.denoiser, sigma_min=0.01, sigma_max=20.0, grid_size=16, n_samples=4096
    )
    sig = rate.sigma
    power = 1 / (crs.sampling.ORDER[sampler] + 1)
    exact = crs.analytic.gaussian_local_error(sampler, sig[1:], sig[:-1], std=0.5).numpy() ** power
    np.testing.assert_allclose(rate.discrepancy, exact, rtol=0.03)
    assert np.all(rate.stderr > 0) and np.all(rate.stderr < 0.01 * rate.discrepancy)


def test_crs_with_the_solver_measure_equalises_the_local_error():
    """At xi = 1 every step of the CRS schedule carries about the same local error (the measure's purpose)."""
    data = crs.make_dataset("gaussian", dim=2, std=0.5)
    rate = crs.estimate_rate("solver-euler", data, denoiser=data.denoiser, sigma_min=0.01, sigma_max=20.0)
    sig = crs.optimize_schedule(rate).discretize(12).numpy()[:-1]
    local = crs.analytic.gaussian_local_error("euler", sig[:-1], sig[1:], std=0.5).numpy()
    karras = crs.baseline_sigmas("karras", 12, 0.01, 20.0).numpy()[:-1]
    spread = local.max() / local.min()
    karras_local = crs.analytic.gaussian_local_error("euler", karras[:-1], karras[1:], std=0.5).numpy()
    assert spread < 2.0 and spread < karras_local.max() / karras_local.min() / 5


def test_optimal_is_never_worse_than_its_start():
    from crs.seeds import search_seed

    result = search_schedule("optimal", GMM.denoiser, GMM, "euler", 4, init="karras", maxiter=20, **SMALL)
    teacher = solve_teacher(GMM.denoiser, (2,), SMALL["n"], search_seed(0), steps=SMALL["teacher_steps"])
    start = crs.search.teacher_rms(GMM.denoiser, "euler", teacher, crs.baseline_sigmas("karras", 4, 0.002, 80.0))
    assert result.objective <= start and result.meta["init"] == "karras"
    assert result.sigmas[0] == 80.0 and result.sigmas[-2] == pytest.approx(0.002) and result.sigmas[-1] == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_a_schedule_with_its_cost(method, tmp_path):
    options = dict(SMALL)
    if method in ("crs", "crs-select"):
        options.update(grid_size=8, n_samples=64)
    if method == "crs-select":
        options.update(measures=("data", "solver"), xis=(1.0, 2.0))
    if method in ("gits", "oss"):
        options.update(grid=8, substeps=2)
    if method == "ays-opt":
        options.update(mc_samples=64, sweeps=2)
    if method.startswith("optimal"):
        options.update(init="best", maxiter=5)
    if method == "ld3":
        options.update(pairs=8, rounds=(1, 0))
    result = search_schedule(method, GMM.denoiser, GMM, "dpmpp_2m", 4, seed=1, **options)
    sig = np.array(result.sigmas)
    assert len(sig) == 5 and sig[-1] == 0 and np.all(np.diff(sig) < 0) and sig[0] == 80.0
    assert result.objective > 0 and result.seconds > 0 and result.batch == SMALL["n"]
    assert (result.rate_evaluations > 0) == (search_kind(method) == "crs")
    assert (result.evaluations > 0) == (method not in ("crs", "dmn"))  # the data-free ones need no teacher
    if method == "crs-select":
        assert len(result.meta["candidates"]) == 4 and result.meta["measure"] in ("data", "solver-dpmpp_2m")
    loaded = SearchResult.load(result.save(tmp_path / "s.json"))
    assert loaded == result


def test_each_method_declares_its_role_when_registered():
    """The kind of a searched schedule is the registry's: the CRS methods are ``crs``, the others ``peer``; a
    searched schedule is never a fixed baseline."""
    assert {m: search_kind(m) for m in METHODS} == {
        "crs": "crs",
        "crs-select": "crs",
        "gits": "peer",
        "optimal": "peer",
        "optimal-free": "peer",
        "dmn": "peer",
        "ld3": "peer",
        "ays-opt": "peer",
        "oss": "peer",
    }
    with pytest.raises(ValueError, match="Unknown kind of searched schedule 'baseline'"):
        register_search("fixed", options={}, kind="baseline")
    with pytest.raises(ValueError, match="Unknown schedule search method 'karras'"):
        search_kind("karras")


def test_search_refuses_bad_input_by_name():
    den = GMM.denoiser
    with pytest.raises(ValueError, match="Unknown schedule search method 'optimum'"):
        search_schedule("optimum", den, GMM, "euler", 4)
    with pytest.raises(ValueError, match="cannot spend exactly nfe=10"):
        search_schedule("gits", den, GMM, "heun", 10)
    with pytest.raises(ValueError, match="'edm' adds fresh noise"):
        search_schedule("optimal", den, GMM, "edm", 5)
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['grid'\] for the search method 'optimal'"):
        search_schedule("optimal", den, GMM, "euler", 4, grid=10)
    with pytest.raises(ValueError, match="sigma_min"):
        search_schedule("crs", den, GMM, "euler", 4, sigma_min=1.0, sigma_max=0.5)
    wide = crs.make_dataset("gaussian", dim=3)
    with pytest.raises(ValueError, match=r"takes samples of shape \(2,\), but the dataset gives \(3,\)"):
        search_schedule("crs", den, wide, "euler", 4)
    with pytest.raises(ValueError, match=r"takes samples of shape \(2,\), but the dataset gives \(3,\)"):
        teacher_error(den, wide, "euler", crs.baseline_sigmas("karras", 4))


def test_gits_costs_are_the_sampler_jump_errors_against_the_teacher():
    """One entry of each cost table recomputed by running the sampler's own step from the teacher's state."""
    teacher = solve_teacher(GMM.denoiser, (2,), 16, seed=3, steps=16, keep_states=True)
    grid, states = teacher.sigma[::2], teacher.states[::2]
    for sampler in ("euler", "heun"):
        cost, first, _ = crs.search.gits_costs(GMM.denoiser, sampler, teacher, 2)
        for i, j in itertools.combinations(range(len(grid)), 2):
            if (i, j) in ((0, 3), (2, 7)):
                x, _ = crs.sampling.STEPS[sampler](GMM.denoiser, states[i], float(grid[i]), float(grid[j]))
                assert cost[i, j] == pytest.approx(float((x - states[j]).pow(2).mean().sqrt()), rel=1e-9)
    cost, first, _ = crs.search.gits_costs(GMM.denoiser, "dpmpp_2m", teacher, 2)
    step = crs.sampling.STEPS["dpmpp_2m"]
    d1 = GMM.denoiser(states[1], torch.full((16,), float(grid[1]), dtype=torch.float64))
    x, _ = step(GMM.denoiser, states[3], float(grid[3]), float(grid[6]), (float(grid[1]), d1))
    assert cost[1, 3, 6] == pytest.approx(float((x - states[6]).pow(2).mean().sqrt()), rel=1e-9)
    x, _ = step(GMM.denoiser, states[0], float(grid[0]), float(grid[4]))
    assert first[4] == pytest.approx(float((x - states[4]).pow(2).mean().sqrt()), rel=1e-9)


def test_quality_benchmark_runs_small_and_saves_each_cell(tmp_path, toy_search_options):
    """The quality benchmark at toy size: every row judged, `optimal` the unit of the ratios, JSON-able partial
    results after every cell, and a UNet case that loads a given model and refuses an unknown case by name."""
    import json

    from benchmarks.bench import quality_case, quality_table
    from benchmarks.tables import quality_md

    saved = []
    options = toy_search_options
    result = quality_table(
        nfe={"euler": [3], "heun": [3]},
        n_search=16,
        n_eval=32,
        n_boot=10,
        teacher_steps=32,
        check_optimizer=False,
        progress=False,
        options=options,
        on_cell=lambda r: saved.append(json.dumps(r)),
    )
    assert len(saved) == 2 and len(json.loads(saved[0])["cells"]) == 1
    for cell in result["cells"]:
        rows = cell["rows"]
        assert set(rows) >= set(crs.BASELINES) | {"crs (data)", "crs-select", "gits", "optimal", "optimal-free", "oss"}
        assert rows["optimal"]["ratio"] == 1.0 and all(r["teacher_error"] > 0 for r in rows.values())
        assert all(r["fid_low"] <= r["fid_high"] for r in rows.values())
    text = quality_md(result)
    assert text.count("\n| euler | 3 |") >= 2 and "crs-select chose: euler@3" in text

    with pytest.raises(ValueError, match="Unknown quality benchmark case 'cifar'"):
        quality_case("cifar")
    den = crs.models.build_denoiser((1, 8, 8), seed=0)
    den.save_pretrained(tmp_path / "unet")
    data, loaded, kwargs = quality_case("digits", model=str(tmp_path / "unet"))
    assert tuple(data.shape) == (1, 8, 8) and kwargs["reference"].shape == (1797, 1, 8, 8)
    assert kwargs["options"]["optimal"]["init"] == "best"


def test_a_shared_cache_reuses_the_teacher_and_rates_without_changing_results():
    """Searches sharing `cache` solve the search teacher and estimate each rate once; the schedules are those of
    independent searches (the same deterministic computations, bit for bit), and the reused cost is reported."""
    cache = SearchCache()
    opts = dict(SMALL, measures=["data", "noise"], xis=[1.0], grid_size=8, n_samples=64)
    first = search_schedule("crs-select", GMM.denoiser, GMM, "euler", 4, seed=5, cache=cache, **opts)
    second = search_schedule("crs-select", GMM.denoiser, GMM, "euler", 6, seed=5, cache=cache, **opts)
    alone = search_schedule("crs-select", GMM.denoiser, GMM, "euler", 6, seed=5, **opts)
    assert not first.meta["teacher_reused"] and second.meta["teacher_reused"]
    assert second.sigmas == alone.sigmas and second.objective == alone.objective
    assert second.rate_evaluations == 0 < alone.rate_evaluations
    assert second.evaluations + second.meta["teacher_evaluations"] == alone.evaluations
    g1 = search_schedule("gits", GMM.denoiser, GMM, "heun", 5, seed=5, cache=cache, **SMALL, grid=12)
    g2 = search_schedule("gits", GMM.denoiser, GMM, "heun", 7, seed=5, cache=cache, **SMALL, grid=12)
    g_alone = search_schedule("gits", GMM.denoiser, GMM, "heun", 7, seed=5, **SMALL, grid=12)
    assert not g1.meta["jumps_reused"] and g2.meta["jumps_reused"] and g2.sigmas == g_alone.sigmas
    from benchmarks.bench import standalone_cost

    assert standalone_cost(g2) == g_alone.evaluations and standalone_cost(g1) == g1.evaluations


def test_one_cache_serves_several_models_without_crossing():
    """Two models with the same sample shape and range share one SearchCache: each gets the results of a search
    without a cache (nothing of one model's teacher, rates or jump costs reaches the other's search)."""
    other = crs.make_dataset("gaussian", dim=2, std=0.5)
    cache = SearchCache()
    select = dict(SMALL, measures=["data", "noise"], xis=[1.0], grid_size=8, n_samples=64)
    for method, options in (("crs-select", select), ("gits", dict(SMALL, grid=8))):
        first = search_schedule(method, GMM.denoiser, GMM, "euler", 4, seed=5, cache=cache, **options)
        second = search_schedule(method, other.denoiser, other, "euler", 4, seed=5, cache=cache, **options)
        alone = search_schedule(method, other.denoiser, other, "euler", 4, seed=5, **options)
        assert not second.meta["teacher_reused"] and second.meta.get("jumps_reused") in (None, False)
        assert second.sigmas == alone.sigmas and second.objective == alone.objective != first.objective
        assert (second.evaluations, second.rate_evaluations) == (alone.evaluations, alone.rate_evaluations)
    assert len(cache) == 2 and GMM.denoiser in cache and other.denoiser in cache
    with pytest.raises(ValueError, match="`cache` must be a crs.search.SearchCache .* got dict"):
        search_schedule("crs", GMM.denoiser, GMM, "euler", 4, cache={})


def test_seconds_count_the_whole_call():
    import time

    start = time.perf_counter()
    result = search_schedule("gits", GMM.denoiser, GMM, "euler", 4, seed=2, **SMALL, grid=8)
    elapsed = time.perf_counter() - start
    assert 0 < result.seconds <= elapsed and elapsed - result.seconds < 0.05
