import numpy as np
import pytest

from secure_afl.data.partition import allocate_held_out, partition, stratified_holdout
from secure_afl.errors import ConfigError

LABELS = np.repeat(np.arange(10), 80)  # 800 samples, 10 balanced classes


@pytest.mark.parametrize("scheme", ["dirichlet", "iid", "shards"])
def test_every_sample_goes_to_exactly_one_client(scheme):
    parts = partition(LABELS, 13, scheme, alpha=0.1, shards_per_client=3, min_size=5, seed=2)
    merged = np.concatenate(parts)
    assert len(parts) == 13
    assert np.array_equal(np.sort(merged), np.arange(len(LABELS)))
    assert min(len(p) for p in parts) >= 5


@pytest.mark.parametrize("scheme", ["dirichlet", "iid", "shards"])
def test_partition_is_deterministic_in_its_seed(scheme):
    a = partition(LABELS, 9, scheme, alpha=0.5, seed=11)
    b = partition(LABELS, 9, scheme, alpha=0.5, seed=11)
    c = partition(LABELS, 9, scheme, alpha=0.5, seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_small_alpha_skews_labels_and_large_alpha_does_not():
    def mean_classes(alpha):
        parts = partition(LABELS, 10, alpha=alpha, seed=0)
        return np.mean([len(np.unique(LABELS[p])) for p in parts])

    assert mean_classes(0.01) < 3
    assert mean_classes(100.0) > 9


def test_shards_give_each_client_few_classes():
    parts = partition(LABELS, 20, "shards", shards_per_client=2, seed=0)
    assert max(len(np.unique(LABELS[p])) for p in parts) <= 4


def test_min_size_guard_holds_even_for_extreme_skew():
    parts = partition(LABELS, 50, alpha=0.01, min_size=8, seed=0)
    assert min(len(p) for p in parts) >= 8
    assert sum(len(p) for p in parts) == len(LABELS)


def test_impossible_requests_are_refused():
    with pytest.raises(ConfigError, match="at least 100 each"):
        partition(LABELS, 10, min_size=100)
    with pytest.raises(ConfigError, match="unknown partition"):
        partition(LABELS, 10, "stripes")
    with pytest.raises(ConfigError, match="alpha"):
        partition(LABELS, 10, alpha=0.0)
    with pytest.raises(ConfigError, match="at least 1"):
        partition(LABELS, 0)


def test_held_out_splits_mirror_each_clients_label_distribution():
    test_labels = np.repeat(np.arange(10), 40)
    parts = partition(LABELS, 8, alpha=0.2, seed=3)
    held = allocate_held_out(parts, LABELS, test_labels, seed=3)
    merged = np.concatenate(held)
    assert len(np.unique(merged)) == len(merged) == len(test_labels)  # disjoint, complete
    for part, mine in zip(parts, held):
        train_share = np.bincount(LABELS[part], minlength=10) / len(part)
        test_share = np.bincount(test_labels[mine], minlength=10) / max(len(mine), 1)
        assert set(np.flatnonzero(test_share)) <= set(np.flatnonzero(train_share))
        assert np.abs(train_share - test_share).max() < 0.1


def test_stratified_holdout_keeps_class_proportions():
    train, test = stratified_holdout(LABELS, 0.25, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(LABELS)
    assert np.bincount(LABELS[test]).tolist() == [20] * 10
