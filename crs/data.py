"""Datasets by name: the one entry point the notebooks and the rate estimator use.

A dataset object has ``name``, ``shape`` (of one sample) and ``sample(n, generator)`` returning a
tensor ``(n, *shape)``. Analytic datasets (:mod:`crs.analytic`) also have an exact ``denoiser``.
"""

from __future__ import annotations

from crs import analytic

__all__ = ["DATASETS", "make_dataset"]

DATASETS = {
    "gaussian": analytic.gaussian,
    "gmm": analytic.gmm,
}


def make_dataset(name: str, **kwargs):
    """Build a dataset by name.

    Args:
        name: ``gaussian`` (kwargs ``dim``, ``mean``, ``std``) or ``gmm`` (kwargs ``dim``,
            ``weights``, ``means``, ``stds``, ``n_components``, ``radius``).
        **kwargs: passed to the dataset's constructor.

    Raises:
        ValueError: unknown name, or a keyword the dataset does not take.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}.")
    try:
        return DATASETS[name](**kwargs)
    except TypeError as exc:  # an unexpected keyword: say which dataset and what it takes
        import inspect

        valid = ", ".join(inspect.signature(DATASETS[name]).parameters)
        raise ValueError(f"Bad arguments for dataset {name!r}: {exc}. Valid keywords: {valid}.") from exc
