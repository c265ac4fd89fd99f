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
    """The coverage study at test size (the full one: `python -m benchmarks.bench coverage`, README): FID of 64 draws
    in 8 dimensions, 200 repeats of 200 replicates. The bias-shifted percentile interval covers the estimator's
    expected value within 4 binomial standard errors of 95 % (plus 0.02 for the quantile noise of 200
    replicates); the plain percentile interval, centred on the replicates' upward-biased mean, covers far less."""
    from benchmarks.bench import coverage_cases

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


@pytest.mark.parametrize(
    "case,n,dim",
    [
        ("kid (suite)", 64, 8),
        ("recall (suite)", 64, 8),
        ("fid difference (suite)", 64, 8),
        ("fid linear (suite)", 512, 16),
        ("fid linear difference (suite)", 512, 16),
        ("mode_tv (suite)", 256, 16),
    ],
)
def test_suite_intervals_cover_at_test_size(case, n, dim):
    """The suite's own metric code (crs.metrics: KID's count-weighted U-statistic, recall's rescaled delete-d
    replicates, the paired FID difference) in the coverage study at test size: 64 draws in 8 dimensions, 200
    repeats of 200 replicates; FID's linearised replicates where they are meant for, many rows per feature (512
    draws in 16 dimensions); mode TV's m-out-of-n replicates at the study's 256 draws of the 2-D mixture. The
    shifted interval covers within 4 binomial standard errors of 95 % plus 0.02 for the quantile noise of 200
    replicates (the full study: README, "Measured: interval coverage")."""
    from benchmarks.bench import coverage_cases

    spec = coverage_cases(n=n, dim=dim, mc_draws=4000, only=lambda name: name == case)[case]
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


def test_endpoint_errors_are_the_spread_of_the_ends_across_bootstrap_seeds():
    """The Monte Carlo error of an interval end, estimated from one set of replicates, against the spread of that
    end over 400 independent sets of normal replicates, at the 95 % level (B = 2000) and deep in the tail, at a
    Bonferroni level over 6 baselines (B = 1000, about 4 replicates beyond the end). The asymptotic error of the
    quantile is sqrt(p(1 - p) / B) / phi(z_p) (0.060 and 0.166); the 400 ends give their spread to about 4 %
    (a relative standard error of 1 / sqrt(2 * 399)), hence the 12 % tolerance. The estimate is the larger of an
    order-statistic one (noisy in the tail: alone it falls to 0.4 times the spread) and the normal-theory one,
    so on normal replicates it is never far below the spread; its median is the spread to 15 %."""
    from crs.intervals import endpoint_errors

    rng = np.random.default_rng(0)
    for b, level in ((2000, 0.95), (1000, 1 - 0.05 / 6)):
        p = (1 - level) / 2
        ends = [np.quantile(rng.standard_normal(b), p) for _ in range(400)]
        truth = np.sqrt(p * (1 - p) / b) / norm.pdf(norm.ppf(p))
        spread = np.std(ends)
        assert spread == pytest.approx(truth, rel=0.12)
        estimates = np.array([endpoint_errors(rng.standard_normal(b), 0.0, level, "percentile")[0] for _ in range(100)])
        assert np.median(estimates) == pytest.approx(spread, rel=0.15), b
        # never well below: the normal-theory estimate's own noise is that of the sample sd, 1 / sqrt(2B) = 2 %
        assert estimates.min() >= 0.85 * spread, (b, estimates.min() / spread)
        assert estimates.max() <= 4 * spread, (b, estimates.max() / spread)  # the order statistics' heavy-tail guard
    boot = rng.standard_normal(b)
    lo, hi = endpoint_errors(boot, 0.0, 0.95, "percentile")
    b_lo, b_hi = endpoint_errors(boot, 0.0, 0.95, "basic")
    s_lo, s_hi = endpoint_errors(boot, 0.0, 0.95, "shifted")
    assert (b_lo, b_hi) == (hi, lo)  # reflected ends swap errors
    bias = np.std(boot, ddof=1) / np.sqrt(b)  # the shifted interval's bias estimate adds its own error
    assert s_lo == pytest.approx(np.hypot(lo, bias)) and s_hi == pytest.approx(np.hypot(hi, bias))
    assert endpoint_errors(np.full(10, 3.0), 3.0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="interval method"):
        endpoint_errors(boot, 0.0, 0.95, "bca")


@pytest.mark.skipif(
    not __import__("os").environ.get("CRS_FULL_COVERAGE"),
    reason="the full coverage study takes about 8 minutes: run it with CRS_FULL_COVERAGE=1",
)
def test_full_coverage_study():
    """The README's coverage table, recomputed (`python -m benchmarks.bench coverage` prints it): n = 256, 400
    repeats of 1000 replicates. Every suite metric's shifted interval covers between 92 % and 98 %, the target,
    widened by 2 binomial standard errors (0.011 each) so that a study at the band's edge can pass on another
    machine's rounding."""
    from benchmarks.bench import coverage_table

    for row in coverage_table(repeats=400, n_boot=1000, progress=False):
        if row["case"].endswith("(suite)"):
            share, se = row["coverage"]["shifted"], row["stderr"]
            assert 0.92 - 2 * se <= share <= 0.98 + 2 * se, (row["case"], share)


def test_a_subset_of_the_coverage_study_has_the_full_studys_targets():
    """`bench coverage --coverage-cases` computes only the targets it needs, drawing the others' Monte Carlo
    numbers all the same: each target is bit-for-bit the one of the full study (the same draws, the same code)."""
    from benchmarks.bench import coverage_cases

    full = coverage_cases(64, 8, 500)
    for name in ["fid (4-d)", "precision (suite)", "recall (suite)", "mode_tv (suite)", "fid linear (suite)"]:
        one = coverage_cases(64, 8, 500, only=lambda c, name=name: c == name)
        assert list(one) == [name] and one[name]["target"] == full[name]["target"], name
