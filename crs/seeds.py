"""Seed derivations: every seed ``crs`` derives from a run's ``seed``, defined once.

A run takes one integer ``seed``; each stream of random numbers gets its own ``torch.Generator`` seeded
by one of these functions, so streams never overlap by accident and a rerun gives the same artifacts.
"""

from __future__ import annotations

__all__ = [
    "CONDITION_OFFSET",
    "MODEL_DATA_OFFSET",
    "REFERENCE_OFFSET",
    "SEARCH_OFFSET",
    "condition_seed",
    "heldout_seed",
    "model_data_seed",
    "online_seed",
    "process_seed",
    "reference_seed",
    "sample_seed",
    "search_seed",
]

# Generated sample i uses seed + i; fresh reference samples start this far away, so the two never share a
# seed while a set has fewer than a million samples.
REFERENCE_OFFSET = 10**6


def sample_seed(seed: int, i: int) -> int:
    """Seed of generated sample ``i`` (its initial and fresh noise): ``seed + i``; independent of the batch."""
    return seed + i


SEARCH_OFFSET = 2 * 10**6


def search_seed(seed: int) -> int:
    """First seed of the search batch of schedule search (:mod:`crs.search`): its sample ``i`` uses
    ``sample_seed(search_seed(seed), i)``, disjoint from the samples a run draws and judges (``seed + i``) and from
    fresh reference samples (``seed + 10**6 + i``) while sets have fewer than a million samples."""
    return seed + SEARCH_OFFSET


MODEL_DATA_OFFSET = 3 * 10**6


def model_data_seed(seed: int) -> int:
    """First seed of a model's own samples standing in for its data (:class:`crs.model_data.ModelSamples`): sample
    ``i`` uses ``sample_seed(model_data_seed(seed), i)``, disjoint from the samples a run draws and judges, fresh
    reference samples and the search batch while sets have fewer than a million samples."""
    return seed + MODEL_DATA_OFFSET


CONDITION_OFFSET = 5 * 10**6


def condition_seed(sample: int) -> int:
    """Seed of the condition (class label) of the sample whose own seed is ``sample`` (:func:`sample_seed`, or a
    search or reference sample's): ``sample + 5 * 10**6``. A sample's condition is then a function of its seed alone
    (not of the batch or the set's size), and its stream never meets the noise of a sample, a search batch or a
    reference set while sets have fewer than a million samples."""
    return sample + CONDITION_OFFSET


def reference_seed(seed: int) -> int:
    """Seed of fresh reference samples of analytic data (notebooks 04 and 05, the ratio benchmark)."""
    return seed + REFERENCE_OFFSET


def heldout_seed(seed: int) -> int:
    """Seed of the held-out batch on which notebook 03 compares the fine-tuned models' losses."""
    return seed + 1


def process_seed(seed: int, rank: int) -> int:
    """Seed of the training batches of process ``rank`` under ``accelerate launch`` (every process draws its own)."""
    return seed + 1000 * rank


def online_seed(seed: int) -> int:
    """Seed of the fixed batch on which ``crs-online`` training re-estimates the rate."""
    return seed + 12345
