"""Denoisers by name: the ``model`` parameter of the notebooks.

``"analytic"`` is the exact denoiser of an analytic dataset (:mod:`crs.analytic`). Neural models
(a local folder or a hub id, in diffusers' format) come with the training stage (notebook 00) and
are refused with a clear message until then.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["load_denoiser"]


def load_denoiser(model: str, data):
    """Return ``D(x, sigma)`` for ``model``.

    Args:
        model: ``"analytic"`` (the dataset's exact denoiser).
        data: the dataset the model belongs to.

    Raises:
        ValueError: the dataset has no exact denoiser, the path does not exist, or the kind of model
            is not available in this version.
    """
    if model == "analytic":
        if not hasattr(data, "denoiser"):
            raise ValueError(f"model='analytic' needs an analytic dataset (gaussian, gmm); {data!r} has no exact denoiser.")
        return data.denoiser
    if not isinstance(model, str) or not model:
        raise ValueError(f"`model` must be 'analytic' or a path, got {model!r}.")
    if not Path(model).exists():
        raise ValueError(f"No model at {model!r}: give model='analytic' or a folder that exists.")
    raise ValueError(
        f"Loading neural models ({model!r}) is not available in this version of crs; use model='analytic'."
    )
