"""The Frechet distance between Gaussians: the one definition every FID in ``crs`` uses.

``FID = |mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2)`` (Heusel et al. 2017;
Dowson and Landau 1982 for the Frechet distance of Gaussians), the squared Frechet distance. This is the
bottom layer, as ``frechet_distance`` is in clean-fid's ``fid.py``: pure numpy, no features, no files.
:func:`frechet_from_traces` assembles the formula; the callers differ only in how they get the trace of the
cross term (from covariances, from a cross-Gram matrix when there are fewer samples than features, or from
resampled rows in the bootstrap of :mod:`crs.metrics`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["fid_bootstrap", "fid_from_features", "fid_from_stats", "frechet_from_traces", "trace_sqrt_psd"]


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


def fid_bootstrap(
    gen: np.ndarray, ref_mu: np.ndarray, ref_cov: np.ndarray, idx: np.ndarray
) -> tuple[float, np.ndarray]:
    """FID of generated features (n, F) against reference statistics, and its bootstrap replicates.

    ``idx`` (B, n) holds resampled row indices. The cross term is ``tr((R C R)^1/2)`` with ``R = ref_cov^1/2``,
    taken through the n x n Gram matrix of the rows ``R x_i`` when there are fewer rows than features: exact,
    and cheap for every replicate because ``R`` is computed once.

    Returns:
        ``(fid of all rows, fid of each replicate (B,))``.
    """
    proj = gen @ _sqrtm_psd(np.asarray(ref_cov, dtype=np.float64))  # (n, F): rows R x_i
    tr_ref = float(np.trace(ref_cov))

    def fid(rows: np.ndarray) -> float:
        x, p = gen[rows], proj[rows]
        mu = x.mean(0)
        xc, pc = x - mu, p - p.mean(0)
        n = len(rows) - 1
        gram = (pc @ pc.T) / n if len(rows) < gen.shape[1] else (pc.T @ pc) / n
        return frechet_from_traces(((mu - ref_mu) ** 2).sum(), (xc * xc).sum() / n, tr_ref, trace_sqrt_psd(gram))

    return fid(np.arange(len(gen))), np.array([fid(r) for r in idx])
