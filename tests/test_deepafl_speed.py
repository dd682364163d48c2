"""DeepAFL's faster paths against the computations they replaced (kept here, unoptimised, as the reference):
the thin-SVD sandwiched solve, the declared bounds' quadratic diagonals and the one-pass evaluation agree with
the old ones to 1e-9 relative or exactly."""

import numpy as np
import pytest
import torch

from secure_afl.algorithms.deepafl import (DeepAFLConfig, DeepAFLModel, LowRank, centralized, low_rank_quadratic_diagonal,
                                           quadratic_diagonal, sandwiched_solve)
from secure_afl.errors import ConfigError
from secure_afl.runner import FederatedData, evaluate


def full_eigh_sandwiched_solve(gram, cross, weights, gamma):
    """The previous solve: both eigendecompositions in full."""
    mu, v = np.linalg.eigh(gram)
    nu, u = np.linalg.eigh(weights @ weights.T)
    mu, nu = np.clip(mu, 0.0, None), np.clip(nu, 0.0, None)
    numerator = v.T @ cross @ weights.T @ u
    denominator = gamma + np.outer(mu, nu)
    tiny = np.finfo(np.float64).eps * max(float(denominator.max()), 1.0)
    inner = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > tiny)
    return v @ inner @ u.T


@pytest.mark.parametrize("rows, d_f, d_phi, classes, gamma", [
    (300, 40, 30, 5, 0.05), (300, 40, 30, 5, 10.0), (20, 40, 30, 5, 1.0), (300, 25, 60, 10, 0.05),
])
def test_thin_svd_solve_equals_the_full_eigendecomposition(rows, d_f, d_phi, classes, gamma):
    rng = np.random.default_rng(rows + d_f + classes)
    f = rng.standard_normal((rows, d_f))
    residuals = rng.standard_normal((rows, classes))
    weights = rng.standard_normal((d_phi, classes))
    new = sandwiched_solve(f.T @ f, f.T @ residuals, weights, gamma).matrix
    old = full_eigh_sandwiched_solve(f.T @ f, f.T @ residuals, weights, gamma)
    assert np.max(np.abs(new - old)) <= 1e-9 * np.max(np.abs(old))


def test_without_ridge_the_thin_solve_still_meets_the_normal_equations():
    """γ = 0: the full eigendecomposition divided round-off by round-off on WWᵀ's null space; the thin one
    leaves that space at 0 and solves S Ω (WWᵀ) = C Wᵀ."""
    rng = np.random.default_rng(5)
    f, residuals, weights = rng.standard_normal((300, 25)), rng.standard_normal((300, 10)), rng.standard_normal((60, 10))
    gram, cross = f.T @ f, f.T @ residuals
    omega = sandwiched_solve(gram, cross, weights, 0.0).matrix
    target = cross @ weights.T
    assert np.max(np.abs(gram @ omega @ weights @ weights.T - target)) <= 1e-9 * np.max(np.abs(target))


def test_quadratic_diagonal_equals_the_three_operand_einsum():
    rng = np.random.default_rng(3)
    a, x = rng.standard_normal((50, 20)), rng.standard_normal((80, 50))
    gram = x.T @ x
    np.testing.assert_allclose(quadratic_diagonal(a, gram), np.einsum("pi,pq,qi->i", a, gram, a), rtol=1e-12)


def test_the_residual_kept_as_factors_acts_as_its_full_matrix():
    """Ω_t has rank ≤ C and is applied, bounded and saved through its factors: the same numbers as the full
    d_F × d_Φ matrix to round-off, and a model file holding full matrices (format version 1) predicts the same."""
    rng = np.random.default_rng(11)
    f, residuals, weights = rng.standard_normal((200, 30)), rng.standard_normal((200, 4)), rng.standard_normal((50, 4))
    omega = sandwiched_solve(f.T @ f, f.T @ residuals, weights, 0.5)
    assert omega.left.shape == (30, 4) and omega.right.shape == (50, 4)
    features = torch.as_tensor(rng.standard_normal((70, 30)))
    full = omega.matrix
    assert torch.allclose(omega.apply(features), features @ torch.as_tensor(full), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(low_rank_quadratic_diagonal(omega, f.T @ f), quadratic_diagonal(full, f.T @ f),
                               rtol=1e-10)
    with pytest.raises(ConfigError, match="residual factors"):
        LowRank.received({"omega_left": omega.left, "omega_right": omega.right[:49]}, 30, 50)


def test_a_model_file_of_format_version_1_still_predicts_the_same(synthetic):
    x, labels, classes = synthetic
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    model = centralized(x, labels, classes, DeepAFLConfig(width=32, residual_width=20, layers=2), 1.0)
    meta, arrays = model.state()
    version_1 = {name: a for name, a in arrays.items() if not name.startswith("residual_")}
    version_1.update({f"residual_{t}": omega.matrix for t, omega in enumerate(model.residuals)})
    old = DeepAFLModel.from_state(meta, version_1)
    assert old.relative_difference(model) == 0.0
    np.testing.assert_array_equal(old.predict(x), model.predict(x))
    assert DeepAFLModel.from_state(meta, arrays).relative_difference(model) == 0.0


def test_one_pass_evaluation_equals_per_subset_prediction(synthetic):
    x, labels, classes = synthetic
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    config = DeepAFLConfig(width=32, residual_width=20, layers=3, lam=0.5, gamma=0.05)
    model = centralized(x[:400], labels[:400], classes, config, 1.0)
    test_x, test_y = x[400:], labels[400:]
    held_out = [np.arange(0, 50), np.arange(50, 51), np.arange(51, 200), np.arange(0)]
    data = FederatedData(torch.as_tensor(x[:400]), labels[:400], torch.as_tensor(test_x), test_y, [np.arange(400)],
                         held_out, classes)
    metrics = evaluate(model, model, data, [0])
    old_per_client = [model.accuracy(test_x[idx], test_y[idx]) for idx in held_out]
    assert metrics["per_client_accuracy"] == [None if np.isnan(a) else a for a in old_per_client]
    assert metrics["accuracy"] == model.accuracy(test_x, test_y)
    assert metrics["train_accuracy"] == model.accuracy(x[:400], labels[:400])
    assert metrics["layer_accuracy"] == [float(np.mean(np.argmax(s, axis=1) == test_y))
                                         for s in model.layer_scores(test_x)]
    assert metrics["layer_accuracy"][-1] == metrics["accuracy"] and metrics["max_rel_diff_to_centralized"] == 0.0
