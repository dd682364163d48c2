"""The Gram-factorisation attack: exact recovery of sparse nonnegative rows with a certificate that
rejects impostors, refusal when the factorisation is not unique, and the real mnist5k requirement."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from threadpoolctl import threadpool_limits

from attacks.statistics.gram import _factor, _residual, recover_rows
from secure_afl.statistics import compute_statistics


def sparse_rows(seed, n=20, d=64, density=0.25, classes=3):
    """Unit rows, nonnegative, about ``density`` of their entries nonzero (like pooled ReLU features)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, d)) * (rng.random((n, d)) < density)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, rng.integers(0, classes, n)


def unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def matched_cosines(truth, rows):
    """Cosine of each true row with the recovered row that Hungarian matching gives it (0 if none), and the match."""
    cos = unit(truth) @ unit(rows).T
    true_idx, rec_idx = linear_sum_assignment(-cos)
    scores = np.zeros(len(truth))
    scores[true_idx] = cos[true_idx, rec_idx]
    return scores, true_idx, rec_idx


def certificate(stats, rows, labels, nonnegative=True):
    """The attack's certificate residual of any rows: max(|xᵀG⁺x − 1|, ‖xᵀG⁺H − e_c‖∞, negative part)."""
    z, m = _factor(stats.gram, stats.cross, stats.class_counts, 0)
    u = (z @ rows.T) / (z * z).sum(1)[:, None]  # ZZᵀ = Λ: u = Λ⁻¹Zx is x's coordinate vector
    return _residual(u, z, m, labels, nonnegative, 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_nonnegative_rows_are_recovered_exactly_and_certified(seed):
    x, labels = sparse_rows(seed)
    stats = compute_statistics(x, labels, 3)
    result = recover_rows(stats.gram, stats.cross, stats.class_counts, norm=1.0, seed=seed)
    assert result.applicable and result.reason == ""
    assert result.rows.shape == x.shape and result.certified.all()
    scores, true_idx, rec_idx = matched_cosines(x, result.rows)
    assert scores.min() >= 0.9999
    np.testing.assert_array_equal(result.labels[rec_idx], labels[true_idx])
    np.testing.assert_allclose(result.rows[rec_idx], x[true_idx], atol=1e-9)
    assert (result.residual <= 1e-8).all()


def test_more_rows_than_dimensions_is_not_applicable():
    x, labels = sparse_rows(0, n=40, d=32)
    stats = compute_statistics(x, labels, 3)
    result = recover_rows(stats.gram, stats.cross, stats.class_counts, norm=1.0)
    assert not result.applicable and "40 rows in 32 dimensions" in result.reason
    assert result.rows.shape == (0, 32) and result.labels.size == result.certified.size == 0


def test_counts_that_disagree_with_the_rank_are_not_applicable():
    x, labels = sparse_rows(0)
    stats = compute_statistics(x, labels, 3)
    counts = stats.class_counts.copy()
    counts[0] += 1  # one row more than G's rank shows
    result = recover_rows(stats.gram, stats.cross, counts, norm=1.0)
    assert not result.applicable and "rank(G) = 20" in result.reason and result.rows.shape == (0, 64)


def test_certificate_accepts_true_rows_and_rejects_rotations_and_mixtures():
    x, labels = sparse_rows(3)
    stats = compute_statistics(x, labels, 3)
    assert (certificate(stats, x, labels) <= 1e-10).all()
    # a rotation of the rows keeps G (and unit norm in G⁺'s metric) but not the class sums or the signs
    rotation = np.linalg.qr(np.random.default_rng(0).standard_normal((len(x), len(x))))[0]
    assert (certificate(stats, rotation @ x, labels) > 1e-3).all()
    assert (certificate(stats, rotation @ x, labels, nonnegative=False) > 1e-3).all()
    # a nonnegative unit-norm mixture of two rows of one class fails xᵀG⁺x = 1 and the one-hot sums
    a, b = np.flatnonzero(labels == labels[0])[:2]
    mixture = (x[a] + x[b]) / np.linalg.norm(x[a] + x[b])
    assert certificate(stats, mixture[None], labels[[a]])[0] > 1e-3


def test_rows_the_exact_steps_cannot_reach_are_estimated_and_never_certified():
    x, labels = sparse_rows(4, density=0.9)  # dense rows: no coordinate is any row's own
    stats = compute_statistics(x, labels, 3)
    result = recover_rows(stats.gram, stats.cross, stats.class_counts, norm=1.0, projection_steps=50)
    assert result.applicable and result.rows.shape == x.shape and not result.certified.any()
    np.testing.assert_array_equal(np.bincount(result.labels, minlength=3), stats.class_counts)
    assert np.isfinite(result.rows).all() and np.isfinite(result.residual).all()


@pytest.mark.slow
def test_mnist5k_hundred_clients_rows_are_recovered():
    """The requirement: K = 100, α = 0.1, seed 0 on mnist5k, at least 80 % of all training rows at
    cosine ≥ 0.95, and no certified row wrong."""
    import torch

    from secure_afl.config import RunConfig
    from secure_afl.data.datasets import load_dataset
    from secure_afl.data.partition import partition
    from secure_afl.device import resolve_device
    from secure_afl.runner import backbone_features, build_feature_map

    cfg = RunConfig(clients=100, alpha=0.1, seed=0)
    ds = load_dataset(cfg.dataset)
    y = ds.labels(ds.train)
    parts = partition(y, cfg.clients, cfg.partition, alpha=cfg.alpha, shards_per_client=cfg.shards_per_client,
                      min_size=cfg.min_client_size, seed=cfg.seed)
    train_raw, _, _ = backbone_features(cfg, ds, resolve_device("cpu"), progress=False)
    features, _ = build_feature_map(cfg).apply(torch.from_numpy(train_raw))
    features = features.double().numpy()
    scores, certified, wrong = [], 0, 0
    with threadpool_limits(1):  # mid-sized LAPACK calls: threads only add synchronisation on a busy machine
        for part in parts:
            x = features[part]
            stats = compute_statistics(x, y[part], 10)
            result = recover_rows(stats.gram, stats.cross, stats.class_counts, norm=cfg.max_norm)
            assert result.applicable, result.reason
            client_scores, true_idx, rec_idx = matched_cosines(x, result.rows)
            scores.append(client_scores)
            certified += int(result.certified.sum())
            wrong += int((result.certified[rec_idx] & (client_scores[true_idx] < 0.9999)).sum())
    scores = np.concatenate(scores)
    assert scores.size == 4000
    assert (scores >= 0.95).mean() >= 0.80
    assert wrong == 0 and certified >= 0.80 * scores.size
