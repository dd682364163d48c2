import numpy as np
import pytest

from protocols import InvalidContributionError, PlaintextProtocol, TooFewClientsError, UnknownProtocolError, make_protocol


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


# -- the job's minimum aggregation size m (protocols/minimum.py) ---------------------------------------------
@pytest.mark.parametrize("name", ["mask", "he-bfv"])
def test_the_jobs_minimum_is_in_the_roster_and_the_honest_server_refuses_smaller_rounds(name):
    protocol = make_protocol(name)
    protocol.enrol(range(6))
    assert protocol.roster.config["protocol"]["min_clients"] == 5  # ⌊2 · 6/3⌋ + 1
    vs = vectors(6)
    result = protocol.aggregate("r1", {c: vs[c] for c in range(1, 6)}, bound=5.0)
    assert result.included == set(range(1, 6)) and result.details["min_clients"] == 5
    with pytest.raises(TooFewClientsError, match="holds 4 clients, fewer than 5, the job's minimum"):
        protocol.aggregate("r2", {c: vs[c] for c in range(4)}, bound=5.0)


@pytest.mark.parametrize("name", ["mask", "he-bfv"])
def test_dropouts_that_leave_fewer_than_the_minimum_abandon_the_round(name):
    protocol = make_protocol(name, min_clients=6)
    with pytest.raises(TooFewClientsError, match="holds 5 clients, fewer than 6"):
        protocol.aggregate("r", vectors(6), bound=5.0, drop={"input": [3]})


@pytest.mark.parametrize("name", ["mask", "he-bfv"])
@pytest.mark.parametrize("value", [0, 7, True, 2.5])
def test_a_minimum_outside_one_to_the_jobs_clients_is_refused(name, value):
    from protocols import ParameterError

    with pytest.raises(ParameterError, match="min_clients must be a whole number from 1 to the job's 6 clients"):
        make_protocol(name, min_clients=value).enrol(range(6))


@pytest.mark.parametrize("value", [None, 0, 5, "3"])
def test_a_roster_without_a_usable_minimum_is_refused(value):
    from protocols import RosterError, enrol
    from protocols.he.session import HEOptions
    from protocols.masking import MaskingOptions

    for options, read in ((MaskingOptions().to_json(4), MaskingOptions.from_roster),
                          (HEOptions("bfv", 4, 1, None, 3).to_json(), HEOptions.from_roster)):
        if value is None:
            del options["min_clients"]
        else:
            options["min_clients"] = value
        roster, _ = enrol("job", range(4), {"protocol": options}, key_holder=0)
        with pytest.raises(RosterError, match="malformed"):
            read(roster)
