import numpy as np
import pytest

from protocols import InvalidContributionError, PlaintextProtocol, UnknownProtocolError, make_protocol


def vectors(n=4, length=10, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(-5, 5, length) for k in range(n)}


def test_plaintext_returns_the_sum_and_records_what_the_server_saw():
    contributions = vectors()
    protocol = make_protocol("plaintext")
    result = protocol.aggregate("r1", contributions, bound=5.0)
    np.testing.assert_allclose(result.total, sum(contributions.values()), rtol=1e-15)
    view = protocol.transcript.round("r1")
    assert view.protocol == "plaintext" and not protocol.secure
    assert all(np.array_equal(view.received[k], contributions[k]) for k in contributions)
    assert result.upload_bytes == {k: 80 for k in contributions}


def test_transcript_is_a_copy_not_a_live_reference():
    contributions = vectors()
    protocol = PlaintextProtocol()
    protocol.aggregate("r1", contributions, bound=5.0)
    contributions[0][:] = 0.0
    assert not np.array_equal(protocol.transcript.round("r1").received[0], contributions[0])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda v: v[0].__setitem__(3, np.nan), "NaN or Inf"),
        (lambda v: v[1].__setitem__(0, np.inf), "NaN or Inf"),
        (lambda v: v[2].__setitem__(4, 6.0), "exceeds the declared public bound"),
        (lambda v: v.__setitem__(3, v[3][:-1]), "different lengths"),
        (lambda v: v.__setitem__(0, v[0].astype(np.float32)), "float64"),
    ],
)
def test_bad_contributions_are_refused_before_anything_is_recorded(mutate, message):
    contributions = vectors()
    mutate(contributions)
    protocol = PlaintextProtocol()
    with pytest.raises(InvalidContributionError, match=message):
        protocol.aggregate("r1", contributions, bound=5.0)
    assert protocol.transcript.rounds == []


def test_empty_round_and_bad_bound_are_refused():
    with pytest.raises(InvalidContributionError, match="at least one"):
        PlaintextProtocol().aggregate("r", {}, bound=1.0)
    with pytest.raises(InvalidContributionError, match="bound"):
        PlaintextProtocol().aggregate("r", vectors(), bound=float("inf"))


def test_unknown_protocol_is_refused():
    with pytest.raises(UnknownProtocolError, match="plaintext"):
        make_protocol("rot13")
