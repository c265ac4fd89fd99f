"""Sample-quality metrics: clean-fid agreement, offline features, precision/recall, exact figures, pairing."""

import numpy as np
import pytest
import torch

import crs
from crs.distances import fid_bootstrap, fid_from_stats
from crs.metrics import (
    _inside,
    _knn_radii,
    bootstrap_indices,
    compare,
    evaluate_samples,
    kid_bootstrap,
    make_feature_extractor,
    recall_bootstrap,
    suite_interval,
)


def test_fid_and_kid_agree_with_clean_fid():
    from cleanfid.fid import fid_from_feats, kernel_distance

    rng = np.random.default_rng(0)
    gen, ref = rng.normal(size=(300, 16)), rng.normal(0.2, 1.1, size=(300, 16))
    idx = bootstrap_indices(300, 20)
    value, boot = fid_bootstrap(gen, ref.mean(0), np.cov(ref, rowvar=False), idx)
    assert value == pytest.approx(fid_from_feats(gen, ref), rel=1e-6)
    # the Gram-matrix path for fewer samples than features gives the same FID
    wide_gen, wide_ref = rng.normal(size=(40, 64)), rng.normal(size=(200, 64))
    assert fid_bootstrap(wide_gen, wide_ref.mean(0), np.cov(wide_ref, rowvar=False), idx[:, :40] % 40)[
        0
    ] == pytest.approx(fid_from_feats(wide_gen, wide_ref), rel=1e-6)
    # KID: clean-fid's estimate with subsets as large as the sets is our U-statistic over all pairs
    # (the same sums in another order: equal to round-off, ~1e-15 relative)
    assert kid_bootstrap(gen, ref, idx)[0] == pytest.approx(kernel_distance(gen, ref, num_subsets=3), rel=1e-9)


def test_bootstrap_replicates_are_the_statistic_of_the_resampled_rows():
    """FID and KID replicates are computed from row counts; they equal the statistic of the resampled rows
    written out (FID: the rows themselves, both the F x F and the Gram path; KID: the U-statistic over pairs of
    distinct rows, weighted by their counts). Equal up to eigenvalue round-off (1e-8 relative is ample)."""
    rng = np.random.default_rng(3)
    ref = rng.normal(0.5, 1.2, size=(400, 24))
    mu, cov = ref.mean(0), np.cov(ref, rowvar=False)
    for n in (60, 12):  # more rows than features, then fewer (the Gram path)
        gen = rng.normal(size=(n, 24)) + 2.0
        idx = bootstrap_indices(n, 3, seed=n)
        _, boot = fid_bootstrap(gen, mu, cov, idx)
        direct = [fid_from_stats(gen[r].mean(0), np.cov(gen[r], rowvar=False), mu, cov) for r in idx]
        np.testing.assert_allclose(boot, direct, rtol=1e-8)
    gen = rng.normal(size=(30, 24))
    r = bootstrap_indices(30, 1, seed=1)[0]
    w = np.bincount(r, minlength=30).astype(float)
    kern = lambda a, b: (a @ b.T / 24 + 1) ** 3  # noqa: E731
    k_gg, k_rr, k_gr = kern(gen, gen), kern(ref, ref), kern(gen, ref)
    pair_w = np.outer(w, w) - np.diag(w**2)  # pairs of distinct rows
    expected = (
        (pair_w * k_gg).sum() / pair_w.sum()
        + (k_rr.sum() - np.trace(k_rr)) / (400 * 399)
        - 2 * (w @ k_gr.sum(1)) / (30 * 400)
    )
    assert kid_bootstrap(gen, ref, r[None])[1][0] == pytest.approx(expected, rel=1e-10)


def test_recall_replicates_resample_the_generated_set():
    rng = np.random.default_rng(4)
    gen, ref = rng.normal(size=(80, 3)), rng.normal(size=(120, 3))
    idx = bootstrap_indices(80, 40, seed=2)
    value, boot = recall_bootstrap(gen, ref, idx, k=3)
    assert value == _inside(ref, gen, _knn_radii(gen, 3)).mean()  # the standard recall (the same comparisons)
    # a replicate: the recall of the distinct rows drawn, its deviation from the replicates' mean scaled by the
    # delete-d jackknife's factor sqrt(u / (n - u)), centred on the estimate
    kept = [np.unique(rows) for rows in idx]
    raw = np.array([_inside(ref, gen[u], _knn_radii(gen[u], 3)).mean() for u in kept])
    sizes = np.array([len(u) for u in kept])
    np.testing.assert_allclose(boot, value + np.sqrt(sizes / (80 - sizes)) * (raw - raw.mean()), rtol=1e-12)
    assert boot.std() > 0.01  # the generated set's variation is in the interval


def test_offline_features_through_clean_fid(tmp_path):
    """The EfficientNet extractor honours clean-fid's custom_feat_extractor contract: compute_fid on two
    folders of PNGs equals our FID on the same images."""
    from cleanfid import fid
    from PIL import Image

    imgs = crs.make_dataset("digits", split="all").images[:64]
    for name, part in (("a", imgs[:32]), ("b", imgs[32:])):
        (tmp_path / name).mkdir()
        for i, im in enumerate(((part + 1) * 127.5).round().to(torch.uint8)):
            Image.fromarray(im[0].numpy()).convert("RGB").save(tmp_path / name / f"{i}.png")
    fx = make_feature_extractor("efficientnet-lite0")
    theirs = fid.compute_fid(
        str(tmp_path / "a"),
        str(tmp_path / "b"),
        custom_feat_extractor=fx.fn,
        mode="clean",
        custom_fn_resize=lambda x: x,
        num_workers=0,
        batch_size=16,
        device=torch.device("cpu"),
        verbose=False,
    )
    a = ((imgs[:32] + 1) * 127.5).round() / 127.5 - 1
    b = ((imgs[32:] + 1) * 127.5).round() / 127.5 - 1
    ours = evaluate_samples(a, b, fx, bootstrap_indices(32, 5), kid=False)["fid_efficientnet-lite0"][0]
    assert ours == pytest.approx(theirs, rel=1e-3)


def test_feature_extractor_choice(monkeypatch, tmp_path):
    assert make_feature_extractor("auto", (2,)).name == "identity"
    monkeypatch.setattr("crs.metrics.INCEPTION_PATH", str(tmp_path / "absent.pt"))
    assert make_feature_extractor("auto", (1, 8, 8)).name == "efficientnet-lite0"
    with pytest.raises(ValueError, match="Inception FID needs clean-fid's weights"):
        make_feature_extractor("inception")
    with pytest.raises(ValueError, match="Unknown feature extractor 'clip'"):
        make_feature_extractor("clip")


def test_precision_recall_and_analytic_figures():
    data = crs.make_dataset("gmm")
    fx = make_feature_extractor("identity")
    ref = data.sample(1000, torch.Generator().manual_seed(0))
    idx = bootstrap_indices(1000, 50)
    good = evaluate_samples(data.sample(1000, torch.Generator().manual_seed(1)), ref, fx, idx, data=data)
    # half the modes only: precise but poor recall and mode coverage
    half = data.sample(4000, torch.Generator().manual_seed(2))
    half = half[data.assign(half) < 4][:1000]
    bad = evaluate_samples(half, ref, fx, idx, data=data)
    assert good["precision_identity"][0] > 0.9 and good["recall_identity"][0] > 0.9
    assert bad["precision_identity"][0] > 0.9 and bad["recall_identity"][0] < 0.6
    assert good["mode_tv"][0] < 0.05 and bad["mode_tv"][0] == pytest.approx(0.5, abs=0.01)
    assert good["sliced_wasserstein"][0] < bad["sliced_wasserstein"][0]
    # nll of exact samples estimates the entropy: close to that of the reference
    assert good["nll"][0] == pytest.approx(float(-data.log_prob(ref).mean()), abs=0.1)
    with pytest.raises(ValueError, match="NaN or inf"):
        evaluate_samples(torch.full((10, 2), float("nan")), ref, fx, idx[:, :10] % 10)


def test_paired_comparison_and_intervals():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(500,))
    idx = bootstrap_indices(500, 200)
    values = {
        "crs": (float((base - 0.1).mean()), (base - 0.1)[idx].mean(1)),
        "karras": (float(base.mean()), base[idx].mean(1)),
        "vp": (float((base + 0.5).mean()), (base + 0.5)[idx].mean(1)),
    }
    result = compare(values, "nll")
    # paired: the common noise cancels, so a 0.1 shift is significant although the intervals overlap
    assert result["best_baseline"] == "karras" and result["significant"] and result["crs_better"]
    assert result["diff_ci_low"] == pytest.approx(-0.1) and result["diff_ci_high"] == pytest.approx(-0.1)
    # every baseline is compared, Bonferroni-corrected: two baselines, each interval at 97.5 %
    assert result["correction"] == "bonferroni" and result["n_baselines"] == 2
    assert result["level"] == pytest.approx(0.975)
    assert result["better_than"] == ["karras", "vp"] and result["worse_than"] == []
    worse = compare({**values, "crs": values["vp"]}, "nll")
    assert worse["worse_than"] == ["karras"] and not worse["crs_better"] and worse["significant"]
    assert compare({"karras": values["karras"]}, "nll") is None
    lo, hi = suite_interval(values["karras"][1], values["karras"][0])
    assert lo < values["karras"][0] < hi
    assert compare(values, "precision_identity")["best_baseline"] == "vp"  # higher is better there


def test_reference_statistics_from_files_and_clean_fid_names(tmp_path):
    from crs.metrics import FeatureExtractor, reference_statistics

    ident = crs.metrics.make_feature_extractor("identity")
    feats = np.random.default_rng(0).normal(size=(200, 3))
    np.savez(tmp_path / "stats.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    stats = reference_statistics(str(tmp_path / "stats.npz"), ident)
    assert stats["mu"].shape == (3,) and stats["cov"].shape == (3, 3)
    np.savez(tmp_path / "bad.npz", mean=feats.mean(0))
    with pytest.raises(ValueError, match=r"needs arrays 'mu' and 'sigma' \(covariance\); found \['mean'\]"):
        reference_statistics(str(tmp_path / "bad.npz"), ident)
    with pytest.raises(ValueError, match="Unknown reference 'tset'"):
        reference_statistics("tset", ident)
    with pytest.raises(ValueError, match="are of Inception features; set features='inception'"):
        reference_statistics("cleanfid:cifar10/train/32", ident)
    fake_inception = FeatureExtractor("inception", lambda x: x.flatten(1))
    with pytest.raises(ValueError, match="Write clean-fid statistics as 'cleanfid:NAME/SPLIT/RES'"):
        reference_statistics("cleanfid:cifar10/train", fake_inception)
    with pytest.raises(ValueError, match="Could not get clean-fid's statistics 'cleanfid-custom:nothing-here'"):
        reference_statistics("cleanfid-custom:nothing-here", fake_inception)


def test_fid_against_statistics_equals_fid_against_the_samples_they_summarise():
    """FID from (mu, cov) of the reference features is FID from the reference itself; only FID is computed."""
    ident = crs.metrics.make_feature_extractor("identity")
    rng = np.random.default_rng(1)
    ref = torch.from_numpy(rng.normal(size=(500, 4)))
    gen = torch.from_numpy(rng.normal(0.3, 1.2, size=(300, 4)))
    idx = crs.metrics.bootstrap_indices(300, 20)
    full = crs.metrics.evaluate_samples(gen, ref, ident, idx, which=["fid", "precision"])
    stats = (ref.numpy().mean(0), np.cov(ref.numpy(), rowvar=False))
    only = crs.metrics.feature_scores(ident(gen), stats, idx, which=["fid", "precision"])
    # (the extractor hands features over in float32, the statistics here are float64: equal to ~1e-8)
    assert set(only) == {"fid"} and only["fid"][0] == pytest.approx(full["fid_identity"][0], rel=1e-6)
    np.testing.assert_allclose(only["fid"][1], full["fid_identity"][1], rtol=1e-6)


def test_evaluate_samples_is_features_then_scores_then_exact_figures():
    """The layers compose: the wrapper's values are feature_scores on the features plus analytic_scores."""
    data = crs.make_dataset("gmm")
    ident = crs.metrics.make_feature_extractor("identity")
    gen = data.sample(200, torch.Generator().manual_seed(3))
    ref = data.sample(300, torch.Generator().manual_seed(4))
    idx = crs.metrics.bootstrap_indices(200, 10)
    whole = crs.metrics.evaluate_samples(gen, ref, ident, idx, data=data, seed=5)
    parts = {f"{k}_identity": v for k, v in crs.metrics.feature_scores(ident(gen), ident(ref), idx, kid=False).items()}
    parts.update(crs.metrics.analytic_scores(gen, ref, data, idx, seed=5))
    assert set(whole) == set(parts) and "kid_identity" not in whole  # KID for image features only
    for name, (value, boot) in whole.items():  # the same code on the same inputs: identical
        assert value == parts[name][0] and np.array_equal(boot, parts[name][1]), name


def test_model_comparisons_include_the_between_run_variance():
    """CRS-trained against control models: one pair gives the paired bootstrap interval (generated samples only);
    several pairs (finetune_seeds) give a Student t interval from the spread of the per-seed differences."""
    from scipy.stats import t as student_t

    from crs.run.jobs import finetune_models, model_comparisons

    assert finetune_models([3, 5]) == [("crs", "control"), ("crs-s3", "control-s3"), ("crs-s5", "control-s5")]
    rng = np.random.default_rng(0)
    base = rng.normal(size=200)
    idx = bootstrap_indices(200, 500)
    # the CRS-trained runs differ from their controls by -0.2, -0.5 and +0.1: noise between runs
    shifts = {"crs": -0.2, "control": 0.0, "crs-s3": -0.5, "control-s3": 0.0, "crs-s5": 0.1, "control-s5": 0.0}
    values = {
        (m, "karras", "euler", 5, "nll"): (float((base + d).mean()), (base + d)[idx].mean(1)) for m, d in shifts.items()
    }
    one = model_comparisons({k: v for k, v in values.items() if k[0] in ("crs", "control")})
    assert len(one) == 1 and one[0]["runs"] == 1 and one[0]["covers"].startswith("generated samples")
    # paired: the common sample noise cancels, so one run's -0.2 is significant (an exact shift: a zero-width interval)
    assert one[0]["significant"] and one[0]["crs_better"] and one[0]["diff_ci_low"] == pytest.approx(-0.2)
    three = model_comparisons(values)[0]
    assert three["runs"] == 3 and three["diffs"] == pytest.approx([-0.2, -0.5, 0.1])
    half = student_t.ppf(0.975, 2) * np.std([-0.2, -0.5, 0.1], ddof=1) / np.sqrt(3)
    assert (three["diff_ci_low"], three["diff_ci_high"]) == pytest.approx((-0.2 - half, -0.2 + half))
    assert not three["significant"]  # the between-run spread is in the interval: no verdict from three runs
    assert three["covers"] == "training runs (3 seeds per model) and generated samples"


def test_row_intervals_stay_in_the_metrics_range():
    """A recall of 0 whose rare non-zero replicates raise the replicates' mean: the bias-shifted interval would lie
    below 0 and exclude the estimate; rows clip intervals to what the metric can take (KID, an unbiased MMD^2
    estimate, can be negative and is not clipped)."""
    from crs.metrics import row

    boot = np.zeros(1000)
    boot[:10] = 0.01
    r = row("m", "s", "euler", 5, "recall_identity", 0.0, boot, kind="baseline")
    assert (r["ci_low"], r["ci_high"]) == (0.0, 0.0)
    assert row("m", "s", "euler", 5, "kid_identity", 0.0, boot, kind="baseline")["ci_low"] < 0


def test_verdicts_within_monte_carlo_error_of_zero_are_at_the_edge():
    from crs.metrics import EDGE_Z, paired_interval

    rng = np.random.default_rng(1)
    base = rng.normal(size=(400,))
    idx = bootstrap_indices(400, 1000)
    for shift, edge in [(0.0, False), (-0.5, False)]:  # far from the edge: clearly n.s., clearly different
        a = base + shift + 0.3 * rng.normal(size=400)
        lo, hi, flagged, b = paired_interval(a[idx].mean(1), base[idx].mean(1), float(a.mean() - base.mean()))
        assert flagged is edge and b == 1000
    # a difference placed so that the interval's upper end sits on 0 is at the edge
    noise = rng.normal(size=400)
    diff_boot = noise[idx].mean(1)
    _, hi, _, _ = paired_interval(diff_boot, np.zeros(1000), float(noise.mean()))
    lo, hi, flagged, _ = paired_interval(diff_boot - hi, np.zeros(1000), float(noise.mean()) - hi)
    assert hi == pytest.approx(0.0, abs=1e-12) and flagged and EDGE_Z > 0
    # replicates of one index stream pair on their common prefix (an escalated set against a plain one)
    longer = bootstrap_indices(400, 4000)
    assert np.array_equal(longer[:1000], idx)
    a = base - 0.05
    lo4, hi4, _, b4 = paired_interval(a[longer].mean(1), base[longer].mean(1), -0.05)
    lo1, hi1, _, b1 = paired_interval(a[longer].mean(1), base[idx].mean(1), -0.05)
    assert (b4, b1) == (4000, 1000) and (lo1, hi1) == paired_interval(a[idx].mean(1), base[idx].mean(1), -0.05)[:2]
    result = compare(
        {"crs": (float(a.mean()), a[longer].mean(1)), "karras": (float(base.mean()), base[idx].mean(1))}, "nll"
    )
    assert result["n_boot"] == 1000 and result["edge_baselines"] == [] and not result["edge"]


def test_edge_verdicts_are_recomputed_with_more_replicates(tmp_path):
    """evaluate_grid's escalation: an edge verdict's two sample sets are scored on the further rows of the same
    index stream, so the escalated comparison equals the one of a run with escalate * n_boot replicates for every
    set (the same replicates, computed in two chunks: equal to round-off; recall's, centred on their own mean, are
    recomputed on the whole longer stream), and every other verdict is untouched."""
    from crs.run.jobs import evaluate_grid

    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(300, 2, generator=gen)
    common = torch.randn(128, 2, generator=gen)
    index = []
    for name, scale in [("crs", 1.02), ("karras", 1.0), ("vp", 1.3), ("linear", 1.05)]:
        path = tmp_path / f"{name}.pt"
        torch.save(common * scale + 0.02 * torch.randn(128, 2, generator=gen), path)
        index.append(dict(model="m", schedule=name, sampler="euler", nfe=5, path=str(path)))
    extractor = make_feature_extractor("identity")
    args = dict(n_boot=30, which=["fid", "precision", "recall"])
    plain = evaluate_grid(index, reference, extractor, escalate=1, **args)
    escalated = evaluate_grid(index, reference, extractor, escalate=4, **args)
    full = evaluate_grid(index, reference, extractor, escalate=1, **{**args, "n_boot": 120})
    assert plain["rows"] == escalated["rows"] and escalated["intervals"]["escalate"] == 4
    assert any(c["edge_baselines"] for c in plain["comparisons"])  # the data are built to have some
    for p, e, f in zip(plain["comparisons"], escalated["comparisons"], full["comparisons"]):
        if not p["edge_baselines"]:
            assert e == p
        elif p["edge"]:
            assert e["n_boot"] == 120
            assert e["diff_ci_low"] == pytest.approx(f["diff_ci_low"], rel=1e-9, abs=1e-12)
            assert e["diff_ci_high"] == pytest.approx(f["diff_ci_high"], rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError, match="escalate"):
        evaluate_grid(index, reference, extractor, escalate=0, **args)


def _role_index(tmp_path, kinds: dict) -> list[dict]:
    """A sample index of one cell whose sets lie at growing distances from the reference (``gits`` nearest, so
    the best by value); ``kinds``: ``{schedule: kind}``, None for an entry written before roles were recorded."""
    gen = torch.Generator().manual_seed(0)
    common = torch.randn(64, 2, generator=gen)
    index = []
    for name, shift in [("gits", 0.0), ("crs", 0.1), ("crsfoo", 0.2), ("karras", 0.3)]:
        path = tmp_path / f"{name}.pt"
        torch.save(common + shift, path)
        entry = dict(model="m", schedule=name, sampler="euler", nfe=5, path=str(path))
        index.append(entry if kinds[name] is None else dict(entry, kind=kinds[name]))
    return index


def test_comparisons_take_roles_from_the_kind_not_the_name(tmp_path):
    """A schedule named ``crsfoo`` of kind baseline is a baseline; a peer, however good, never a comparator; every
    row records its schedule's kind."""
    from crs.run.jobs import evaluate_grid

    kinds = {"gits": "peer", "crs": "crs", "crsfoo": "baseline", "karras": "baseline"}
    reference = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    scores = evaluate_grid(_role_index(tmp_path, kinds), reference, make_feature_extractor("identity"), which=["fid"])
    assert {(r["schedule"], r["kind"]) for r in scores["rows"]} == set(kinds.items())
    (c,) = scores["comparisons"]
    assert (c["crs"], c["n_baselines"], c["best_baseline"]) == ("crs", 2, "crsfoo")
    with pytest.raises(ValueError, match="Unknown kind of the schedule 'gits' 'searched'"):
        evaluate_grid(
            _role_index(tmp_path, {**kinds, "gits": "searched"}), reference, make_feature_extractor("identity")
        )


def test_an_index_from_before_roles_infers_them_from_the_names(tmp_path):
    """The legacy path (crs.run.jobs.kind_of): without ``kind``, names starting with ``crs`` are CRS schedules,
    ``gits``/``optimal``/``optimal-free`` peers, any other a baseline; rows then record the inferred kind, and an
    old metrics.json's rows are read the same way."""
    from crs.run.jobs import evaluate_grid, kind_of
    from crs.run.report import ratios_to_optimal

    reference = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    index = _role_index(tmp_path, dict.fromkeys(["gits", "crs", "crsfoo", "karras"]))
    scores = evaluate_grid(index, reference, make_feature_extractor("identity"), which=["fid"])
    assert {r["schedule"]: r["kind"] for r in scores["rows"]} == {
        "gits": "peer",
        "crs": "crs",
        "crsfoo": "crs",
        "karras": "baseline",
    }
    assert sorted((c["crs"], c["best_baseline"], c["n_baselines"]) for c in scores["comparisons"]) == [
        ("crs", "karras", 1),
        ("crsfoo", "karras", 1),
    ]
    assert [kind_of({"schedule": s}) for s in ("optimal", "optimal-free", "crs-select", "vp")] == [
        "peer",
        "peer",
        "crs",
        "baseline",
    ]
    assert kind_of({"schedule": "crsfoo", "kind": "baseline"}) == "baseline"  # a recorded kind wins over the name
    values = {"optimal": 1.0, "crs": 1.5, "crsfoo": 2.0, "karras": 3.0}
    old = [
        dict(model="m", schedule=s, sampler="euler", nfe=5, metric="teacher_error", value=v) for s, v in values.items()
    ]
    (cell,) = ratios_to_optimal({"rows": old})
    assert cell["best_baseline"] == "karras" and cell["kinds"]["crsfoo"] == "crs"
    roles = {"optimal": "peer", "crs": "crs", "crsfoo": "baseline", "karras": "baseline"}
    (cell,) = ratios_to_optimal({"rows": [dict(r, kind=roles[r["schedule"]]) for r in old]})
    assert cell["best_baseline"] == "crsfoo"  # of kind baseline: the best baseline despite its name


def test_sample_grid_records_each_schedules_kind(tmp_path):
    """The sample index carries the role each schedule was made with; a schedule without one is refused before any
    work."""
    from crs.optimize import schedule_functions, schedule_kinds
    from crs.run.jobs import sample_grid

    data = crs.make_dataset("gmm")
    schedule = crs.Schedule.from_baseline("karras", 0.002, 80.0)
    schedules = {**schedule_functions(schedule, ["vp"]), "crsfoo": schedule_functions(schedule, ["karras"])["karras"]}
    kinds = {**schedule_kinds(["vp"]), "crsfoo": "baseline"}
    args = (["euler"], [3], 4, tmp_path)
    index = sample_grid({"analytic": data.denoiser}, schedules, *args, kinds=kinds)
    assert {e["schedule"]: e["kind"] for e in index} == {"crs": "crs", "vp": "baseline", "crsfoo": "baseline"}
    with pytest.raises(ValueError, match=r"No kind for the schedule\(s\) \['crsfoo'\]"):
        sample_grid({"analytic": data.denoiser}, schedules, *args, kinds=schedule_kinds(["vp"]))
    with pytest.raises(ValueError, match="Unknown kind of the schedule 'crsfoo' 'fixed'"):
        sample_grid({"analytic": data.denoiser}, schedules, *args, kinds={**kinds, "crsfoo": "fixed"})


@pytest.mark.parametrize("n,f", [(300, 12), (40, 60)])
def test_linear_fid_replicates_are_the_first_order_expansion_of_fid(n, f):
    """`fid_bootstrap(method="linear")`: the value is the exact FID, and the influence h_i behind each replicate
    is FID's derivative along the row weights. Checked against a central difference of the exact FID of weighted
    rows (weights 1 + e d, sum(d) = 0), at two step sizes: the difference's error is O(e^2), so a tolerance of
    1e-6 relative leaves round-off (1e-12 relative in the FID, divided by e = 1e-4) a factor 100 of room. Both
    routes: more rows than features (the F x F problem) and fewer (the Gram matrix)."""
    import crs.distances as distances
    from crs.distances import frechet_from_traces, trace_sqrt_psd

    rng = np.random.default_rng(5)
    gen = rng.standard_normal((n, f)) * np.linspace(0.5, 1.5, f) + 0.2
    mu, cov = np.full(f, 0.3), np.diag(np.linspace(0.8, 1.6, f)) + 0.05
    idx = np.random.default_rng(6).integers(0, n, (50, n))
    exact, _ = fid_bootstrap(gen, mu, cov, idx, method="exact")
    value, linear = fid_bootstrap(gen, mu, cov, idx, method="linear")
    assert value == pytest.approx(exact, rel=1e-9)
    # h up to a constant: the replicate of row i drawn twice and row 0 not at all is FID + h_i - h_0
    swaps = np.tile(np.arange(n), (n, 1))
    swaps[:, 0] = np.arange(n)
    _, moved = fid_bootstrap(gen, mu, cov, swaps, method="linear")
    h = moved - value
    d = rng.standard_normal(n)
    d -= d.mean()  # so d @ h does not depend on the constant
    root = distances._sqrtm_psd(cov)

    def weighted(w):  # exact FID of the rows weighted by w (sum n), the cross term from the smaller Gram side
        m = w @ gen / n
        y = np.sqrt(w)[:, None] * ((gen - m) @ root)
        if n > f:
            cross = trace_sqrt_psd(y.T @ y / (n - 1))
        else:  # rank n - 1 (centred rows): the one zero eigenvalue left out, or sqrt of its round-off adds 1e-8
            cross = float(np.sqrt(np.linalg.eigvalsh(y @ y.T / (n - 1))[1:]).sum())
        tr_c = float(w @ ((gen - m) ** 2).sum(1)) / (n - 1)
        return frechet_from_traces(((m - mu) ** 2).sum(), tr_c, np.trace(cov), cross)

    for eps in (1e-4, 3e-5):
        slope = (weighted(1 + eps * d) - weighted(1 - eps * d)) / (2 * eps)
        assert slope == pytest.approx(d @ h, rel=1e-6, abs=1e-9 * value), eps


def test_auto_fid_bootstrap_linearises_only_above_its_budget(monkeypatch):
    """`auto` is exact for the suite's CPU sizes (the demo's 256 x 1280, 1000 replicates) and linear for 50,000 x
    2048 Inception features; a tall sample's linear replicates track the exact ones (the dropped second-order
    terms are O(F / n) of the spread: 2000 rows of 16 features, correlation above 0.95, spread within 10 %)."""
    import crs.distances as distances

    assert distances.fid_bootstrap_cost(256, 1280, 1000) < distances.EXACT_FID_BUDGET
    assert distances.fid_bootstrap_cost(50_000, 2048, 1000) > 10 * distances.EXACT_FID_BUDGET
    rng = np.random.default_rng(7)
    gen = rng.standard_normal((2000, 16))
    mu, cov = np.full(16, 0.3), 1.5 * np.eye(16)
    idx = np.random.default_rng(8).integers(0, 2000, (200, 2000))
    value, exact = fid_bootstrap(gen, mu, cov, idx)
    linear_value, linear = fid_bootstrap(gen, mu, cov, idx, method="linear")
    assert np.corrcoef(exact, linear)[0, 1] > 0.95
    assert np.std(linear) == pytest.approx(np.std(exact), rel=0.1)
    monkeypatch.setattr(distances, "EXACT_FID_BUDGET", 0.0)
    auto = fid_bootstrap(gen, mu, cov, idx)
    assert auto[0] == linear_value and np.array_equal(auto[1], linear)  # the same code path: bit for bit
    assert auto[0] == pytest.approx(value, rel=1e-12)  # the exact value by another route (sums in another order)
    with pytest.raises(ValueError, match="Unknown FID bootstrap 'fast'"):
        fid_bootstrap(gen, mu, cov, idx, method="fast")


def test_recall_replicates_with_few_distinct_rows_take_the_full_computation():
    """A replicate drawing few distinct rows leaves some row with fewer than k drawn rows among its L nearest
    (L = 4k + 16 = 28 here): recall_bootstrap then computes that replicate from scratch. Checked against the
    brute-force recall of the distinct rows, with the same rescaling as every replicate (equal to round-off)."""
    rng = np.random.default_rng(6)
    gen, ref = rng.normal(size=(300, 2)), rng.normal(size=(200, 2))
    sparse = np.repeat(np.arange(0, 300, 30), 30)  # 10 distinct rows, far apart in index order
    idx = np.vstack([bootstrap_indices(300, 3, seed=1), sparse[None]])
    value, boot = recall_bootstrap(gen, ref, idx, k=3)
    kept = [np.unique(rows) for rows in idx]
    raw = np.array([_inside(ref, gen[u], _knn_radii(gen[u], 3)).mean() for u in kept])
    sizes = np.array([len(u) for u in kept])
    np.testing.assert_allclose(boot, value + np.sqrt(sizes / (300 - sizes)) * (raw - raw.mean()), rtol=1e-12)


def test_sliced_wasserstein_replicates_without_sorting_each_resample():
    """A bootstrap resample sorted is each sorted row repeated by its count: the replicates computed that way
    equal those of sorting every resample (the same numbers, summed in another order: 1e-12 relative)."""
    from crs.metrics import _sliced_wasserstein

    rng = np.random.default_rng(8)
    x, ref = torch.from_numpy(rng.normal(size=(200, 2))), torch.from_numpy(1.2 * rng.normal(size=(150, 2)))
    idx = bootstrap_indices(200, 20, seed=3)
    value, fast = _sliced_wasserstein(x, ref, idx, 0, 32)
    same, slow = _sliced_wasserstein(x, ref, list(idx), 0, 32)  # rows one by one: each resample sorted
    assert value == same
    np.testing.assert_allclose(fast, slow, rtol=1e-12)


def test_mode_tv_replicates_are_m_out_of_n():
    """Mode TV's replicates: the TV of the first m = n^(2/3) rows of each resample (40 of 256), their deviations
    from their mean scaled by sqrt(m / n) and centred on the estimate (the same arithmetic: 1e-12 relative)."""
    from crs.metrics import _mode_tv

    data = crs.make_dataset("gmm")
    x = 1.15 * data.sample(256, torch.Generator().manual_seed(3)).double()
    idx = bootstrap_indices(256, 50, seed=4)
    value, boot = _mode_tv(x, data, idx)
    share = np.bincount(data.assign(x).numpy(), minlength=len(data.weights))
    weights = data.weights.numpy()
    assert value == pytest.approx(0.5 * np.abs(share / 256 - weights).sum(), rel=1e-12)
    raw = np.array(
        [
            0.5 * np.abs(np.bincount(data.assign(x[r[:40]]).numpy(), minlength=len(weights)) / 40 - weights).sum()
            for r in idx
        ]
    )
    np.testing.assert_allclose(boot, value + np.sqrt(40 / 256) * (raw - raw.mean()), rtol=1e-12, atol=1e-15)
