"""Analytic datasets with exact denoisers, and closed-form rates for Gaussian data.

These are the ground truth of the project: a Gaussian mixture has an exact denoiser
(responsibilities times per-component linear denoisers) and exact samples of every noised
marginal ``p_sigma``, so every estimate in :mod:`crs.measures` and :mod:`crs.rate` can be checked
against an exact answer before any neural network is involved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from crs.args import check_int
from crs.schedules import sigma_to_alpha

__all__ = [
    "ANALYTIC",
    "ExactDenoiser",
    "GaussianMixture",
    "fid_discrepancy",
    "gaussian",
    "gaussian_discrepancy",
    "gaussian_local_error",
    "gaussian_velocity",
    "gmm",
]


ANALYTIC = ("gaussian", "gmm")  # the analytic datasets (crs.make_dataset names): exact denoisers and samples


class ExactDenoiser:
    """The exact denoiser of an analytic dataset, as a :class:`crs.protocols.Denoiser`.

    It has no noise range of its own (any schedule goes), denoises the data space itself, computes in
    float64 on the CPU and returns on the input's device; ``.to`` and ``.eval`` return it unchanged.
    """

    sigma_min = sigma_max = None
    sigma_data = 0.5  # EDM's weighting constant, used only to weight losses measured against this denoiser
    is_latent = False

    def __init__(self, data: GaussianMixture):
        self.data = data

    @property
    def conditioning(self):
        """A labelled mixture's classes (:class:`crs.conditioning.Conditioning`, null label ``num_classes``): the
        exact conditional denoiser ``E[x0 | x, c]``; None for an unlabelled mixture."""
        if self.data.labels is None:
            return None
        from crs.conditioning import Conditioning

        return Conditioning("labels", self.data.num_classes, self.data.num_classes)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __call__(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, dim), sigma scalar or (B,) -> exact D(x; sigma), float64 on the device of ``x``; with ``cond``
        (labels (B,), a labelled mixture only) the exact ``E[x0 | x, c]``, the null label giving ``D(x; sigma)``."""
        return self.data.posterior_mean(x, sigma, cond)

    def decode(self, latents: torch.Tensor, batch_size: int = 64, quantize: bool = True) -> torch.Tensor:
        raise ValueError("The exact denoiser works on the data itself: there is nothing to decode.")

    def to(self, *args, **kwargs) -> ExactDenoiser:
        return self

    def eval(self) -> ExactDenoiser:
        return self

    def __repr__(self) -> str:
        return f"ExactDenoiser({self.data!r})"


class GaussianMixture:
    """Isotropic Gaussian mixture ``sum_k w_k N(m_k, s_k^2 I_dim)`` with its exact denoiser.

    Args:
        means: component means, shape (K, dim).
        stds: per-component standard deviations, K positive values.
        weights: mixture weights, K non-negative values (normalised here).
        name: dataset name recorded in artifacts.
        labels: a class label per component (``0 .. C - 1``), or None: a labelled mixture is class-conditional data
            (``p(x | c)`` is the mixture of class ``c``'s components), with exact conditional denoisers.

    All computations are float64. ``denoiser(x, sigma)`` is the exact x0-prediction
    ``E[x0 | x0 + sigma * eps = x]``; for a labelled mixture ``denoiser(x, sigma, c)`` is ``E[x0 | x, c]``.
    """

    def __init__(self, means, stds, weights, name: str = "gmm", labels: Sequence[int] | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"`means` must have shape (components, dim), got {tuple(means.shape)}.")
        k = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1).expand(k).clone()
        weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if weights.shape[0] != k:
            raise ValueError(f"`weights` needs {k} values (one per component), got {weights.shape[0]}.")
        if not bool(torch.all(stds > 0)) or not bool(torch.all(torch.isfinite(stds))):
            raise ValueError(f"`stds` must be positive and finite, got {stds.tolist()}.")
        if not bool(torch.all(weights >= 0)) or float(weights.sum()) <= 0:
            raise ValueError(f"`weights` must be non-negative with a positive sum, got {weights.tolist()}.")
        if not bool(torch.all(torch.isfinite(means))):
            raise ValueError("`means` must be finite.")
        self.means, self.stds, self.weights, self.name = means, stds, weights / weights.sum(), name
        self.labels = self.num_classes = None
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
            c = int(labels.max()) + 1 if len(labels) else 0
            if labels.shape[0] != k or bool((labels < 0).any()) or set(labels.tolist()) != set(range(c)):
                raise ValueError(f"`labels` needs one class per component ({k}), the classes 0..C-1 each used.")
            self.labels, self.num_classes = labels, c
        self.denoiser = ExactDenoiser(self)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return (self.dim,)

    @property
    def mean(self) -> torch.Tensor:
        """Mean of the data distribution, shape (dim,)."""
        return self.weights @ self.means

    @property
    def cov(self) -> torch.Tensor:
        """Covariance of the data distribution, (dim, dim): sum_k w_k (s_k^2 I + m_k m_k^T) - mean mean^T."""
        second = torch.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        second = second + (self.weights * self.stds**2).sum() * torch.eye(self.dim, dtype=torch.float64)
        return second - torch.outer(self.mean, self.mean)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` exact samples of the data, float64 tensor (n, dim)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[comp] + self.stds[comp, None] * noise

    def sample_labeled(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` exact samples and their classes: ``(x (n, dim) float64, labels (n,) int64)``; ``x`` is what
        :meth:`sample` draws with the same generator."""
        if self.labels is None:
            raise ValueError(f"The mixture {self.name!r} has no class labels (give `labels`).")
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[comp] + self.stds[comp, None] * noise, self.labels[comp]

    def label_shares(self) -> torch.Tensor:
        """Each class's probability, (C,) float64."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self.labels, self.weights)

    def sample_noised(self, n: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
        """``n`` exact samples of ``p_sigma`` (VE: x0 + sigma * eps), float64 (n, dim)."""
        x0 = self.sample(n, generator)
        return x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)

    def _log_joint(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None):
        """Per-component log w_k N(x; m_k, (s_k^2 + sigma^2) I) and the variances, each (B, K); with ``cond`` (B,)
        the components of other classes get weight 0 (log -inf) in each row, except rows with the null label."""
        var = self.stds[None, :] ** 2 + sigma[:, None] ** 2
        sq = (x * x).sum(1, keepdim=True) - 2.0 * x @ self.means.T + (self.means * self.means).sum(1)[None, :]
        logp = (
            torch.log(self.weights)[None, :]
            - 0.5 * sq.clamp_min(0.0) / var
            - 0.5 * self.dim * torch.log(2 * math.pi * var)
        )
        if cond is not None:
            cond = self.denoiser.conditioning.labels(cond, x.shape[0])
            other = (self.labels[None, :] != cond[:, None]) & (cond[:, None] != self.num_classes)
            logp = logp.masked_fill(other, -math.inf)
        return logp, var

    def _as_batch(self, x: torch.Tensor, sigma) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 CPU copies (the mixture's parameters live on the CPU): x (B, dim), sigma (B,)."""
        x = torch.as_tensor(x, dtype=torch.float64).cpu()
        sigma = torch.as_tensor(sigma, dtype=torch.float64).cpu().reshape(-1).expand(x.shape[0])
        return x, sigma

    def posterior_mean(self, x: torch.Tensor, sigma, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Exact x0-prediction ``D(x; sigma) = E[x0 | x0 + sigma eps = x]`` (what :attr:`denoiser` calls).

        Args:
            x: noised samples (B, dim).
            sigma: scalar or (B,) noise levels (sigma = 0 returns x).
            cond: class labels (B,) of a labelled mixture: ``E[x0 | x, c]`` (the null label ``num_classes``: the
                unconditional mean); None: unconditional.

        Returns:
            float64 tensor (B, dim) on the device of ``x`` (computed on the CPU).
        """
        device = torch.as_tensor(x).device
        x, sigma = self._as_batch(x, sigma)
        if cond is not None and self.labels is None:
            raise ValueError(f"The mixture {self.name!r} has no class labels: its denoiser takes no conditions.")
        logp, var = self._log_joint(x, sigma, cond)
        resp = torch.softmax(logp, dim=1)  # (B, K)
        shrink = self.stds[None, :] ** 2 / var  # (B, K): per-component linear denoiser slope
        # sum_k r_k [m_k + c_k (x - m_k)] = (sum_k r_k c_k) x + sum_k r_k (1 - c_k) m_k
        return ((resp * shrink).sum(1, keepdim=True) * x + (resp * (1.0 - shrink)) @ self.means).to(device)

    def eps_prediction(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Exact eps-prediction ``(x - D(x; sigma)) / sigma`` (sigma > 0), float64 (B, dim) on the device of ``x``."""
        device = torch.as_tensor(x).device
        x, sigma = self._as_batch(x, sigma)
        return ((x - self.posterior_mean(x, sigma)) / sigma[:, None]).to(device)

    def assign(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """Index of the most responsible component for each sample (B,), int64."""
        x, sigma = self._as_batch(x, sigma)
        return self._log_joint(x, sigma)[0].argmax(1)

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """Exact log-density of ``p_sigma`` at ``x`` (B, dim) -> (B,)."""
        x, sigma = self._as_batch(x, sigma)
        logp, _ = self._log_joint(x, sigma)
        return torch.logsumexp(logp, dim=1)

    def kwargs(self) -> dict:
        """The constructor arguments as JSON-serialisable values."""
        out = {"means": self.means.tolist(), "stds": self.stds.tolist(), "weights": self.weights.tolist()}
        return out if self.labels is None else {**out, "labels": self.labels.tolist()}

    def __repr__(self) -> str:
        return f"GaussianMixture(name={self.name!r}, dim={self.dim}, components={len(self.weights)})"


def gmm(
    dim: int = 2,
    weights: Sequence[float] | None = None,
    means: Sequence[Sequence[float]] | None = None,
    stds: float | Sequence[float] = 0.2,
    n_components: int = 8,
    radius: float = 2.0,
    labels: Sequence[int] | None = None,
) -> GaussianMixture:
    """A Gaussian mixture; by default 8 equal components on a circle of radius 2, std 0.2.

    Args:
        dim: data dimension (the default ring lies in the first two coordinates; dim >= 1).
        weights: K mixture weights (default equal).
        means: K x dim component means (default: ``n_components`` points on a circle of ``radius``).
        stds: one std for all components, or K values.
        n_components, radius: shape of the default ring when ``means`` is not given.
        labels: a class per component for class-conditional data (e.g. ``[0, 1] * 4``: two classes of alternate
            components on the ring), or None.
    """
    check_int("dim", dim, 1)
    if means is None:
        angle = 2 * math.pi * torch.arange(n_components, dtype=torch.float64) / n_components
        means = torch.zeros(n_components, dim, dtype=torch.float64)
        means[:, 0] = radius * torch.cos(angle)
        if dim > 1:
            means[:, 1] = radius * torch.sin(angle)
    means = torch.as_tensor(means, dtype=torch.float64)
    if means.ndim != 2 or means.shape[1] != dim:
        raise ValueError(f"`means` must have shape (components, {dim}), got {tuple(means.shape)}.")
    k = means.shape[0]
    weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else weights
    return GaussianMixture(means, stds, weights, name="gmm", labels=labels)


def gaussian(dim: int = 2, mean: float | Sequence[float] = 0.0, std: float = 1.0) -> GaussianMixture:
    """Gaussian data ``N(mean, std^2 I_dim)`` (a one-component mixture).

    Args:
        dim: data dimension.
        mean: a scalar (the same in every coordinate) or ``dim`` values.
        std: the standard deviation, positive.
    """
    check_int("dim", dim, 1)
    mu = torch.as_tensor(mean, dtype=torch.float64).reshape(-1).expand(dim).clone()
    return GaussianMixture(mu[None, :], [std], [1.0], name="gaussian")


# ----------------------------------------------------------------------------- closed forms
def fid_discrepancy(data: GaussianMixture, sigma_a, sigma_b) -> torch.Tensor:
    """Exact population ``fid`` discrepancy of any analytic dataset (identity features).

    The Gaussian fit of ``alpha * (x0 + sigma * eps)`` has mean ``alpha * mu`` and covariance
    ``alpha^2 (C + sigma^2 I)`` with the data's own mean ``mu`` and covariance ``C``, so the
    Frechet distance between two levels is exact for mixtures too. Returns float64 of the
    broadcast shape of ``sigma_a`` and ``sigma_b``.
    """
    from crs.distances import fid_from_stats

    sa, sb = torch.broadcast_tensors(
        torch.as_tensor(sigma_a, dtype=torch.float64), torch.as_tensor(sigma_b, dtype=torch.float64)
    )
    mu, cov, eye = data.mean.numpy(), data.cov.numpy(), torch.eye(data.dim, dtype=torch.float64).numpy()
    out = []
    for a, b in zip(sa.reshape(-1).tolist(), sb.reshape(-1).tolist()):
        aa, ab = float(sigma_to_alpha(a)), float(sigma_to_alpha(b))
        out.append(fid_from_stats(aa * mu, aa**2 * (cov + a**2 * eye), ab * mu, ab**2 * (cov + b**2 * eye)) ** 0.5)
    return torch.tensor(out, dtype=torch.float64).reshape(sa.shape)


def _gaussian_terms(measure: str, sigma: torch.Tensor, std: float):
    """For Gaussian data the prediction at level sigma is ``const + a(sigma) (x0 - mu) + b(sigma) eps``.

    Returns ``(a, b)``; the exact RMS difference between two levels follows (gaussian_discrepancy).
    """
    s2 = std**2
    if measure == "data":  # D = mu + s^2/(s^2+sigma^2) (x0 - mu + sigma eps)
        c = s2 / (s2 + sigma**2)
        return c, c * sigma
    if measure == "noise":  # eps_hat = sigma/(s^2+sigma^2) (x0 - mu) + sigma^2/(s^2+sigma^2) eps
        return sigma / (s2 + sigma**2), sigma**2 / (s2 + sigma**2)
    raise ValueError(f"Unknown measure {measure!r}; valid choices: fid, data, noise.")


def gaussian_discrepancy(measure: str, sigma_a, sigma_b, mean=0.0, std: float = 1.0, dim: int = 2) -> torch.Tensor:
    """Exact population discrepancy between the levels ``sigma_a`` and ``sigma_b`` for Gaussian data.

    ``data``/``noise``: the root-mean-square (over samples and dimensions, common x0 and eps) of the
    difference of the exact predictions. ``fid``: the Frechet distance (square root of FID) between
    the VP-scaled marginals ``alpha * x_sigma ~ N(alpha mu, alpha^2 (s^2 + sigma^2) I)``.
    """
    sa = torch.as_tensor(sigma_a, dtype=torch.float64)
    sb = torch.as_tensor(sigma_b, dtype=torch.float64)
    mu = torch.as_tensor(mean, dtype=torch.float64).reshape(-1).expand(dim)
    mean_sq = float((mu**2).sum())
    if measure == "fid":
        aa, ab = sigma_to_alpha(sa), sigma_to_alpha(sb)
        ga, gb = aa * torch.sqrt(std**2 + sa**2), ab * torch.sqrt(std**2 + sb**2)
        return torch.sqrt(mean_sq * (aa - ab) ** 2 + dim * (ga - gb) ** 2)
    (a1, b1), (a2, b2) = _gaussian_terms(measure, sa, std), _gaussian_terms(measure, sb, std)
    return torch.sqrt((a1 - a2) ** 2 * std**2 + (b1 - b2) ** 2)


def gaussian_velocity(
    measure: str, sigma, mean=0.0, std: float = 1.0, dim: int = 2, wrt: str = "alpha"
) -> torch.Tensor:
    """Exact velocity of a measure for Gaussian data, with respect to ``alpha`` or ``sigma``.

    With respect to sigma (docs/method.md section 5 and its derivation for ``fid``):

    * ``data``: ``s^2 / (s^2 + sigma^2)``; ``noise``: ``s / (s^2 + sigma^2)``;
    * ``fid``: ``sqrt(|mu|^2 sigma^2/(1+sigma^2)^3 + dim sigma^2 (1-s^2)^2 / ((s^2+sigma^2)(1+sigma^2)^3))``,
      which with respect to alpha is ``sqrt(|mu|^2 + dim (1-s^2)^2 / (s^2 + sigma^2))``.

    Multiply by ``|d sigma / d alpha| = (1 + sigma^2)^(3/2) / sigma`` to go from sigma to alpha.
    """
    if wrt not in ("alpha", "sigma"):
        raise ValueError(f"Unknown `wrt` {wrt!r}; valid choices: alpha, sigma.")
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    mu = torch.as_tensor(mean, dtype=torch.float64).reshape(-1).expand(dim)
    s2, mean_sq = std**2, float((mu**2).sum())
    dsigma_dalpha = (1.0 + sigma**2) ** 1.5 / sigma
    if measure == "data":
        v = s2 / (s2 + sigma**2)
    elif measure == "noise":
        v = std / (s2 + sigma**2)
    elif measure == "fid":
        v_alpha = torch.sqrt(mean_sq + dim * (1.0 - s2) ** 2 / (s2 + sigma**2))
        return v_alpha if wrt == "alpha" else v_alpha / dsigma_dalpha
    else:
        raise ValueError(f"Unknown measure {measure!r}; valid choices: fid, data, noise.")
    return v * dsigma_dalpha if wrt == "alpha" else v


def gaussian_local_error(sampler: str, sigma_a, sigma_b, std: float = 1.0) -> torch.Tensor:
    """Exact RMS local error of one ``euler`` or ``heun`` step from ``sigma_a`` down to ``sigma_b`` for zero-mean
    Gaussian data ``N(0, std^2 I)``, from the noised data ``x_a ~ N(0, (std^2 + sigma_a^2) I)``.

    The probability-flow ODE is linear there: ``dx/dsigma = k(sigma) x`` with ``k = sigma / (s^2 + sigma^2)``, so
    ``x(sigma_b) = x_a sqrt((s^2 + sigma_b^2) / (s^2 + sigma_a^2))``; Euler multiplies ``x_a`` by
    ``1 + h k_a`` and Heun by ``1 + h (k_a + k_b (1 + h k_a)) / 2`` (``h = sigma_b - sigma_a``). The RMS error is
    ``sqrt(s^2 + sigma_a^2) |multiplier - exact|`` (docs/method.md section 8); the ``solver-<sampler>`` measure
    is its ``1 / (p + 1)`` power.
    """
    sa = torch.as_tensor(sigma_a, dtype=torch.float64)
    sb = torch.as_tensor(sigma_b, dtype=torch.float64)
    v = float(std) ** 2
    h = sb - sa
    ka, kb = sa / (v + sa**2), sb / (v + sb**2)
    if sampler == "euler":
        mult = 1 + h * ka
    elif sampler == "heun":
        mult = 1 + h * (ka + kb * (1 + h * ka)) / 2
    else:
        raise ValueError(f"No closed form for the sampler {sampler!r}; valid choices: euler, heun.")
    exact = torch.sqrt((v + sb**2) / (v + sa**2))
    return torch.sqrt(v + sa**2) * (mult - exact).abs()
