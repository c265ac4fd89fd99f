"""What every denoiser and every dataset provides, written down once (``typing.Protocol``).

The engine relies on these attributes and nothing else; it never probes for them. Implemented by the
neural denoisers (:class:`crs.networks.EDMDenoiser`, :class:`crs.adapters.DiffusersDenoiser`), the exact
denoiser of analytic data (:class:`crs.analytic.ExactDenoiser`), and the datasets of :mod:`crs.data`,
:mod:`crs.analytic` and :class:`crs.adapters.LatentData`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["AnalyticDataset", "Dataset", "Denoiser", "check_data_matches"]


@runtime_checkable
class Denoiser(Protocol):
    """An x0-prediction ``D(x; sigma)`` on VE inputs (docs/method.md section 1).

    Attributes:
        shape: one sample in the space the model denoises (latent shape for latent models).
        pixel_shape: one sample as data: ``shape``, or the decoded image shape of a latent model.
        sigma_min, sigma_max: the noise range the model is meant for; None: any (exact denoisers).
        sigma_data: the data standard deviation its loss weighting assumes (EDM's 0.5 where the model has none).
        is_latent: whether samples must be decoded (:meth:`decode`) into data.

    A conditional model also declares ``conditioning`` (a :class:`crs.conditioning.Conditioning`; None or absent:
    unconditional) and is called as ``D(x, sigma, cond)`` with one condition per sample; the engine reads it with
    :func:`crs.conditioning.conditioning_of` and hands its solvers the plain ``D(x, sigma)`` of a batch
    (:func:`crs.conditioning.bind`).
    """

    shape: tuple[int, ...]
    pixel_shape: tuple[int, ...]
    sigma_min: float | None
    sigma_max: float | None
    sigma_data: float
    is_latent: bool

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """x (B, *shape), sigma scalar or (B,) -> D(x; sigma) (B, *shape), on the device and dtype of ``x``."""

    def decode(self, latents: torch.Tensor, batch_size: int = 64, quantize: bool = True) -> torch.Tensor:
        """Latents (N, *shape) -> data (N, *pixel_shape); ValueError for a model that is not latent."""


@runtime_checkable
class Dataset(Protocol):
    """Samples of the data a model is trained on or evaluated against.

    Attributes:
        name: recorded in artifacts.
        shape: one sample.
    """

    name: str
    shape: tuple[int, ...]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` samples (n, *shape) drawn with ``generator`` (on the CPU)."""


@runtime_checkable
class AnalyticDataset(Dataset, Protocol):
    """A dataset with an exact denoiser and an exact density (the 2-D mixture, Gaussians)."""

    denoiser: Denoiser

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """Exact log-density of ``p_sigma`` at ``x`` (B, *shape) -> (B,)."""


def check_data_matches(denoiser, shape, what: str = "the dataset gives") -> None:
    """ValueError naming both shapes unless ``denoiser`` takes samples of ``shape`` (one sample's shape, e.g.
    ``data.shape``); the check the entry points make before any work. ``what`` names where ``shape`` comes from
    in the message. A plain callable ``D(x, sigma)``, which declares no :class:`Denoiser` attributes, is not checked.
    """
    if isinstance(denoiser, Denoiser) and tuple(denoiser.shape) != tuple(shape):
        raise ValueError(f"The model takes samples of shape {tuple(denoiser.shape)}, but {what} {tuple(shape)}.")
