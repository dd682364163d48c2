import math

import numpy as np
import pytest

from protocols import EncodingError, FixedPoint, InvalidContributionError
from protocols.encoding import choose_fraction_bits, fits


def test_spec_example_and_budget_edge():
    assert choose_fraction_bits(1000, 2.0**20) == 33  # the spec's example: step 1.2e-10
    for n, bound in [(2, 1.0), (20, 80_080.0), (1000, 2.0**20), (7, 3.3)]:
        f = choose_fraction_bits(n, bound)
        assert fits(n, bound, f) and not fits(n, bound, f + 1) or f == 62


def test_sum_of_encodings_is_exact_and_within_the_stated_bound():
    rng = np.random.default_rng(0)
    n, bound = 50, 3.0
    vectors = [rng.uniform(-bound, bound, 5000) for _ in range(n)]
    vectors[0][:4] = [bound, -bound, bound, -bound]  # the extremes of the declared range
    encoding = FixedPoint.for_round(n, bound)
    words = np.zeros(5000, dtype=np.uint64)
    integers = np.zeros(5000, dtype=object)
    for v in vectors:
        words += encoding.encode(v)
        integers += np.rint(np.ldexp(v, encoding.fraction_bits)).astype(np.int64).astype(object)
    assert [int(w) for w in words.view(np.int64)] == list(integers)  # no wrap-around anywhere
    exact = np.array([math.fsum(column) for column in np.array(vectors).T])  # correctly rounded float sum
    error = np.abs(encoding.decode(words) - exact)
    assert np.all(error <= encoding.sum_error_bound + np.spacing(np.abs(exact)))


def test_worst_case_sum_does_not_overflow():
    n, bound = 100, 7.5
    encoding = FixedPoint.for_round(n, bound)
    words = np.zeros(3, dtype=np.uint64)
    for _ in range(n):
        words += encoding.encode(np.array([bound, -bound, bound]))
    np.testing.assert_allclose(encoding.decode(words), [n * bound, -n * bound, n * bound], rtol=1e-15)


def test_requested_precision_is_checked_against_the_budget():
    best = choose_fraction_bits(10, 100.0)
    assert FixedPoint.for_round(10, 100.0, best - 5).fraction_bits == best - 5
    with pytest.raises(EncodingError, match="overflows"):
        FixedPoint.for_round(10, 100.0, best + 1)
    with pytest.raises(EncodingError, match="overflow"):
        FixedPoint.for_round(10, 2.0**62)


@pytest.mark.parametrize("value, message", [(np.nan, "NaN"), (np.inf, "NaN or Inf"), (5.0001, "exceeds")])
def test_unencodable_values_are_refused(value, message):
    encoding = FixedPoint.for_round(4, 5.0)
    with pytest.raises(InvalidContributionError, match=message):
        encoding.encode(np.array([0.0, value]))


def test_step_matches_fraction_bits():
    encoding = FixedPoint.for_round(1000, 2.0**20)
    assert encoding.step == 2.0**-33 and math.isclose(encoding.step, 1.16e-10, rel_tol=0.01)
