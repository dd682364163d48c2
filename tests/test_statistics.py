import numpy as np
import pytest
import torch

from secure_afl.errors import EmptyClientError, FeatureError
from secure_afl.statistics import StatisticsLayout, compute_statistics, mirror_upper, packed_statistics

from conftest import requires_cuda


def test_statistics_match_their_definitions_in_float64(synthetic):
    x, labels, classes = synthetic
    stats = compute_statistics(torch.from_numpy(x.astype(np.float32)), labels, classes, batch_size=64)
    x64 = x.astype(np.float32).astype(np.float64)
    y = np.eye(classes)[labels]
    assert stats.gram.dtype == np.float64 and stats.cross.dtype == np.float64
    np.testing.assert_allclose(stats.gram, x64.T @ x64, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(stats.cross, x64.T @ y, rtol=1e-12, atol=1e-10)
    assert stats.count == 600
    assert stats.class_counts.tolist() == np.bincount(labels, minlength=classes).tolist()
    assert np.array_equal(stats.gram, stats.gram.T)


def test_pack_unpack_round_trip_is_exact(synthetic):
    x, labels, classes = synthetic
    stats = compute_statistics(x, labels, classes)
    layout = StatisticsLayout(x.shape[1], classes)
    vector = layout.pack(stats)
    assert vector.shape == (24 * 25 // 2 + 24 * 6 + 1 + 6,) == (layout.length,)
    back = layout.unpack(vector)
    assert np.array_equal(back.gram, stats.gram)
    assert np.array_equal(back.cross, stats.cross)
    assert back.count == stats.count and np.array_equal(back.class_counts, stats.class_counts)


def test_sum_and_difference_of_statistics(synthetic):
    x, labels, classes = synthetic
    a = compute_statistics(x[:250], labels[:250], classes)
    b = compute_statistics(x[250:], labels[250:], classes)
    whole = compute_statistics(x, labels, classes)
    total = a + b
    np.testing.assert_allclose(total.gram, whole.gram, rtol=1e-12, atol=1e-10)
    assert total.count == 600
    rest = whole - a
    np.testing.assert_allclose(rest.cross, b.cross, rtol=1e-12, atol=1e-10)
    assert rest.count == 350
    layout = StatisticsLayout(24, classes)
    np.testing.assert_allclose(layout.pack(a) + layout.pack(b), layout.pack(whole), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_refused(synthetic, bad):
    x, labels, classes = synthetic
    x = x.copy()
    x[3, 5] = bad
    with pytest.raises(FeatureError, match="NaN or Inf"):
        compute_statistics(x, labels, classes)


def test_mismatched_shapes_and_labels_are_refused(synthetic):
    x, labels, classes = synthetic
    with pytest.raises(FeatureError, match="labels"):
        compute_statistics(x, labels[:-1], classes)
    with pytest.raises(FeatureError, match="2-D"):
        compute_statistics(x[0], labels[:1], classes)
    with pytest.raises(FeatureError, match=r"labels must lie in \[0, 3\)"):
        compute_statistics(x, labels, 3)
    layout = StatisticsLayout(25, classes)
    with pytest.raises(FeatureError, match="do not fit the layout"):
        layout.pack(compute_statistics(x, labels, classes))
    with pytest.raises(FeatureError, match="entries"):
        layout.unpack(np.zeros(layout.length + 1))


def test_a_client_with_zero_samples_is_refused(synthetic):
    x, labels, classes = synthetic
    with pytest.raises(EmptyClientError, match="zero samples"):
        compute_statistics(x[:0], labels[:0], classes)


@requires_cuda
def test_cuda_statistics_equal_cpu_statistics(synthetic):
    x, labels, classes = synthetic
    cpu = compute_statistics(torch.from_numpy(x), labels, classes)
    gpu = compute_statistics(torch.from_numpy(x).cuda(), labels, classes)
    np.testing.assert_allclose(gpu.gram, cpu.gram, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(gpu.cross, cpu.cross, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("size", [1, 5, 127, 128, 129, 300])
def test_mirror_upper_copies_the_upper_triangle_across_tile_boundaries(size):
    matrix = np.random.default_rng(size).standard_normal((size, size))
    expected = np.triu(matrix) + np.triu(matrix, 1).T
    assert np.array_equal(mirror_upper(matrix.copy()), expected)


def test_packing_is_the_row_major_upper_triangle_and_a_client_gram_is_what_the_server_rebuilds():
    rng = np.random.default_rng(3)
    x, labels = rng.standard_normal((50, 140)), rng.integers(0, 4, 50)
    stats = compute_statistics(x, labels, 4, batch_size=16)
    layout = StatisticsLayout(140, 4)
    vector = layout.pack(stats)
    assert np.array_equal(vector[: layout.triangle], stats.gram[np.triu_indices(140)])
    assert np.array_equal(vector[layout.triangle : layout.triangle + 560], stats.cross.ravel())
    assert vector[-5] == 50 and np.array_equal(vector[-4:], np.bincount(labels, minlength=4))
    assert np.array_equal(layout.unpack(vector).gram, stats.gram)
    assert np.array_equal(packed_statistics(x, labels, 4, batch_size=16), vector)
