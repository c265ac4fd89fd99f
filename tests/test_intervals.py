"""Bootstrap intervals (crs.intervals) and their measured coverage."""

import numpy as np
import pytest
from scipy.stats import norm

from crs.intervals import INTERVAL_METHODS, bootstrap_interval, coverage, jackknife_groups


def test_interval_constructions_match_their_definitions():
    rng = np.random.default_rng(0)
    boot = rng.gamma(2.0, 1.0, size=4000)  # skewed replicates
    est = 1.7
    q_lo, q_hi = np.quantile(boot, [0.025, 0.975])
    # alpha = (1 - 0.95) / 2 is 0.025 to round-off, hence the relative tolerance
    assert bootstrap_interval(boot, est, method="percentile") == pytest.approx((q_lo, q_hi), rel=1e-12)
    lo, hi = bootstrap_interval(boot, est, method="basic")
    assert lo == pytest.approx(2 * est - q_hi, rel=1e-12) and hi == pytest.approx(2 * est - q_lo, rel=1e-12)
    lo, hi = bootstrap_interval(boot, est, method="shifted")
    bias = boot.mean() - est  # the bootstrap estimate of bias (Efron and Tibshirani 1993, 10.2)
    assert lo == pytest.approx(q_lo - bias, rel=1e-12) and hi == pytest.approx(q_hi - bias, rel=1e-12)
    # BCa without acceleration is the bias-corrected percentile interval (Efron and Tibshirani 1993, 14.3)
    z0 = norm.ppf(np.mean(boot < est))
    expected = np.quantile(boot, norm.cdf(2 * z0 + norm.ppf([0.025, 0.975])))
    assert bootstrap_interval(boot, est, method="bca") == pytest.approx(tuple(expected), rel=1e-9)
    # with a median-centred symmetric bootstrap and no acceleration, BCa is the percentile interval
    sym = np.concatenate([np.linspace(-1, 1, 1001)])
    assert bootstrap_interval(sym, 0.0, method="bca", jackknife=np.array([1.0, -1.0])) == pytest.approx(
        bootstrap_interval(sym, 0.0), abs=1e-3
    )


def test_intervals_refuse_bad_input_by_name():
    with pytest.raises(ValueError, match="Unknown interval method 'bc'"):
        bootstrap_interval(np.ones(10), 1.0, method="bc")
    with pytest.raises(ValueError, match="`level` must be between 0 and 1"):
        bootstrap_interval(np.ones(10), 1.0, level=95)
    with pytest.raises(ValueError, match="NaN or inf"):
        bootstrap_interval(np.array([1.0, np.nan]), 1.0)


def test_grouped_jackknife_leaves_each_group_out_once():
    groups = jackknife_groups(10, 4)
    left_out = [sorted(set(range(10)) - set(g.tolist())) for g in groups]
    assert sorted(i for out in left_out for i in out) == list(range(10))
    assert [len(g) for g in jackknife_groups(5, 100)] == [4] * 5


def test_coverage_of_the_mean_is_near_nominal():
    """The sample mean of normal data: every method's 95 % interval covers the true mean in close to 95 % of
    200 repeats. Tolerance: 4 binomial standard errors at 200 repeats (0.062), plus the bootstrap's own
    undercoverage at n = 50 (a few points); the draws are seeded, so the figure does not change between runs
    on one machine, and on another only with the rounding of sums."""
    result = coverage(
        draw=lambda rng: rng.standard_normal(50),
        statistic=lambda x, rows: float(x[rows].mean()),
        size=len,
        target=0.0,
        repeats=200,
        n_boot=400,
        seed=1,
    )
    assert set(result["coverage"]) == set(INTERVAL_METHODS)
    for m, share in result["coverage"].items():
        assert 0.95 - 4 * result["stderr"] - 0.03 <= share <= 1.0, m
    assert result["stderr"] == pytest.approx(np.sqrt(0.95 * 0.05 / 200))


def test_fid_interval_is_the_fid_of_the_features_with_a_seeded_interval():
    from crs.distances import fid_from_stats
    from crs.metrics import fid_interval

    rng = np.random.default_rng(3)
    gen = rng.standard_normal((120, 5))
    mu, cov = np.full(5, 0.2), np.diag(np.linspace(0.5, 2.0, 5))
    value, lo, hi = fid_interval(gen, mu, cov, seed=4)
    # the same sums in another order (Gram route against scipy's sqrtm): equal to round-off
    assert value == pytest.approx(fid_from_stats(gen.mean(0), np.cov(gen, rowvar=False), mu, cov), rel=1e-9)
    assert lo < hi and fid_interval(gen, mu, cov, seed=4) == (value, lo, hi)
    for method in INTERVAL_METHODS:
        _, m_lo, m_hi = fid_interval(gen, mu, cov, seed=4, method=method, n_boot=200)
        assert m_lo < m_hi
    with pytest.raises(ValueError, match="NaN or inf"):
        fid_interval(np.full((4, 5), np.nan), mu, cov)


def test_fid_needs_the_shifted_interval():
    """The coverage study at test size (the full one: `python -m crs.run.bench coverage`, README): FID of 64 draws
    in 8 dimensions, 200 repeats of 200 replicates. The bias-shifted percentile interval covers the estimator's
    expected value within 4 binomial standard errors of 95 % (plus 0.02 for the quantile noise of 200
    replicates); the plain percentile interval, centred on the replicates' upward-biased mean, covers far less."""
    from crs.run.bench import coverage_cases

    case = coverage_cases(n=64, dim=8, mc_draws=4000)["fid"]
    result = coverage(
        case["draw"],
        case["statistic"],
        len,
        case["target"],
        repeats=200,
        n_boot=200,
        methods=("percentile", "shifted"),
        seed=2,
    )
    tol = 4 * result["stderr"] + 0.02
    assert abs(result["coverage"]["shifted"] - 0.95) <= tol
    assert result["coverage"]["percentile"] < 0.95 - tol


@pytest.mark.parametrize("case", ["kid (suite)", "recall (suite)", "fid difference (suite)"])
def test_suite_intervals_cover_at_test_size(case):
    """The suite's own metric code (crs.metrics: KID's count-weighted U-statistic, recall's rescaled delete-d
    replicates, the paired FID difference) in the coverage study at test size: 64 draws in 8 dimensions, 200
    repeats of 200 replicates. The shifted interval covers within 4 binomial standard errors of 95 % plus 0.02
    for the quantile noise of 200 replicates (the full study: README, "Measured: interval coverage")."""
    from crs.run.bench import coverage_cases

    spec = coverage_cases(n=64, dim=8, mc_draws=4000)[case]
    result = coverage(
        spec["draw"],
        spec.get("statistic"),
        spec.get("size", len),
        spec["target"],
        repeats=200,
        n_boot=200,
        methods=("shifted",),
        seed=5,
        scores=spec.get("scores"),
    )
    assert abs(result["coverage"]["shifted"] - 0.95) <= 4 * result["stderr"] + 0.02, result["coverage"]
