"""The masking protocol end to end: exact sums, dropouts at every stage, thresholds, transcripts."""

import math

import numpy as np
import pytest

from protocols import FixedPoint, InvalidContributionError, ThresholdError, choose_parameters, make_protocol
from protocols.masking import STAGES, MaskingProtocol, draw_dropouts, simulate_round


def vectors(n, length=64, bound=4.0, seed=0):
    rng = np.random.default_rng(seed)
    return {c: rng.uniform(-bound, bound, length) for c in range(n)}


def fixed_point_sum(vs, encoding, clients=None):
    total = np.zeros(next(iter(vs.values())).shape[0], dtype=np.uint64)
    for c in sorted(vs if clients is None else clients):
        total += encoding.encode(vs[c])
    return total


@pytest.mark.parametrize("n", [2, 3, 10, 100])
def test_sum_equals_the_plaintext_fixed_point_sum_bit_for_bit(n):
    vs = vectors(n)
    encoding, parameters = FixedPoint.for_round(n, 4.0), choose_parameters(n)
    result = simulate_round("r", vs, encoding, parameters)
    assert np.array_equal(result.words, fixed_point_sum(vs, encoding))
    assert result.included == set(vs)
    exact = np.array([math.fsum(column) for column in np.array(list(vs.values())).T])  # correctly rounded
    assert np.all(np.abs(result.total - exact) <= encoding.sum_error_bound + np.spacing(np.abs(exact)))
    assert parameters.complete == (n <= 10)


@pytest.mark.parametrize("stage", STAGES)
def test_dropouts_at_every_stage_up_to_n_minus_t_stay_exact(stage):
    n = 10
    vs = vectors(n, seed=1)
    encoding, parameters = FixedPoint.for_round(n, 4.0), choose_parameters(n)
    dropping = frozenset(range(n - parameters.threshold))  # the most any round can lose
    result = simulate_round("r", vs, encoding, parameters, {stage: dropping})
    kept = set(vs) - dropping if stage in ("advertise", "share", "input") else set(vs)
    assert result.included == kept
    assert np.array_equal(result.words, fixed_point_sum(vs, encoding, kept))


def test_dropouts_spread_over_all_stages_on_a_k_regular_graph():
    n = 60
    vs = vectors(n, length=32, seed=2)
    encoding, parameters = FixedPoint.for_round(n, 4.0), choose_parameters(n, neighbours=20)
    drop = {"advertise": {0}, "share": {7, 8}, "input": {20, 33, 41}, "unmask": {50, 51}}
    result = simulate_round("r", vs, encoding, parameters, drop)
    kept = set(vs) - {0, 7, 8, 20, 33, 41}
    assert not parameters.complete and result.included == kept
    assert np.array_equal(result.words, fixed_point_sum(vs, encoding, kept))


@pytest.mark.parametrize("stage", STAGES)
def test_below_threshold_fails_cleanly_without_revealing_secrets(stage):
    n = 10
    vs = vectors(n, seed=3)
    encoding, parameters = FixedPoint.for_round(n, 4.0), choose_parameters(n)
    with pytest.raises(ThresholdError):
        simulate_round("r", vs, encoding, parameters, {stage: frozenset(range(n - parameters.threshold + 1))})


def test_below_threshold_at_unmask_leaves_the_server_short_of_every_dropped_key():
    """The unmask stage fails: whatever shares the server got, fewer than t of any secret arrived."""
    n, t = 10, 7
    vs = vectors(n, seed=4)
    encoding, parameters = FixedPoint.for_round(n, 4.0), choose_parameters(n, threshold=t)
    with pytest.raises(ThresholdError, match="unmask responses"):
        simulate_round("r", vs, encoding, parameters, {"unmask": frozenset(range(4))})


def test_protocol_interface_reports_encoding_parameters_and_bytes_per_stage():
    vs = vectors(12, length=1000)
    protocol = make_protocol("mask", dropout={"input": 0.25}, dropout_seed=5, record=True)
    result = protocol.aggregate("afl/statistics", vs, bound=4.0)
    details = result.details
    assert len(result.included) == 9 and details["dropped"]["input"] == sorted(set(vs) - result.included)
    kept = sorted(result.included)
    encoding = FixedPoint.for_round(12, 4.0)
    assert details["fraction_bits"] == encoding.fraction_bits
    np.testing.assert_array_equal(result.total, encoding.decode(fixed_point_sum(vs, encoding, kept)))
    masked_upload = details["stages"]["input"]["upload_bytes"]["max"]
    assert 8000 <= masked_upload <= 8000 + 200  # L words plus a small header
    for c in vs:
        assert result.upload_bytes[c] == sum(len(result.view.messages[s].get(c, b"")) for s in STAGES)


def test_transcript_holds_masked_vectors_that_differ_from_the_inputs():
    vs = vectors(5, length=2000)
    result = MaskingProtocol(record=True).aggregate("r", vs, bound=4.0)
    view = result.view
    encoding = FixedPoint.for_round(5, 4.0)
    assert set(view.inputs()) == set(vs) and view.secure
    for c, masked in view.inputs().items():
        assert masked.dtype == np.uint64
        assert np.mean(masked == encoding.encode(vs[c])) < 0.01
    total = np.zeros(2000, dtype=np.uint64)
    for masked in view.inputs().values():
        total += masked
    assert not np.array_equal(total, fixed_point_sum(vs, encoding))  # the self masks still hide the sum
    np.testing.assert_array_equal(view.total, result.total)
    assert set(view.messages) == set(STAGES) and set(view.messages["unmask"]) == set(vs)


def test_masked_vector_is_uniform_and_independent_of_the_input():
    """Byte-frequency chi-square over a large masked vector, for an all-zero and an extreme input."""
    from scipy.stats import chisquare

    n, length = 3, 1 << 17
    for fill in (0.0, 4.0):
        vs = {c: np.full(length, fill) for c in range(n)}
        masked = MaskingProtocol(record=True).aggregate("r", vs, bound=4.0).view.inputs()[0]
        counts = np.bincount(masked.view(np.uint8), minlength=256)
        assert chisquare(counts).pvalue > 1e-4
        # every bit position of the 64-bit words is balanced (the input's bits are constant)
        bits = np.unpackbits(masked.view(np.uint8)).reshape(-1, 64).mean(axis=0)
        assert np.all(np.abs(bits - 0.5) < 0.01)


def test_out_of_range_input_is_refused_before_any_message():
    vs = vectors(4)
    vs[2][5] = 4.5
    with pytest.raises(InvalidContributionError, match="bound"):
        MaskingProtocol(record=True).aggregate("r", vs, bound=4.0)


def test_dropout_draws_are_seeded_and_respect_fractions():
    clients = list(range(40))
    a = draw_dropouts(clients, {"share": 0.1, "unmask": 0.05}, seed=3)
    assert a == draw_dropouts(clients, {"share": 0.1, "unmask": 0.05}, seed=3)
    assert len(a["share"]) == 4 and len(a["unmask"]) == 2 and not a["share"] & a["unmask"]
    from protocols import ParameterError

    with pytest.raises(ParameterError, match="stage"):
        MaskingProtocol(dropout={"later": 0.1})
    with pytest.raises(ParameterError, match="every client"):
        MaskingProtocol(dropout={"share": 0.6, "input": 0.5})


def test_the_same_input_is_masked_afresh_in_every_round():
    vs = vectors(4, length=512)
    protocol = MaskingProtocol(record=True, ledger=False)  # with its ledger a client refuses the same vector twice
    one, two = (protocol.aggregate(r, vs, bound=4.0).view for r in ("r1", "r2"))
    assert np.mean(one.inputs()[0] == two.inputs()[0]) < 0.01
    np.testing.assert_array_equal(one.total, two.total)


def test_a_client_restored_from_its_snapshot_before_every_stage_completes_the_round_exactly(tmp_path):
    """A deployment runs each stage in a fresh process (a Flower SuperNode): the client's snapshot alone
    carries it from one stage to the next, its ledger included, and keeps its state machine's refusals. Once the
    round is open it no longer carries the plain vector: the encoding until the masked input left, then neither."""
    from protocols import ContributionLedger, MalformedMessageError, ProtocolAbort, RoundTerms, Statistic
    from protocols.masking.client import MaskingClient
    from protocols.masking.server import MaskingServer
    from protocols.masking.simulation import enrol_for

    n, length = 4, 4096
    vs = vectors(n, length=length, seed=5)
    encoding, parameters = FixedPoint.for_round(n, 4.0), choose_parameters(n)
    members, terms = enrol_for(vs, encoding, parameters), RoundTerms("r", encoding.bound)
    server = MaskingServer(members[0].roster, terms, list(vs), length, encoding, parameters)
    ledgers = {c: ContributionLedger.in_directory(tmp_path, c) for c in vs}
    states = {c: MaskingClient(members[c], vs[c], terms, ledgers[c]).snapshot() for c in vs}
    vector_bytes = 8 * length

    def stage(messages, step, receive):
        for c, message in messages.items():
            client = MaskingClient.restore(states[c], members[c], ledgers[c])
            receive(step(client, message))
            states[c] = client.snapshot()

    assert all(len(state) > vector_bytes for state in states.values())  # before the round: the vector itself
    stage(dict.fromkeys(vs, server.setup_message()), MaskingClient.advertise, server.receive_advert)
    assert all(vector_bytes < len(state) < 1.5 * vector_bytes for state in states.values())  # the encoding only
    stage(dict.fromkeys(vs, server.key_list()), MaskingClient.share_keys, server.receive_shares)
    stage(server.deliveries(), MaskingClient.masked_input, server.receive_masked)
    assert all(len(state) < vector_bytes / 4 for state in states.values())
    stage(server.consistency_requests(), MaskingClient.sign_consistency, server.receive_signature)
    requests = server.unmask_requests()
    stage(requests, MaskingClient.unmask, server.receive_unmask)
    assert np.array_equal(server.finish(), fixed_point_sum(vs, encoding))
    for c in vs:  # each claimed its statistic once, across processes, named by the vector it no longer carried
        assert ledgers[c].entries() == [Statistic.of(members[c].roster.digest, terms, vs[c])]
    with pytest.raises(ProtocolAbort, match="state 'done'"):  # a restored client still refuses a replay
        MaskingClient.restore(states[0], members[0], ledgers[0]).unmask(requests[0])
    with pytest.raises(MalformedMessageError):
        MaskingClient.restore(states[0][:-1], members[0], ledgers[0])
