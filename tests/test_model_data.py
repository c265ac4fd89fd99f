"""A model's own samples as its data (crs.model_data): the draw, its cache, its seeds, and rates and schedules from
them against those from the data."""

import numpy as np
import pytest
import torch

import crs
from crs.conditioning import Labels
from crs.model_data import ModelSamples
from crs.seeds import model_data_seed

RING = dict(n_components=8, radius=2.0, stds=0.2)


def test_the_rate_from_the_models_own_samples_is_the_rate_from_the_data():
    """On the ring mixture, 2048 samples of its exact denoiser's ODE (64 Heun steps: its own error ~1e-3) stand in
    for the data: the data and noise rates agree with the data's within their Monte Carlo errors (each interval's
    difference under 4.5 combined standard errors: 17 intervals, a false alarm below 1e-3), and the 10-step CRS
    schedules within 10 % of sigma at every level."""
    data = crs.make_dataset("gmm", **RING)
    pool = ModelSamples(data.denoiser, n=2048, steps=64, sigma_min=0.002, sigma_max=80.0)
    assert pool.evaluations > 0 and pool.teacher_error < 1e-2 and "2048 of the model's own samples" in pool.describe()
    common = dict(sigma_min=0.002, sigma_max=80.0, grid_size=16, n_samples=2048, seed=1)
    for measure in ("data", "noise"):
        a = crs.estimate_rate(measure, data, denoiser=data.denoiser, **common)
        b = crs.estimate_rate(measure, pool, denoiser=data.denoiser, **common)
        z = (b.discrepancy - a.discrepancy) / np.sqrt(a.stderr**2 + b.stderr**2)
        assert np.abs(z).max() < 4.5, measure
        levels = [crs.optimize_schedule(r).discretize(10)[:-1].numpy() for r in (a, b)]
        assert np.abs(np.log(levels[0] / levels[1])).max() < 0.1, measure


def test_the_pool_is_seeded_apart_cached_and_labelled(tmp_path):
    """The pool is the teacher solve from model_data_seed's starts (disjoint from judged samples), is read back from
    its cache only for the same key (then at no cost), and a conditional model's pool carries each sample's label,
    which the conditional rate uses."""
    data = crs.make_dataset("gmm", labels=[0, 1] * 4, **RING)
    conditions = Labels(2, balanced=True)
    kw = dict(n=64, steps=16, sigma_min=0.01, sigma_max=50.0, conditions=conditions, cache=tmp_path / "pool.pt")
    pool = ModelSamples(data.denoiser, **kw)
    teacher = crs.solve_teacher(
        data.denoiser, data.shape, 64, model_data_seed(0), 0.01, 50.0, 16, conditions=conditions
    )
    torch.testing.assert_close(pool.x, teacher.endpoint.float(), rtol=0, atol=0)  # the same solve, same floats
    assert torch.equal(pool.labels, teacher.cond) and pool.label_shares().tolist() == [0.5, 0.5]
    again = ModelSamples(data.denoiser, **kw)
    assert again.evaluations == 0 and torch.equal(again.x, pool.x) and "read from its cache" in again.describe()
    other = ModelSamples(data.denoiser, **{**kw, "seed": 1})
    assert other.evaluations > 0 and not torch.equal(other.x, pool.x)
    x, y = pool.sample_labeled(80, torch.Generator().manual_seed(0))  # more than the pool: with replacement
    assert x.shape == (80, 2) and y.shape == (80,)
    rate = crs.estimate_rate("data", pool, denoiser=data.denoiser, grid_size=4, n_samples=64, sigma_min=0.01)
    assert rate.meta["guidance"] == 1.0 and np.all(rate.discrepancy > 0)
    unlabelled = ModelSamples(crs.make_dataset("gmm", **RING).denoiser, n=8, steps=4, sigma_min=0.01, sigma_max=50.0)
    with pytest.raises(ValueError, match="has no labels"):
        unlabelled.sample_labeled(4, torch.Generator())
