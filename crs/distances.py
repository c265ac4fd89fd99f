"""The Frechet distance between Gaussians: the one definition every FID in ``crs`` uses.

``FID = |mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2)`` (Heusel et al. 2017;
Dowson and Landau 1982 for the Frechet distance of Gaussians), the squared Frechet distance. This is the
bottom layer, as ``frechet_distance`` is in clean-fid's ``fid.py``: pure numpy, no features, no files.
:func:`frechet_from_traces` assembles the formula; the callers differ only in how they get the trace of the
cross term (from covariances, from a cross-Gram matrix when there are fewer samples than features, or from
resampled rows in the bootstrap of :mod:`crs.metrics`).
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = [
    "FID_BOOTSTRAPS",
    "fid_bootstrap",
    "fid_bootstrap_cost",
    "fid_from_features",
    "fid_from_stats",
    "frechet_from_traces",
    "trace_sqrt_psd",
]


def frechet_from_traces(mean_sq: float, tr_cov1: float, tr_cov2: float, tr_cross_root: float) -> float:
    """``|mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2)``, clipped at 0 against round-off."""
    return max(float(mean_sq) + float(tr_cov1) + float(tr_cov2) - 2.0 * float(tr_cross_root), 0.0)


def trace_sqrt_psd(matrix: np.ndarray) -> float:
    """``tr(M^1/2)`` of a symmetric positive semi-definite matrix (eigenvalues below 0 from round-off count as 0)."""
    m = np.asarray(matrix, dtype=np.float64)
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (m + m.T)), 0, None)).sum())


def _sqrtm_psd(cov: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


_REF_SQRT: dict = {}  # the last reference covariance's square root: every sample set of an evaluation shares it


def _ref_sqrt(cov: np.ndarray) -> np.ndarray:
    """:func:`_sqrtm_psd` of a reference covariance, remembered for the next call with the same matrix (an
    eigendecomposition of 1280 x 1280 costs about 0.3 s here; an evaluation asks for it once per sample set)."""
    key = (cov.shape, hashlib.blake2b(np.ascontiguousarray(cov).tobytes(), digest_size=16).hexdigest())
    if key not in _REF_SQRT:
        _REF_SQRT.clear()
        _REF_SQRT[key] = _sqrtm_psd(cov)
    return _REF_SQRT[key]


def fid_from_stats(mu1, cov1, mu2, cov2) -> float:
    """FID (the squared Frechet distance) between N(mu1, cov1) and N(mu2, cov2).

    Symmetric eigendecompositions (stable for singular covariances); the same value as
    ``cleanfid.fid.frechet_distance`` (a test checks it).
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    root1 = _sqrtm_psd(cov1)
    cross = trace_sqrt_psd(root1 @ cov2 @ root1)
    return frechet_from_traces(((mu1 - mu2) ** 2).sum(), np.trace(cov1), np.trace(cov2), cross)


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between the Gaussian fits of two feature sets (N1, F) and (N2, F).

    With at least as many samples as features this is :func:`fid_from_stats`. With fewer (image
    features), ``tr((C1^1/2 C2 C1^1/2)^1/2)`` is the nuclear norm of the centred cross-Gram matrix
    ``X1 X2^T / sqrt((N1-1)(N2-1))``: exact, at the cost of an N1 x N2 SVD instead of F x F eigenproblems.
    """
    n1, n2 = len(f1) - 1, len(f2) - 1
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = f1 - mu1, f2 - mu2
    if f1.shape[1] <= min(n1, n2):
        return fid_from_stats(mu1, c1.T @ c1 / n1, mu2, c2.T @ c2 / n2)
    nuclear = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / np.sqrt(n1 * n2)
    return frechet_from_traces(((mu1 - mu2) ** 2).sum(), (c1 * c1).sum() / n1, (c2 * c2).sum() / n2, nuclear)


FID_BOOTSTRAPS = ("auto", "exact", "linear")
EXACT_FID_BUDGET = 5e12  # floating-point operations above which "auto" linearises (minutes on a 2-core CPU)


def fid_bootstrap_cost(n: int, f: int, n_boot: int) -> float:
    """Floating-point operations of ``n_boot`` exact FID replicates of ``n`` rows of ``F = f`` features (about):
    a replicate's cross matrix (``n F^2`` with more rows than features, the Gram rows otherwise) and its
    eigenvalue problem (``4 r^3`` for its size ``r``: ``F``, or the about ``0.63 n`` distinct rows drawn)."""
    if f > n:
        return float(n_boot) * (n * n + 4 * (0.63 * n) ** 3)
    return float(n_boot) * (n * f * f + 4.0 * f**3)


def fid_bootstrap(
    gen: np.ndarray,
    ref_mu: np.ndarray,
    ref_cov: np.ndarray,
    idx: np.ndarray,
    chunk: int = 64,
    method: str = "auto",
) -> tuple[float, np.ndarray]:
    """FID of generated features (n, F) against reference statistics, and its bootstrap replicates.

    ``idx`` (B, n) holds resampled row indices (or any sequence of row-index arrays, e.g. a jackknife's). A
    replicate is the FID of the resampled rows, computed from their counts ``w`` (how often each original row
    was drawn) instead of the rows themselves, exactly (``n = sum_i w_i``):

    * mean ``m = w X / n`` and ``tr(C) = (sum_i w_i |x_i|^2 - n |m|^2) / (n - 1)``;
    * the cross term ``tr((R C R)^1/2)`` with ``R = ref_cov^1/2`` (computed once). With fewer rows than
      features it is the trace root of ``D^1/2 (I - 1 w^T/n) K (I - w 1^T/n) D^1/2 / (n - 1)`` over the rows
      drawn at least once, ``D = diag(w)``, where ``K`` is the Gram matrix of the rows ``R x_i`` (computed
      once); otherwise of the weighted F x F covariance of those rows.

    So a replicate costs one eigenvalue problem of the size of the distinct rows drawn (about 0.63 n), taken
    ``chunk`` at a time (zero-padded: padding adds zero eigenvalues), and 1000 replicates of 256 x 1280
    features take about a second. The rows are centred on their mean first (FID is translation-invariant),
    which keeps the moment formulas free of cancellation.

    ``method="linear"`` replaces each replicate by FID's first-order expansion in the counts (the delta method,
    or the linearised bootstrap; Efron and Tibshirani 1993, section 21.3): ``FID + sum_i (w_i - 1) h_i`` with
    the influence of row ``i``

        ``h_i = -2 (mu_ref - m) . (x_i - m) / n + (|x_i - m|^2 - p_i^T M^{+1/2} p_i) / (n - 1)``,

    ``p_i = R (x_i - m)``, ``M = R C R`` (the derivative of ``tr(M^1/2)`` is ``M^{-1/2} / 2``; the rows lie in
    the range of ``M``, so its pseudo-inverse is exact). One pass over the rows and one eigenvalue problem, then
    a (B, n) x (n,) product: 1000 replicates of 50,000 x 2048 Inception features cost what one exact replicate
    does (about 2e11 operations). It drops the second-order terms, hence the bootstrap's extra bias and the
    skewness that the shifted interval uses: its coverage is measured apart (README, "Measured: interval
    coverage"). ``"auto"`` (the default) is exact unless :func:`fid_bootstrap_cost` exceeds
    :data:`EXACT_FID_BUDGET`; the value is exact either way.

    Returns:
        ``(fid of all rows, fid of each replicate (B,))``.
    """
    if method not in FID_BOOTSTRAPS:
        raise ValueError(f"Unknown FID bootstrap {method!r}; expected one of {', '.join(FID_BOOTSTRAPS)}.")
    gen = np.asarray(gen, dtype=np.float64)
    n, f = gen.shape
    if method == "auto":
        method = "linear" if fid_bootstrap_cost(n, f, len(idx)) > EXACT_FID_BUDGET else "exact"
    shift = gen.mean(0)
    x = gen - shift
    d_mu = np.asarray(ref_mu, dtype=np.float64) - shift
    proj = x @ _ref_sqrt(np.asarray(ref_cov, dtype=np.float64))  # (n, F): rows R x_i
    tr_ref = float(np.trace(ref_cov))
    sq = (x * x).sum(1)
    wide = f > n  # the cross term through the n x n Gram matrix
    gram = proj @ proj.T if wide else None

    def moments(w: np.ndarray) -> tuple[float, float]:
        nw = w.sum()
        m = w @ x / nw
        return float(((m - d_mu) ** 2).sum()), float((w @ sq - nw * (m @ m)) / (nw - 1))

    def cross_matrix(w: np.ndarray) -> np.ndarray:
        nw = w.sum()
        if not wide:
            m = w @ proj / nw
            return ((proj * w[:, None]).T @ proj - nw * np.outer(m, m)) / (nw - 1)
        u = np.flatnonzero(w)
        wu = w[u]
        ku = gram[np.ix_(u, u)]
        a = ku @ wu / nw
        kc = ku - a[:, None] - a[None, :] + (wu @ a) / nw
        s = np.sqrt(wu)
        return s[:, None] * kc * s[None, :] / (nw - 1)

    def trace_roots(mats: list[np.ndarray]) -> np.ndarray:
        size = max(len(m) for m in mats)
        stack = np.zeros((len(mats), size, size))
        for i, m in enumerate(mats):
            stack[i, : len(m), : len(m)] = 0.5 * (m + m.T)
        return np.sqrt(np.clip(np.linalg.eigvalsh(stack), 0, None)).sum(1)

    def fids(weights: np.ndarray) -> np.ndarray:
        out = np.empty(len(weights))
        for start in range(0, len(weights), chunk):
            block = weights[start : start + chunk]
            roots = trace_roots([cross_matrix(w) for w in block])
            for i, (w, root) in enumerate(zip(block, roots)):
                mean_sq, tr_c = moments(w)
                out[start + i] = frechet_from_traces(mean_sq, tr_c, tr_ref, root)
        return out

    counts = np.array([np.bincount(np.asarray(r), minlength=n) for r in idx], dtype=np.float64).reshape(-1, n)
    if method == "linear":
        value, influence = _fid_influence(x, proj, d_mu, tr_ref, sq, gram)
        return value, np.maximum(value + (counts - 1.0) @ influence, 0.0)  # counts of n rows: sum(w - 1) = 0
    value = float(fids(np.ones((1, n)))[0])
    return value, fids(counts)


def _fid_influence(x, proj, d_mu, tr_ref, sq, gram) -> tuple[float, np.ndarray]:
    """FID of centred rows ``x`` and each row's influence ``h_i`` (see :func:`fid_bootstrap`, ``linear``)."""
    n = len(x)
    if gram is not None:  # p_i^T M^{+1/2} p_i = sqrt(n - 1) (K^1/2)_ii for the Gram matrix K of the rows p_i
        lam, v = np.linalg.eigh(0.5 * (gram + gram.T))
        root = np.sqrt(np.clip(lam, 0, None))
        cross = float(root.sum()) / np.sqrt(n - 1)
        q = np.sqrt(n - 1) * (v * v) @ root
    else:
        lam, u = np.linalg.eigh(proj.T @ proj / (n - 1))
        lam = np.clip(lam, 0, None)
        keep = lam > lam.max() * 1e-12  # the range of M (zero eigenvalues: directions no row has)
        z = proj @ (u[:, keep] * lam[keep] ** -0.25)
        cross = float(np.sqrt(lam).sum())
        q = (z * z).sum(1)
    value = frechet_from_traces(float(d_mu @ d_mu), float(sq.sum()) / (n - 1), tr_ref, cross)
    return value, -2.0 * (x @ d_mu) / n + (sq - q) / (n - 1)
