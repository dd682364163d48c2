"""A deliberately malicious server, replays and tampering: every client refusal of the spec."""

from dataclasses import replace

import numpy as np
import pytest

from protocols import FixedPoint, InvalidContributionError, MalformedMessageError, ProtocolAbort, ProtocolError
from protocols import ThresholdError, choose_parameters, shamir
from protocols.masking import MaskingClient, MaskingServer
from protocols.masking.client import State
from protocols.masking.messages import (
    MASK_KEY_SHARE, SELF_MASK_SHARE, KeyList, RoundSetup, ShareDelivery, UnmaskRequest, UnmaskResponse,
)

N, LENGTH, BOUND = 10, 32, 4.0


class Round:
    """Honest clients, a server whose outgoing messages the test may rewrite at each stage."""

    def __init__(self, n=N, round_id="r", threshold=None, seed=0):
        rng = np.random.default_rng(seed)
        self.vectors = {c: rng.uniform(-BOUND, BOUND, LENGTH) for c in range(n)}
        self.encoding = FixedPoint.for_round(n, BOUND)
        self.server = MaskingServer(round_id, list(self.vectors), LENGTH, self.encoding, choose_parameters(n, threshold))
        self.clients = {c: MaskingClient(c, v) for c, v in self.vectors.items()}
        self.setup = self.server.setup_message()
        for c, client in self.clients.items():
            self.server.receive_advert(client.advertise(self.setup))
        self.key_list = self.server.key_list()
        for c, client in self.clients.items():
            self.server.receive_shares(client.share_keys(self.key_list))
        self.deliveries = self.server.deliveries()

    def mask_all(self):
        for c, client in self.clients.items():
            self.server.receive_masked(client.masked_input(self.deliveries[c]))
        self.requests = self.server.unmask_requests()
        return self

    @property
    def session(self):
        return self.server.session.session_id

    def request(self, survivors, dropped):
        return UnmaskRequest(self.session, tuple(survivors), tuple(dropped)).to_bytes()


def refuses(client, method, message, match):
    with pytest.raises(ProtocolAbort, match=match):
        getattr(client, method)(message)
    assert client.state is State.ABORTED
    with pytest.raises(ProtocolAbort):  # and stays silent afterwards
        client.unmask(message)


def test_honest_round_through_the_state_machines_is_exact():
    r = Round().mask_all()
    for c, client in r.clients.items():
        r.server.receive_unmask(client.unmask(r.requests[c]))
    expected = np.zeros(LENGTH, dtype=np.uint64)
    for v in r.vectors.values():
        expected += r.encoding.encode(v)
    assert np.array_equal(r.server.finish(), expected)


def test_victim_listed_as_survivor_and_dropped_is_refused_by_every_client():
    """flwr 1.41's SecAgg+ answered this request, handing the server both of the victim's secrets."""
    r = Round().mask_all()
    victim = 3
    everyone = sorted(r.clients)
    request = r.request(everyone, [victim])
    for c, client in r.clients.items():
        refuses(client, "unmask", request, "both as survivors and as dropped")
    with pytest.raises(ThresholdError):
        r.server.finish()


def test_inconsistent_views_never_give_the_server_both_secrets_of_a_victim():
    """Half the holders hear "the victim survived", the rest "the victim dropped": each view is
    consistent on its own, so honest clients answer, but t > (k+1)/2 keeps both secrets out of reach."""
    r = Round().mask_all()
    victim, t = 3, r.server.threshold
    others = [c for c in r.clients if c != victim]
    told_survived, told_dropped = [victim] + others[:5], others[5:]
    seed_shares, key_shares = {}, {}
    for c in told_survived:
        response = UnmaskResponse.from_bytes(r.clients[c].unmask(r.request(sorted(r.clients), [])))
        seed_shares.update({c: s for owner, kind, s in response.shares if owner == victim and kind == SELF_MASK_SHARE})
    for c in told_dropped:
        response = UnmaskResponse.from_bytes(r.clients[c].unmask(r.request(others, [victim])))
        key_shares.update({c: s for owner, kind, s in response.shares if owner == victim and kind == MASK_KEY_SHARE})
    assert len(seed_shares) < t and len(key_shares) < t
    for shares in (seed_shares, key_shares):
        with pytest.raises(ThresholdError):
            shamir.Reconstructor(t).reconstruct(shares)


@pytest.mark.parametrize("survivors, dropped, match", [
    (lambda ids: ids + [ids[0]], lambda ids: [], "twice"),
    (lambda ids: ids[1:], lambda ids: [ids[0]], "this client is listed as dropped"),
    (lambda ids: ids[2:], lambda ids: [ids[1]], "not listed among the survivors"),
    (lambda ids: ids + [99], lambda ids: [], "unknown clients"),
    (lambda ids: ids[:-1], lambda ids: [], "leave clients out"),
    (lambda ids: ids[:6], lambda ids: ids[6:], "fewer than the threshold"),
])
def test_malformed_unmask_requests_are_refused(survivors, dropped, match):
    r = Round().mask_all()
    ids = sorted(r.clients)
    refuses(r.clients[0], "unmask", r.request(survivors(ids), dropped(ids)), match)


def test_a_second_unmask_request_is_refused():
    r = Round().mask_all()
    client = r.clients[0]
    client.unmask(r.requests[0])
    refuses(client, "unmask", r.requests[0], "repeated, replayed or out of order")


def test_messages_from_another_session_are_refused():
    a, b = Round(seed=1).mask_all(), Round(seed=2).mask_all()
    refuses(a.clients[0], "unmask", b.requests[0], "another session")
    fresh = Round(seed=3)
    refuses(fresh.clients[1], "masked_input", replace_receiver(a.deliveries[1], 1), "another session")


def replace_receiver(data, receiver):
    delivery = ShareDelivery.from_bytes(data)
    return replace(delivery, receiver=receiver).to_bytes()


def test_replayed_stage_messages_are_refused():
    r = Round()
    refuses(r.clients[0], "share_keys", r.key_list, "out of order")  # already shared
    r2 = Round()
    refuses(r2.clients[2], "unmask", r2.request(sorted(r2.clients), []), "out of order")  # not masked yet


def test_tampered_share_envelope_is_refused():
    r = Round()
    delivery = ShareDelivery.from_bytes(r.deliveries[4])
    sender, sealed = delivery.envelopes[0]
    bad = bytearray(sealed)
    bad[20] ^= 0x40
    tampered = replace(delivery, envelopes=((sender, bytes(bad)),) + delivery.envelopes[1:]).to_bytes()
    refuses(r.clients[4], "masked_input", tampered, "failed authentication")


def test_envelope_moved_to_another_receiver_is_refused():
    r = Round()
    delivery_to_4 = ShareDelivery.from_bytes(r.deliveries[4])
    delivery_to_5 = ShareDelivery.from_bytes(r.deliveries[5])
    swapped = dict(delivery_to_5.envelopes)
    swapped[0] = dict(delivery_to_4.envelopes)[0]  # client 0's envelope for 4, handed to 5 as if it were 5's
    moved = replace(delivery_to_5, envelopes=tuple(sorted(swapped.items()))).to_bytes()
    refuses(r.clients[5], "masked_input", moved, "failed authentication")


def test_withheld_envelope_is_refused():
    r = Round()
    delivery = ShareDelivery.from_bytes(r.deliveries[4])
    refuses(r.clients[4], "masked_input", replace(delivery, envelopes=delivery.envelopes[1:]).to_bytes(),
            "do not match the neighbours")


@pytest.mark.parametrize("mutate, match", [
    (lambda kl: replace(kl, adverts=kl.adverts + kl.adverts[:1]), "sorted by client or lists a client twice"),
    (lambda kl: replace(kl, adverts=tuple(replace(a, sender=a.sender + 50 * (a.sender == 9)) for a in kl.adverts)),
     "outside the round"),
    (lambda kl: replace(kl, adverts=(replace(kl.adverts[0], mask_key=kl.adverts[1].mask_key),) + kl.adverts[1:]),
     "repeats a public key"),
    (lambda kl: replace(kl, adverts=kl.adverts[:5]), "fewer than the threshold"),
    (lambda kl: replace(kl, round_id="other"), "is for round"),
])
def test_bad_key_lists_are_refused(mutate, match):
    r = Round()
    fresh = MaskingClient(0, r.vectors[0])
    fresh.advertise(r.setup)
    refuses(fresh, "share_keys", mutate(KeyList.from_bytes(r.key_list)).to_bytes(), match)


def test_key_list_without_the_clients_own_keys_is_refused():
    r = Round()
    stranger = MaskingClient(0, r.vectors[0])
    stranger.advertise(r.setup)  # new keys: the key list carries the old ones
    kl = KeyList.from_bytes(r.key_list)
    refuses(stranger, "share_keys", kl.to_bytes(), "own keys")


@pytest.mark.parametrize("change, match", [
    (dict(threshold=5), "unsafe"),
    (dict(participants=tuple(range(1, N + 1))), "not among the round's participants"),
    (dict(participants=(0, 0, 1, 2)), "twice"),
    (dict(fraction_bits=60), "overflow"),
    (dict(length=LENGTH + 1), "holds"),
])
def test_unsafe_round_setups_are_refused_before_any_key_is_sent(change, match):
    r = Round()
    setup = replace(RoundSetup.from_bytes(r.setup), **change)
    client = MaskingClient(0, r.vectors[0])
    refuses(client, "advertise", setup.to_bytes(), match)


def test_out_of_bound_input_is_refused_before_the_key_advertisement():
    r = Round()
    vector = r.vectors[0].copy()
    vector[0] = np.nan
    client = MaskingClient(0, vector)
    with pytest.raises(InvalidContributionError, match="NaN"):
        client.advertise(r.setup)
    assert client.state is State.NEW


def test_server_refuses_duplicate_foreign_and_malformed_client_messages():
    r = Round()
    client = r.clients[0]
    masked = client.masked_input(r.deliveries[0])
    r.server.receive_masked(masked)
    with pytest.raises(ProtocolError, match="second"):
        r.server.receive_masked(masked)
    with pytest.raises(MalformedMessageError):
        r.server.receive_masked(masked[:-3])
    other = Round(seed=9)
    with pytest.raises(ProtocolError, match="another session"):
        r.server.receive_masked(other.clients[1].masked_input(other.deliveries[1]))


def test_a_client_dropping_before_key_sharing_does_not_break_its_neighbours():
    """flwr 1.41 crashed the neighbours of a client that advertised keys and then vanished."""
    r_vectors = Round().vectors
    encoding = FixedPoint.for_round(N, BOUND)
    server = MaskingServer("r", list(r_vectors), LENGTH, encoding, choose_parameters(N))
    clients = {c: MaskingClient(c, v) for c, v in r_vectors.items()}
    setup = server.setup_message()
    for client in clients.values():
        server.receive_advert(client.advertise(setup))
    key_list = server.key_list()
    for c, client in clients.items():
        if c != 6:  # 6 advertised keys, then vanished
            server.receive_shares(client.share_keys(key_list))
    deliveries = server.deliveries()
    for c, message in deliveries.items():
        server.receive_masked(clients[c].masked_input(message))
    for c, message in server.unmask_requests().items():
        server.receive_unmask(clients[c].unmask(message))
    expected = np.zeros(LENGTH, dtype=np.uint64)
    for c, v in r_vectors.items():
        if c != 6:
            expected += encoding.encode(v)
    assert np.array_equal(server.finish(), expected)
