"""The one balanced positive/negative sampler behind the SVMs' first pass, R-CNN's
fine-tuning batches and Fast R-CNN's RoI mini-batches (rcnn/heads/sampler.py)."""

import numpy as np
import pytest

from rcnn.heads.sampler import BalancedSampler, draw

LABELS = np.array([0, 2, -1, 0, 1, 0, 0, -1, 3, 0, 0, 0])  # positives at 1, 4, 8; ignored at 2, 7


def test_draws_each_kind_up_to_its_count_without_repeats_and_never_the_ignored():
    pos, neg = BalancedSampler(2, 4)(LABELS, np.random.default_rng(0))
    assert len(pos) == 2 and set(pos) <= {1, 4, 8}
    assert len(neg) == 4 and len(set(neg)) == 4 and set(neg) <= {0, 3, 5, 6, 9, 10, 11}


def test_a_short_supply_gives_all_or_repeats_to_fill():
    pos, neg = BalancedSampler(5, 100)(LABELS, np.random.default_rng(0))
    assert sorted(pos) == [1, 4, 8] and sorted(neg) == [0, 3, 5, 6, 9, 10, 11]
    pos, neg = BalancedSampler(5, 100, short="repeat")(LABELS, np.random.default_rng(0))
    assert len(pos) == 5 and set(pos) == {1, 4, 8} and len(neg) == 100 and set(neg) == {0, 3, 5, 6, 9, 10, 11}


def test_none_takes_every_one_of_a_kind_and_an_empty_supply_gives_an_empty_sample():
    pos, neg = BalancedSampler(None, 0, short="repeat")(LABELS, np.random.default_rng(0))
    assert sorted(pos) == [1, 4, 8] and len(neg) == 0
    pos, neg = BalancedSampler(3, 3, short="repeat")(np.full(5, -1), np.random.default_rng(0))
    assert len(pos) == len(neg) == 0


def test_without_shuffle_the_generator_is_used_only_to_cut_an_oversupply():
    rng = np.random.default_rng(7)
    state = rng.bit_generator.state
    assert draw(np.arange(5), 5, rng, shuffle=False).tolist() == [0, 1, 2, 3, 4]
    assert rng.bit_generator.state == state  # nothing drawn: the next classes' draws stay the same
    cut = draw(np.arange(100), 10, rng, shuffle=False)
    assert len(cut) == 10 and (np.diff(cut) > 0).all() and rng.bit_generator.state != state


def test_same_seed_same_sample_and_the_fractions_hold_over_many_draws():
    labels = np.r_[np.ones(300, int), np.zeros(700, int)]
    a = BalancedSampler(32, 96)(labels, np.random.default_rng([1, 2]))
    b = BalancedSampler(32, 96)(labels, np.random.default_rng([1, 2]))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    counts = np.zeros(1000)
    rng = np.random.default_rng(3)
    for _ in range(200):
        pos, neg = BalancedSampler(32, 96)(labels, rng)
        counts[pos] += 1
        counts[neg] += 1
    # each positive is drawn with probability 32/300, each negative 96/700: uniform within a kind
    assert abs(counts[:300].mean() / 200 - 32 / 300) < 1e-9 and abs(counts[300:].mean() / 200 - 96 / 700) < 1e-9
    assert counts[:300].std() / 200 < 0.03 and counts[300:].std() / 200 < 0.03


def test_an_unknown_short_rule_is_refused():
    with pytest.raises(ValueError, match="short"):
        BalancedSampler(1, 1, short="pad")
