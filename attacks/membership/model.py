"""LiRA (Carlini et al. 2022) on the released model W = (ΣG + γI)⁻¹ΣH, with ridge shadow models.

The server solves W from the aggregate it reads, so every protocol releases it. A candidate's
signal is W's logit margin on it, m(z) = (zᵀW)_y − max_{c≠y}(zᵀW)_c, compared with the margins
shadow models give it when z is in their training set and when it is not. Shadows are ridges with
the job's γ trained on random halves of the public reference rows; a ridge needs no retraining to
add a row: with A = G_s + γI, u = A⁻¹z and h = zᵀu, the logits on z of the shadow trained with z
are (zᵀW_s + h e_yᵀ) / (1 + h) (Sherman–Morrison), so one solve per shadow scores every candidate
in and out. As LiRA does with few shadows, in and out margins are Gaussian with a per-candidate
mean and a variance shared by all candidates; the score is the log likelihood ratio.

The shadows see far fewer rows than the released model (the public pool is small), so their
margins are smaller than W's for members and non-members alike; the ratio still ranks by how much
more W fits z than a model without it would, which is what the test measures.
"""

from __future__ import annotations

import numpy as np

from attacks.membership.statistics import Reference, Unanswerable
from secure_afl.algorithms.afl import AFLConfig, ridge_solve
from secure_afl.errors import SecureAFLError
from secure_afl.linalg import solve_spd
from secure_afl.statistics import Statistics, compute_statistics

SHADOWS = 8
SHADOW_SEED = 0  # not secret: which public rows train which shadow hides nothing from anyone
MIN_SHADOW_ROWS = 20


def released_model(total: Statistics, config: dict) -> np.ndarray:
    """The W the AFL server solves from the aggregate, with the job's public γ."""
    try:
        return ridge_solve(total, AFLConfig(float(config["gamma"]), bool(config.get("restore", False))))
    except SecureAFLError as exc:
        raise Unanswerable(f"the server could not solve a model from the aggregate: {exc}") from exc


def margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Logit of the true class minus the largest other logit, per row."""
    rows = np.arange(len(labels))
    true = logits[rows, labels]
    others = logits.copy()
    others[rows, labels] = -np.inf
    return true - others.max(axis=1)


def shadow_margins(shadow: Statistics, z: np.ndarray, labels: np.ndarray,
                   gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Margins on each candidate of the ridge on ``shadow`` with the candidate added (in) and without it (out)."""
    classes = shadow.num_classes
    solved = solve_spd(shadow.gram + gamma * np.eye(shadow.dim), np.hstack([shadow.cross, z.T]),
                       what="a shadow's G + γI")
    out_logits = z @ solved[:, :classes]
    leverage = np.einsum("ij,ji->i", z, solved[:, classes:])[:, None]
    in_logits = (out_logits + leverage * np.eye(classes)[labels]) / (1 + leverage)
    return margins(in_logits, labels), margins(out_logits, labels)


def lira_score(weights: np.ndarray, z: np.ndarray, labels: np.ndarray, reference: Reference,
               gamma: float) -> np.ndarray:
    if not gamma > 0:
        raise Unanswerable("the job's γ is 0: shadows on fewer rows than dimensions have no least-squares solution")
    if len(reference.x) < 2 * MIN_SHADOW_ROWS:
        raise Unanswerable(f"LiRA needs at least {2 * MIN_SHADOW_ROWS} public reference rows for its shadows")
    rng = np.random.default_rng(SHADOW_SEED)
    in_margins, out_margins = [], []
    for _ in range(SHADOWS):
        rows = rng.permutation(len(reference.x))[: len(reference.x) // 2]
        shadow = compute_statistics(reference.x[rows], reference.labels[rows], weights.shape[1])
        margin_in, margin_out = shadow_margins(shadow, z, labels, gamma)
        in_margins.append(margin_in)
        out_margins.append(margin_out)
    in_margins, out_margins = np.array(in_margins), np.array(out_margins)
    mean_in, mean_out = in_margins.mean(axis=0), out_margins.mean(axis=0)
    std_in = max(float(np.std(in_margins - mean_in)), 1e-12)
    std_out = max(float(np.std(out_margins - mean_out)), 1e-12)
    observed = margins(z @ weights, labels)
    return (-((observed - mean_in) / std_in) ** 2 / 2 - np.log(std_in)
            + ((observed - mean_out) / std_out) ** 2 / 2 + np.log(std_out))
