"""Seed derivations (crs.seeds): one definition each, and streams that do not collide."""

from crs import seeds


def test_reference_samples_never_share_a_seed_with_generated_ones():
    seed, n = 7, 50_000
    generated = {seeds.sample_seed(seed, i) for i in range(n)}
    assert seeds.reference_seed(seed) not in generated and seeds.reference_seed(seed) == seed + seeds.REFERENCE_OFFSET
    assert seeds.sample_seed(seed, 0) == seed  # sample 0 keeps the run's seed


def test_training_streams_differ_per_process_and_from_the_online_batch():
    per_process = [seeds.process_seed(3, rank) for rank in range(8)]
    assert per_process[0] == 3 and len(set(per_process)) == 8
    assert seeds.online_seed(3) not in per_process and seeds.heldout_seed(3) != 3
