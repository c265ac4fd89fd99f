"""The ported peer searches (crs.peers): DM-NonUniform and LD3, against their closed forms, the reference code's
output and their own guarantees. (Registry-wide checks, every method on every kind of model, are in test_search.py
and test_conditioning.py.)"""

import math

import numpy as np
import pytest
import torch

import crs
from crs.peers import dmn_lambdas, dmn_objective, ld3_levels
from crs.search import search_schedule

GMM = crs.make_dataset("gmm")
SMALL = dict(n=32, teacher_steps=32)


def _w(lam):  # DM-NonUniform's error weight sigma_vp^2 / alpha_vp at lambda = -log sigma
    return (1 / (1 + np.exp(2 * lam))) * np.sqrt(1 + np.exp(-2 * lam))


def test_dmn_first_order_objective_is_its_closed_form():
    """Order 1 (Euler, the first-order exponential integrator): every step contributes |(e^l' - e^l) w(l)|.
    Sums of the same float64 terms: equal to round-off."""
    lam = np.array([-math.log(80), -1.0, 0.5, 2.0, -math.log(0.002)])
    expected = sum(abs((math.exp(b) - math.exp(a)) * _w(a)) for a, b in zip(lam[:-1], lam[1:]))
    assert dmn_objective(lam, order=1) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, "heun"])
def test_dmn_coefficients_integrate_polynomials_exactly(order):
    """A step of order k integrates e^lambda p(lambda) exactly for every polynomial p of degree < k through its nodes
    (its coefficients are the integrals of the Lagrange basis): checked against the closed forms of
    int e^l dl, int e^l l dl = e^l (l - 1) and int e^l l^2 dl = e^l (l^2 - 2 l + 2). Float64 with h ~ 1: the
    H-functions lose at most a few digits to cancellation, so 1e-9 relative."""
    lam = np.array([-math.log(80), -2.5, -1.2, 0.4, 1.1, 2.9, -math.log(0.002)])
    prims = [lambda x: math.exp(x), lambda x: math.exp(x) * (x - 1), lambda x: math.exp(x) * (x * x - 2 * x + 2)]
    for s, (nodes, coefs) in enumerate(crs.peers.dmn_coefficients(lam, order)):
        for degree in range(len(nodes)):
            exact = prims[degree](lam[s + 1]) - prims[degree](lam[s])
            quad = sum(j * lam[n] ** degree for n, j in zip(nodes, coefs))
            assert quad == pytest.approx(exact, rel=1e-9, abs=1e-9 * abs(math.exp(lam[s + 1])))
    k = [len(nodes) for nodes, _ in crs.peers.dmn_coefficients(lam, order)]
    expected = {1: [1] * 6, 2: [1, 2, 2, 2, 2, 1], 3: [1, 2, 3, 3, 2, 1], "heun": [2, 2, 2, 2, 2, 1]}[order]
    assert k == expected  # lower orders at both ends, as the reference; Heun's last step into sigma_min is Euler's


def test_dmn_matches_the_reference_code_at_five_steps():
    """scxue/DM-NonUniform step_optim.py (commit 95d4ac6), run on the EDM range [0.002, 80] with its defaults
    (order 3, truncNum 3, uniform-lambda start), stops at the levels below (benchmarks/fidelity.py, record
    fidelity-dmn). The port, given the ends as -log sigma rather than as the reference rounds them through torch
    (within 1e-15), lands on the same isolated minimum at 5 steps: equal within the optimiser's tolerance (xtol 1e-8
    in lambda), so 1e-6 relative in sigma."""
    reference = [80.0, 4.258110606291463, 1.5883016252315514, 0.6107349099962772, 0.14296704535460394, 0.002]
    lam, info = dmn_lambdas(5, -math.log(80), -math.log(0.002), order=3)
    np.testing.assert_allclose(np.exp(-lam), reference, rtol=1e-6)
    assert info["objective"] < info["start_objective"]


@pytest.mark.parametrize("sampler, order", [("euler", 1), ("dpmpp_2m", 2), ("heun", "heun")])
def test_dmn_search_is_data_free_and_follows_the_sampler(sampler, order):
    nfe = 7 if sampler == "heun" else 5
    result = search_schedule("dmn", GMM.denoiser, GMM, sampler, nfe, seed=1, **SMALL)
    assert result.evaluations == 0 and result.meta["order"] == order
    steps = crs.sampling.steps_for_nfe(sampler, nfe)
    lam = -np.log(result.sigmas[:-1])
    again, _ = dmn_lambdas(steps - 1, lam[0], lam[-1], order, lower_final=False)  # the suite's samplers
    np.testing.assert_allclose(lam, again, rtol=0, atol=1e-9)  # deterministic: the same optimiser run
    assert result.sigmas[0] == 80.0 and result.sigmas[-2] == 0.002


def test_ld3_levels_start_uniform_in_log_sigma_with_exact_ends():
    sig = ld3_levels(torch.ones(6, dtype=torch.float64), 0.002, 80.0).numpy()
    np.testing.assert_allclose(sig[:-1], np.geomspace(80.0, 0.002, 6), rtol=1e-12)
    assert sig[0] == 80.0 and sig[-2] == 0.002 and sig[-1] == 0.0


def test_ld3_keeps_the_best_validated_schedule():
    """LD3 validates its start (uniform lambda) first and keeps the best validated logits: its validation loss is
    never above the start's, and the result is a schedule the search batch scores."""
    # radius 0: the validation pairs keep their noise, so the validated loss compares with the start's below
    result = search_schedule("ld3", GMM.denoiser, GMM, "euler", 5, seed=2, pairs=16, rounds=(1, 1), radius=0, **SMALL)
    from crs.quality import solve_teacher
    from crs.seeds import search_seed

    teacher = solve_teacher(GMM.denoiser, (2,), SMALL["n"], search_seed(2), steps=SMALL["teacher_steps"])
    start = ld3_levels(torch.ones(5, dtype=torch.float64), 0.002, 80.0)
    with torch.no_grad():
        x = crs.sampling.run_steps(crs.sampling.STEPS["euler"], GMM.denoiser, teacher.x_T[8:16], start)
    start_loss = float((x.double() - teacher.endpoint[8:16].double()).pow(2).flatten(1).mean(1).mean())
    assert (
        result.meta["valid_loss"] <= start_loss and result.meta["iterations"] == 8
    )  # 8 training pairs, 2 a batch, 2 rounds
    assert result.meta["radius"] == 0.0
    again = search_schedule("ld3", GMM.denoiser, GMM, "euler", 5, seed=2, pairs=16, rounds=(1, 1), **SMALL)
    assert again.meta["radius"] == pytest.approx(0.001 * 2 / 25)  # the original's: 0.001 d / nfe^2
    assert result.evaluations > 0 and len(result.sigmas) == 6


def test_peer_options_are_checked_before_any_work():
    with pytest.raises(ValueError, match=r"`pairs` \(64\) cannot exceed the search batch `n` \(32\)"):
        search_schedule("ld3", GMM.denoiser, GMM, "euler", 4, pairs=64, **SMALL)
    with pytest.raises(ValueError, match="`rounds` must be two counts"):
        search_schedule("ld3", GMM.denoiser, GMM, "euler", 4, pairs=8, rounds=3, **SMALL)
    with pytest.raises(ValueError, match="`radius` must be 'auto' or a number >= 0"):
        search_schedule("ld3", GMM.denoiser, GMM, "euler", 4, pairs=8, radius=-1, **SMALL)
    with pytest.raises(ValueError, match="Unknown DM-NonUniform order 4"):
        search_schedule("dmn", GMM.denoiser, GMM, "euler", 4, order=4, **SMALL)


def test_peers_search_a_flow_matching_model():
    """A velocity model (precond="flow") is searched in sigma like any other: both peers return schedules inside
    its range."""
    from crs.networks import build_denoiser

    den = build_denoiser((2,), sigma_min=0.002, sigma_max=80.0, seed=0, precond="flow").eval()
    for method, opts in (("dmn", {}), ("ld3", {"pairs": 8, "rounds": (1, 0)})):
        result = search_schedule(method, den, GMM, "euler", 4, seed=0, **SMALL, **opts)
        assert result.sigmas[0] == 80.0 and np.all(np.diff(result.sigmas) < 0) and math.isfinite(result.objective)


# ----------------------------------------------------------------------------- Align Your Steps' optimiser
C, DIM = 0.5, 8  # Gaussian data N(0, C^2 I): the KLUB's importance density is then exact in t


def _exact_klub(levels):
    """The KLUB of first-order steps over ``levels`` (ascending) for N(0, C^2 I) data with its exact denoiser:
    E|D(x_t, t) - D(x_u, u)|^2 = C^4 DIM (1 / (C^2 + t^2) - 1 / (C^2 + u^2)) (x_t, x_u jointly Gaussian), integrated
    against t^-3 by quadrature."""
    from scipy.integrate import quad

    def one(a, b):
        return quad(lambda t: t**-3 * C**4 * DIM * (1 / (C**2 + t**2) - 1 / (C**2 + b**2)), a, b, limit=200)[0]

    return sum(one(a, b) for a, b in zip(levels[:-1], levels[1:]))


def _gaussian():
    return crs.make_dataset("gaussian", dim=DIM, std=C)


def test_klub_estimate_matches_its_closed_form():
    """Importance sampling in t is exact for Gaussian data of scale c, so the estimate's only noise is the
    chi-square of |D - D'|^2 over DIM dimensions: relative standard error sqrt(2 / (DIM n)) = 0.35 % at n = 20000;
    5 standard errors."""
    from crs.peers import klub

    data, gen = _gaussian(), torch.Generator().manual_seed(0)
    x0 = data.sample(20000, gen).double()
    rng = np.random.default_rng(0)
    noise = (torch.randn(x0.shape, generator=gen, dtype=x0.dtype), torch.randn(x0.shape, generator=gen, dtype=x0.dtype))
    noise += (rng.random(len(x0)), rng.random(len(x0)))
    bounds = [(0.05, 0.4), (0.4, 3.0)]
    estimate = klub(data.denoiser, x0, noise, bounds)
    assert estimate == pytest.approx(_exact_klub([0.05, 0.4, 3.0]), rel=5 * math.sqrt(2 / (DIM * 20000)))


def test_ays_sweeps_reach_the_klub_optimum_on_gaussian_data():
    """The coordinate search lands near the exact KLUB minimiser (scipy on the quadrature KLUB); Monte Carlo noise
    with 4096 samples a candidate moves a point by about a percent in log sigma, so 5 % in log sigma."""
    from scipy.optimize import minimize

    from crs.peers import ays_sweeps

    data = _gaussian()
    start = np.geomspace(0.01, 20.0, 5)

    def total(u):
        return _exact_klub(np.concatenate([[start[0]], np.sort(np.exp(u)), [start[-1]]]))

    exact = np.exp(minimize(total, np.log(start[1:-1]), method="Nelder-Mead", options={"xatol": 1e-6}).x)
    levels = start.copy()
    draw = lambda m, gen: (data.sample(m, gen).double(), None)  # noqa: E731
    spent = ays_sweeps(
        data.denoiser,
        draw,
        levels,
        dict(candidates=11, mc_samples=4096, sweeps=30, batch_size=8192),
        0,
        lambda s, lv: False,
    )
    assert spent > 0 and levels[0] == start[0] and levels[-1] == start[-1]
    np.testing.assert_allclose(np.log(levels[1:-1]), np.log(exact), atol=0.05)
    assert total(np.log(levels[1:-1])) <= 1.01 * total(np.log(exact))


def test_ays_opt_search_keeps_the_best_scored_sweep():
    """ays-opt starts from EDM's schedule, scores it and every sweep's schedule by the teacher error on the search
    batch, and returns the best of them (test_conditioning runs a guided model)."""
    from crs.quality import solve_teacher
    from crs.seeds import search_seed

    result = search_schedule("ays-opt", GMM.denoiser, GMM, "euler", 6, seed=3, mc_samples=256, sweeps=4, **SMALL)
    teacher = solve_teacher(GMM.denoiser, (2,), SMALL["n"], search_seed(3), steps=SMALL["teacher_steps"])
    start = crs.search.teacher_rms(GMM.denoiser, "euler", teacher, crs.baseline_sigmas("karras", 6, 0.002, 80.0))
    scores = result.meta["sweep_objectives"]  # the start's, then each sweep's
    assert scores[0] == pytest.approx(start, rel=1e-12) and result.objective == min(scores)
    assert crs.search.teacher_rms(GMM.denoiser, "euler", teacher, result.sigmas) == pytest.approx(result.objective)
    assert len(scores) >= 2 and result.meta["klub_sample_evaluations"] > 0 and result.evaluations > 0


# ----------------------------------------------------------------------------- Optimal Stepsize
def _oss_loops(denoiser, levels, traj, k, start):
    """OSS.py's search_OSS for Euler, as written there (loops over samples, layers, origins i descending, targets
    j; strict "<"; cal_medium), in EDM coordinates: its flow-matching Euler step is the same step, and its error
    differs by a factor per target node, the same for every candidate (so the same choices)."""
    g, n = len(levels) - 1, traj.shape[1]
    paths = []
    for b in range(n):
        if start == "noise":
            z_prev = [(1 + levels[i]) / (1 + levels[g]) * traj[g, b] for i in range(g + 1)]
        else:
            z_prev = [traj[g, b].clone() for _ in range(g + 1)]
        z_next = list(z_prev)
        dp = [[math.inf] * (g + 1) for _ in range(k + 1)]
        trace = [[g] * (g + 1) for _ in range(k + 1)]
        reached = {g} if start == "top" else set(range(1, g + 1))
        for m in range(k):
            origins = set(reached)  # the nodes reached before this layer (the original: every node, "noise")
            for i in range(g, 0, -1):
                if i not in origins:
                    continue
                d = denoiser(z_prev[i][None], torch.tensor([levels[i]], dtype=torch.float64))[0]
                for j in range(i - 1, -1, -1):
                    r = levels[j] / levels[i]
                    z_j = r * z_prev[i] + (1 - r) * d
                    cost = float((z_j - traj[j, b]).pow(2).mean())
                    if cost < dp[m][j]:
                        dp[m][j], trace[m][j], z_next[j] = cost, i, z_j
                        reached.add(j)
            dp[m + 1], trace[m + 1] = list(dp[m]), list(trace[m])
            z_prev = list(z_next)
        path = [0]
        for m in reversed(range(k)):
            path.append(trace[m][path[-1]])
        paths.append(path[1:])
    cols = [sorted(p[m] for p in paths) for m in range(k)]
    return [0] + [(c[len(c) // 2] + c[len(c) // 2 - 1]) // 2 for c in cols]


@pytest.mark.parametrize("start", ["top", "noise"])
def test_oss_programme_is_the_originals_loops_vectorised(start):
    """The vectorised programme takes the same path as the original's loops (transcribed above) on a small grid
    with a teacher on it; float64 throughout, the same comparisons: the same indices. (Batched and single-row
    denoiser calls may differ in the last bits on another CPU; a path could then differ only at an exact tie of two
    random costs, which has probability ~1e-15 here.)"""
    from crs.peers import oss_path

    g, n = 12, 6
    levels = np.concatenate([[0.0], crs.baseline_sigmas("karras", g, 0.002, 80.0).numpy()[:-1][::-1]])
    gen = torch.Generator().manual_seed(0)
    x_top = 80.0 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    # a teacher's states on the grid (fine Euler sub-steps between its levels; any trajectory serves the check)
    traj = [x_top]
    x = x_top
    for i in range(g, 0, -1):
        for a, b in zip(*(np.geomspace(levels[i], max(levels[i - 1], 1e-3), 9)[s:] for s in (0, 1))):
            x = x + (b - a) * (x - GMM.denoiser(x, torch.full((n,), a, dtype=torch.float64))) / a
        traj.append(GMM.denoiser(x, torch.full((n,), 1e-3, dtype=torch.float64)) if i == 1 else x)
    traj = torch.stack(traj[::-1])
    for k in (3, 5):
        path, spent = oss_path(GMM.denoiser, "euler", levels, traj, k, start=start)
        assert path == _oss_loops(GMM.denoiser, levels, traj, k, start) and spent > 0


def test_oss_search_frees_the_last_level_and_keeps_its_budget():
    for sampler, nfe in (("euler", 5), ("dpmpp_2m", 5), ("heun", 7)):
        result = search_schedule("oss", GMM.denoiser, GMM, sampler, nfe, seed=1, grid=12, substeps=2, **SMALL)
        sig = np.array(result.sigmas)
        assert len(sig) == crs.sampling.steps_for_nfe(sampler, nfe) + 1 and sig[0] == 80.0 and np.all(np.diff(sig) < 0)
        assert result.evaluations > result.meta["dp_evaluations"] > 0


def test_head_to_head_benchmark_ratios_to_the_best_of_each_cell(monkeypatch, toy_search_options):
    """The head-to-head at toy size: in each cell the best schedule has ratio 1 and no row is below it; the
    no-teacher recommendation is a method that spent no evaluation, the budgeted one within the budget; the page
    and the Pareto figure render from the result."""
    import benchmarks.bench as bench
    from benchmarks.render import pareto_figure
    from benchmarks.tables import peers_md, peers_recommendation, peers_summary

    options = toy_search_options
    sizes = dict(n_search=16, n_eval=32, n_boot=10, teacher_steps=32)
    monkeypatch.setitem(bench.QUALITY_CASES, "gmm", dict(bench.QUALITY_CASES["gmm"], sizes=sizes, options=options))
    shown = ("crs (data)", "gits", "optimal", "dmn", "ld3", "oss", "ays-opt")  # the others cost seconds more
    monkeypatch.setattr(bench, "QUALITY_METHODS", {k: bench.QUALITY_METHODS[k] for k in shown})
    result = bench.peers_table("gmm", nfe={"euler": [4], "dpmpp_2m": [3]}, progress=False)
    for cell in result["cells"]:
        ratios = {k: r["ratio_best"] for k, r in cell["rows"].items() if "ratio_best" in r}
        assert ratios[cell["best"]] == 1.0 and min(ratios.values()) == 1.0
        assert set(ratios) == set(shown) | set(crs.BASELINES)
    summary, rec = peers_summary(result), peers_recommendation(result)
    assert set(rec) == {"euler", "dpmpp_2m"} and summary["dmn"]["max_cost"] == 0
    for sampler, picks in rec.items():
        cells = [c for c in result["cells"] if c["sampler"] == sampler]
        method, worst = picks["no_teacher"]
        assert all(c["rows"][method]["evaluations"] == 0 for c in cells)
        assert worst == max(c["rows"][method]["ratio_best"] for c in cells)
        assert all(c["rows"][picks["teacher"][0]]["evaluations"] <= bench.TEACHER_BUDGET for c in cells)
    assert "Recommended per sampler" in peers_md(result) and pareto_figure(result)[:4] == b"\x89PNG"


@pytest.mark.parametrize("case, guidance", [("digits-cond", 2.0), ("digits-flow", None)])
def test_head_to_head_runs_guided_and_flow_models(monkeypatch, tmp_path, case, guidance):
    """The head-to-head's conditional case searches and judges the guided ODE (each sample with its own label) and
    the flow case adds the flow models' shipped schedules; on saved untrained stand-ins at toy size."""
    import benchmarks.bench as bench
    from crs.networks import build_denoiser

    build = dict(bench.QUALITY_CASES[case]["build"])
    build_denoiser((1, 8, 8), seed=0, **build).save_pretrained(tmp_path / "m")
    sizes = dict(n_search=4, n_eval=8, n_boot=10, teacher_steps=16, check_optimizer=False)
    if case == "digits-flow":
        sizes["baselines"] = bench.QUALITY_CASES[case]["sizes"]["baselines"]
    options = {"teacher_steps": 8, "crs": {"grid_size": 4, "n_samples": 16}, "oss": {"grid": 6, "substeps": 1}}
    monkeypatch.setitem(bench.QUALITY_CASES, case, dict(bench.QUALITY_CASES[case], sizes=sizes, options=options))
    monkeypatch.setattr(bench, "QUALITY_METHODS", {k: bench.QUALITY_METHODS[k] for k in ("crs (data)", "dmn", "oss")})
    result = bench.peers_table(case, str(tmp_path / "m"), nfe={"euler": [3]}, progress=False, guidance=guidance)
    rows = result["cells"][0]["rows"]
    assert result["guidance"] == guidance and min(r["ratio_best"] for r in rows.values()) == 1.0
    assert ("flow" in rows) == (case == "digits-flow") and {"dmn", "oss", "karras"} <= set(rows)
    with pytest.raises(ValueError, match="needs a class-conditional case"):
        bench.peers_table("gmm", guidance=2.0)


@pytest.mark.parametrize("peer, missing", [("dmn", "step_optim.py"), ("oss", "OSS/OSS.py"), ("ld3", "trainer.py")])
def test_fidelity_needs_a_checkout_of_the_reference(tmp_path, peer, missing):
    """The fidelity script runs the authors' code from a checkout given by path (never downloaded); without one it
    says which file it looked for before any work."""
    from benchmarks.fidelity import FIDELITY

    with pytest.raises(ValueError, match=missing.replace(".", r"\.")):
        FIDELITY[peer](tmp_path)


def test_a_guided_search_counts_two_network_calls_per_evaluation():
    """Under guidance (w not 0 or 1) each denoiser evaluation is two network calls, in a search's own cost as in
    its teacher's: GITS's and OSS's whole cost doubles from w = 1 to w = 2 (the same programme, the same counts)."""
    from crs.analytic import gmm
    from crs.conditioning import Guided, Labels

    ring = gmm(labels=[0, 1] * 4)
    for method in ("gits", "oss"):
        costs = [
            search_schedule(
                method, Guided(ring.denoiser, w), ring, "euler", 4, conditions=Labels(2), grid=8, substeps=2, **SMALL
            ).evaluations
            for w in (1.0, 2.0)
        ]
        assert costs[1] == 2 * costs[0] > 0


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
def test_oss_jumps_are_the_samplers_own_steps(sampler):
    """The programme's jump from level s_i to every lower level is the sampler's own step (crs.sampling.STEPS), with
    DPM-Solver++(2M)'s history where a sample has one (first order where it has none); float64 on both sides, the
    same formulas rearranged: 1e-12 relative."""
    from crs.peers import _jumps
    from crs.sampling import STEPS

    gen = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randn(5, 2, generator=gen, dtype=torch.float64)
    s_i, s_prev = 3.0, 7.0
    d_i = GMM.denoiser(x, torch.full((5,), s_i, dtype=torch.float64))
    d_prev = GMM.denoiser(x * 1.5, torch.full((5,), s_prev, dtype=torch.float64))
    has = torch.tensor([True, False, True, True, False])
    targets = torch.tensor([0.0, 0.01, 0.5, 2.0], dtype=torch.float64)
    hist = (torch.full((5,), s_prev, dtype=torch.float64), d_prev, has)
    out, spent = _jumps(sampler, GMM.denoiser, x, d_i, s_i, targets, hist, (2,), 64)
    assert spent == (3 if sampler == "heun" else 0)  # Heun's corrector at every target but 0
    for j, t in enumerate(targets.tolist()):
        for b in range(5):
            carry = (s_prev, d_prev[b : b + 1]) if sampler == "dpmpp_2m" and has[b] else None
            expected, _ = STEPS[sampler](GMM.denoiser, x[b : b + 1], s_i, t, carry)
            torch.testing.assert_close(out[j, b : b + 1], expected, rtol=1e-12, atol=1e-12)
