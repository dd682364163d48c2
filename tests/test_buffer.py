import pytest
import torch

from secure_afl.errors import ConfigError
from secure_afl.features.buffer import ACTIVATIONS, RandomBuffer
from secure_afl.features.feature_map import FeatureMap

from conftest import requires_cuda

FEATURES = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))


def test_buffer_is_a_pure_function_of_its_public_seed():
    a = RandomBuffer(32, "relu", seed=5, bias=True).apply(FEATURES)
    b = RandomBuffer(32, "relu", seed=5, bias=True).apply(FEATURES)
    c = RandomBuffer(32, "relu", seed=6, bias=True).apply(FEATURES)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (50, 32)


def test_buffer_rows_do_not_depend_on_batching():
    buffer = RandomBuffer(32, "gelu", seed=1)
    assert torch.allclose(buffer.apply(FEATURES, batch_size=7), buffer.apply(FEATURES), atol=1e-6)
    assert torch.allclose(buffer.apply(FEATURES[10:20]), buffer.apply(FEATURES)[10:20], atol=1e-6)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_every_activation_applies_its_function(activation, distribution):
    buffer = RandomBuffer(8, activation, seed=2, distribution=distribution)
    projection, _ = buffer.parameters(16)
    expected = ACTIVATIONS[activation](FEATURES @ projection)
    assert torch.allclose(buffer.apply(FEATURES), expected, atol=1e-6)
    assert abs(float(projection.var()) * 16 - 1.0) < 0.35  # variance 1/d_in


def test_bad_buffer_options_are_refused():
    with pytest.raises(ConfigError, match="activation"):
        RandomBuffer(8, "swishy")
    with pytest.raises(ConfigError, match="width"):
        RandomBuffer(0)
    with pytest.raises(ConfigError, match="distribution"):
        RandomBuffer(8, distribution="cauchy")


def test_feature_map_bounds_row_norms():
    big = FEATURES * 10
    l2, changed = FeatureMap(norm="l2", max_norm=2.0).apply(big)
    assert torch.allclose(torch.linalg.vector_norm(l2, dim=1), torch.full((50,), 2.0), atol=1e-5)
    assert changed == 1.0
    clipped, changed = FeatureMap(norm="clip", max_norm=40.0).apply(big)
    norms = torch.linalg.vector_norm(big, dim=1)
    kept = norms <= 40.0
    assert torch.equal(clipped[kept], big[kept])
    assert torch.linalg.vector_norm(clipped, dim=1).max() <= 40.0 * (1 + 1e-6)
    assert changed == pytest.approx(float((~kept).float().mean()))
    with pytest.raises(ConfigError, match="feature norm"):
        FeatureMap(norm="max")


@requires_cuda
def test_buffer_on_cuda_matches_cpu():
    buffer = RandomBuffer(64, "tanh", seed=3, bias=True)
    assert torch.allclose(buffer.apply(FEATURES.cuda()).cpu(), buffer.apply(FEATURES), atol=1e-4)
