import numpy as np
import pytest

from protocols import InvalidContributionError, PlaintextProtocol, UnknownProtocolError, make_protocol


def vectors(n=4, length=10, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(-5, 5, length) for k in range(n)}


def test_plaintext_returns_the_sum_and_records_what_the_server_saw():
    contributions = vectors()
    protocol = make_protocol("plaintext", record=True)
    result = protocol.aggregate("r1", contributions, bound=5.0)
    np.testing.assert_allclose(result.total, sum(contributions.values()), rtol=1e-15)
    view = result.view
    assert view.protocol == "plaintext" and not view.secure and not protocol.secure
    assert all(np.array_equal(view.inputs()[k], contributions[k]) for k in contributions)
    assert result.upload_bytes == {k: 80 for k in contributions}


def test_recorded_view_is_a_copy_not_a_live_reference():
    contributions = vectors()
    result = PlaintextProtocol(record=True).aggregate("r1", contributions, bound=5.0)
    contributions[0][:] = 0.0
    assert not np.array_equal(result.view.inputs()[0], contributions[0])


def test_nothing_is_recorded_unless_asked():
    assert PlaintextProtocol().aggregate("r1", vectors(), bound=5.0).view is None


def test_a_forced_dropout_leaves_the_client_out_of_the_sum():
    contributions = vectors()
    result = PlaintextProtocol(record=True).aggregate("r1", contributions, bound=5.0, drop={"input": [2]})
    np.testing.assert_allclose(result.total, sum(v for k, v in contributions.items() if k != 2), rtol=1e-15)
    assert result.included == {0, 1, 3} and result.view.dropped == {"input": (2,)}
    assert set(result.view.inputs()) == {0, 1, 3}


@pytest.mark.parametrize("drop, message", [({"share": [1]}, "no stage"), ({"input": [9]}, "not in the round")])
def test_impossible_dropouts_are_refused(drop, message):
    from protocols import ParameterError

    with pytest.raises(ParameterError, match=message):
        PlaintextProtocol().aggregate("r1", vectors(), bound=5.0, drop=drop)


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
    protocol = PlaintextProtocol(record=True)
    with pytest.raises(InvalidContributionError, match=message):
        protocol.aggregate("r1", contributions, bound=5.0)


def test_empty_round_and_bad_bound_are_refused():
    with pytest.raises(InvalidContributionError, match="at least one"):
        PlaintextProtocol().aggregate("r", {}, bound=1.0)
    with pytest.raises(InvalidContributionError, match="bound"):
        PlaintextProtocol().aggregate("r", vectors(), bound=float("inf"))


def test_unknown_protocol_is_refused():
    with pytest.raises(UnknownProtocolError, match="plaintext"):
        make_protocol("rot13")
