"""Symmetric positive-definite solves by Cholesky in float64, with a conditioning check.

A Cholesky factorisation can succeed on a numerically singular matrix (tiny pivots) and return
garbage, so after factorising we estimate the reciprocal condition number with LAPACK's
``dpocon`` and refuse systems that float64 cannot solve meaningfully.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.linalg import lapack

from secure_afl.errors import SingularSystemError

MIN_RCOND = 1e-13


def solve_spd(matrix: np.ndarray, rhs: np.ndarray, what: str = "the system") -> np.ndarray:
    """Solve ``matrix @ X = rhs`` for symmetric positive-definite ``matrix``; never forms an inverse."""
    matrix = np.asarray(matrix, dtype=np.float64)
    try:
        factor, lower = linalg.cho_factor(matrix, lower=False, check_finite=True)
    except (linalg.LinAlgError, ValueError) as exc:
        raise SingularSystemError(f"{what} is not positive definite ({exc}); add ridge regularisation (gamma > 0)") from exc
    rcond, info = lapack.dpocon(factor, np.linalg.norm(matrix, 1), uplo="U")
    if info != 0 or rcond < MIN_RCOND:
        raise SingularSystemError(
            f"{what} is numerically singular (reciprocal condition {rcond:.1e}); add ridge regularisation (gamma > 0)"
        )
    return linalg.cho_solve((factor, lower), np.asarray(rhs, dtype=np.float64), check_finite=False)
