"""A malicious masking server (attacks/protocol/masking.py) against our clients, and against doubles.

Every attack meets a typed refusal from honest clients and rebuilds nothing; against a double with
the relevant check removed (attacks/protocol/doubles.py) the same driver rebuilds the victim's
fixed-point input bit for bit, which shows the attack is real. Then the refusals the spec lists,
driven message by message.
"""

from dataclasses import replace

import numpy as np
import pytest

from attacks.protocol import masking as attack
from attacks.protocol.doubles import (
    IgnoresBroadcastClient, NoAdvertCheckClient, NoCertificateClient, NoConsistencyClient, NoHeaderClient,
    NoMinimumClient, NoQuorumClient, NoSetChecksClient, PreIssueClient, ReplayableClient, ServerBoundClient,
)
from attacks.protocol.jobs import BOUND, LENGTH, MaskingJob
from attacks.protocol.scenarios import (
    bound_probe, job_with, small_round, split_model_round, split_views_round, sybil_round, victim_words,
)
from protocols import AuthenticationError, InvalidContributionError, MalformedMessageError
from protocols import ProtocolAbort, ProtocolError, TooFewClientsError
from protocols.masking import MaskingClient, MaskingOptions, MaskingServer
from protocols.masking.client import State
from protocols.masking.messages import KeyList, RoundSetup, ShareDelivery, SurvivorSets
from protocols.terms import RoundTerms, broadcast_digest


# -- finding 1 ---------------------------------------------------------------------------------------
# Findings 1 and 2 declare many clients dropped, so a job's default m (protocols/minimum.py) refuses their
# proposals too; jobs with m = 2 (the floor before it) show that the consistency checks stop them alone.
@pytest.mark.parametrize("n, options, double_class", [
    (9, MaskingOptions(threshold=5, min_clients=2), NoConsistencyClient),  # complete graph, the lowest threshold
    (40, MaskingOptions(neighbours=10), PreIssueClient),  # SecAgg+: the neighbourhood check stops it too
])
def test_malicious_restricted_view_finding_1(n, options, double_class):
    """No colluder: the victim masks with t − 1 peers only, which everyone else is told dropped."""
    double = job_with(double_class, MaskingClient, n=n, options=options)
    outcome = attack.restricted_view(double.server, double.clients, 0)
    assert outcome.leaked and np.array_equal(outcome.recovered, victim_words(double))

    for client_class in (MaskingClient, NoHeaderClient):  # the quorum alone stops the personalised proposals
        honest = job_with(client_class, MaskingClient, n=n, options=options)
        outcome = attack.restricted_view(honest.server, honest.clients, 0)
        assert not outcome.leaked and outcome.refusals
        assert all(isinstance(e, ProtocolAbort) for e in outcome.refusals.values())
        if double_class is NoConsistencyClient:  # complete graph: every personalised proposal is short of q
            assert len(outcome.refusals) == n - 1
            assert all("signed these survivor sets" in str(e) for e in outcome.refusals.values())


def test_malicious_survivor_masked_with_another_key_sharer_list_is_refused_under_a_certified_proposal():
    """The restricted view under one proposal everybody but the victim can sign: certified, yet every
    neighbour of the victim refuses, because the victim's signed masked input names another list."""
    job = MaskingJob(n=10)
    outcome = attack.restricted_view(job.server, job.clients, 0, false_dropouts=False)
    assert not outcome.leaked and set(outcome.refusals) == set(range(1, 10))
    assert all("client 0's masked input was not made with the proposed key-sharer list" in str(e)
               for e in outcome.refusals.values())


# -- finding 2 ---------------------------------------------------------------------------------------
def test_malicious_neighbourhood_wipe_finding_2():
    """SecAgg+ (n = 30, k = 10): each of the victim's neighbours is told the others dropped."""
    options = MaskingOptions(neighbours=10, min_clients=2)
    double = job_with(NoQuorumClient, MaskingClient, n=30, options=options)
    outcome = attack.neighbourhood_wipe(double.server, double.clients, 0)
    assert outcome.leaked and np.array_equal(outcome.recovered, victim_words(double))

    honest = MaskingJob(n=30, options=options)
    outcome = attack.neighbourhood_wipe(honest.server, honest.clients, 0)
    assert not outcome.leaked
    around = honest.server.session.graph[0]
    assert around <= set(outcome.refusals)  # every neighbour refused
    assert all("share holders survive" in str(outcome.refusals[c]) for c in around)


# -- finding 3 ---------------------------------------------------------------------------------------
def test_malicious_split_model_finding_3():
    """The others were sent a model under which their update is known (here: zero); one setup for all."""
    job, outcome = split_model_round(IgnoresBroadcastClient)
    assert outcome.leaked and np.array_equal(outcome.recovered, victim_words(job))
    job, outcome = split_model_round(MaskingClient)
    assert not outcome.leaked and set(outcome.refusals) == set(job.vectors) - {0}
    assert all("broadcast (model / state) other than" in str(e) for e in outcome.refusals.values())


def test_malicious_setup_per_model_clients_cannot_verify_each_others_keys():
    """The other way to split a round: a setup per model. Key advertisements are signed under the setup each
    client saw, so no client accepts a neighbour that saw another."""
    job = MaskingJob(n=5)
    other = MaskingServer(job.roster, RoundTerms("r", BOUND, broadcast_digest({"w": np.zeros(3)})), list(job.vectors),
                          LENGTH, job.encoding, job.parameters)
    job.clients[0] = MaskingClient(job.members[0], job.vectors[0], RoundTerms("r", BOUND, broadcast_digest({"w": np.zeros(3)})))
    adverts = {c: client.advertise(job.server.setup_message() if c else other.setup_message())
               for c, client in job.clients.items()}
    for c in (1, 2, 3, 4):
        job.server.receive_advert(adverts[c])
    with pytest.raises(AuthenticationError, match="client 0"):
        job.server.receive_advert(adverts[0])  # the server itself sees it; a lying one would pass it on
    forged = KeyList("r", tuple(sorted((KeyList.from_bytes(job.server.key_list()).adverts
                                        + (attack.KeyAdvert.from_bytes(adverts[0]),)), key=lambda a: a.sender)))
    refuses(job.clients[1], "share_keys", forged.to_bytes(), "for another session, round or configuration")


# -- finding 4 ---------------------------------------------------------------------------------------
def test_malicious_bound_oracle_finding_4():
    """40 fresh rounds bisect the victim's largest |value| to 8 digits when the client takes B from the server."""
    job = MaskingJob(n=5)
    outcome = attack.bound_oracle(bound_probe(job, ServerBoundClient), BOUND, rounds=40)
    largest = np.abs(job.vectors[0]).max()
    assert outcome.leaked and abs(outcome.recovered[0] - largest) <= largest * 1e-8

    answers = []
    for seed in (1, 2):  # two different victims: the honest client's answers do not depend on its data
        other = MaskingJob(n=5, seed=seed)
        outcome = attack.bound_oracle(bound_probe(other, MaskingClient), BOUND, rounds=40)
        assert not outcome.leaked and all("not the job's public bound" in str(e) for e in outcome.refusals.values())
        answers.append(outcome.notes["answers"])
    assert answers[0] == answers[1] == [False] * 40


@pytest.mark.parametrize("bound", [float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 2.0])
def test_malicious_setup_bound_other_than_the_jobs_is_refused_typed_and_aborts(bound):
    """Finding 8: NaN / ±Inf / negative / zero (or merely different) bounds: a typed refusal, state ABORTED."""
    job = MaskingJob(n=5)
    setup = replace(RoundSetup.from_bytes(job.server.setup_message()), bound=bound)
    refuses(job.clients[0], "advertise", setup.to_bytes(), "bound")
    fraction = replace(RoundSetup.from_bytes(job.server.setup_message()), fraction_bits=job.encoding.fraction_bits - 1)
    refuses(job.clients[1], "advertise", fraction.to_bytes(), "fraction bits")


def test_malicious_message_causing_any_error_aborts_the_client(monkeypatch):
    """Finding 8: an error of any kind in a stage is a typed refusal and leaves the client ABORTED."""
    job = MaskingJob(n=5)
    client = job.clients[0]
    monkeypatch.setattr("protocols.masking.client.KeyPair.generate", lambda: (_ for _ in ()).throw(OverflowError("boom")))
    with pytest.raises(ProtocolAbort, match="OverflowError: boom"):
        client.advertise(job.server.setup_message())
    assert client.state is State.ABORTED


# -- attacks refused before issue 12 -------------------------------------------------------------------
def test_malicious_victim_listed_as_survivor_and_dropped():
    """flwr 1.41's SecAgg+ answered this request, handing the server both of the victim's secrets."""
    double = job_with(NoSetChecksClient, MaskingClient, n=10)
    outcome = attack.survivor_and_dropped(double.server, double.clients, 0)
    assert outcome.leaked and np.array_equal(outcome.recovered, victim_words(double))
    honest = MaskingJob(n=10)
    outcome = attack.survivor_and_dropped(honest.server, honest.clients, 0)
    assert not outcome.leaked and len(outcome.refusals) == 10
    assert all("both as survivors and as dropped" in str(e) for e in outcome.refusals.values())


def test_malicious_split_views_with_colluders():
    """SecAgg+ (n = 30, k = 10, t = 8) with 5 colluding neighbours of the victim (2t ≤ k + 1 + c): some of its
    holders hear "the victim survived", the others "it dropped". Only the quorum stops it (c < 2q − n = 12)."""
    job, outcome = split_views_round(NoCertificateClient)
    assert outcome.leaked and np.array_equal(outcome.recovered, victim_words(job))
    job, outcome = split_views_round(MaskingClient)
    assert not outcome.leaked and outcome.refusals
    assert all("signed these survivor sets" in str(e) for e in outcome.refusals.values())


def test_malicious_replayed_unmask_request():
    """After an honest certified unmask (self-mask seeds), the request replayed with the victim dropped."""
    double = job_with(ReplayableClient, MaskingClient, n=10)
    outcome = attack.replayed_unmask(double.server, double.clients, 0)
    assert outcome.leaked and np.array_equal(outcome.recovered, victim_words(double))
    honest = MaskingJob(n=10)
    outcome = attack.replayed_unmask(honest.server, honest.clients, 0)
    assert not outcome.leaked and len(outcome.refusals) == 10
    assert all("repeated, replayed or out of order" in str(e) for e in outcome.refusals.values())


def test_malicious_substituted_keys_key_list_split():
    """The victim's key list carries keys the server made for everyone else (it cannot sign them)."""
    double = job_with(MaskingClient, NoAdvertCheckClient, n=10)
    outcome = attack.substituted_keys(double.server, double.clients, 0)
    assert outcome.leaked and np.array_equal(outcome.recovered, victim_words(double))
    honest = MaskingJob(n=10)
    outcome = attack.substituted_keys(honest.server, honest.clients, 0)
    assert not outcome.leaked and isinstance(outcome.refusals[0], AuthenticationError)


def test_malicious_sybil_isolation_without_an_operator_roster_and_stopped_by_one():
    """Without a roster the server did not write, Sybil isolation stays possible with our honest client code;
    the operator's roster stops it before the victim sends anything."""
    operator, outcome = sybil_round(victim_roster_from_server=True)
    assert outcome.leaked and np.array_equal(outcome.recovered, victim_words(operator))
    operator, outcome = sybil_round(victim_roster_from_server=False)
    assert not outcome.leaked and "another job roster" in str(outcome.refusals[0])


# -- finding 9 -----------------------------------------------------------------------------------------
def test_malicious_client_sealing_a_share_outside_the_field_is_named_by_its_neighbours():
    job = MaskingJob(n=6)
    job.clients[3] = attack.OverflowSharer(job.members[3], job.vectors[3], job.terms)
    refusals = {}
    attack.share(job.server, job.clients, refusals)
    attack.mask(job.server, job.clients, {c: job.server.key_sharers() for c in job.vectors}, refusals)
    assert set(refusals) == set(job.vectors) - {3}
    assert all("client 3 sent a share that is not an element of the field" in str(e) for e in refusals.values())


def test_malicious_client_revealing_a_share_outside_the_field_is_refused_on_receipt_naming_it():
    job = MaskingJob(n=6)
    job.clients[3] = attack.OverflowRevealer(job.members[3], job.vectors[3], job.terms)
    with pytest.raises(ProtocolError, match="client 3 returned a share of client .* not a field element"):
        attack.honest_round(job.server, job.clients)


# -- the refusals of the spec, one message at a time -----------------------------------------------------
def refuses(client, method, message, match):
    with pytest.raises(ProtocolAbort, match=match):
        getattr(client, method)(message)
    assert client.state is State.ABORTED
    with pytest.raises(ProtocolAbort):  # and stays silent afterwards
        client.unmask(message)


class Round(MaskingJob):
    """Honest clients; a server whose outgoing messages the test may rewrite at each stage."""

    def __init__(self, n=10, seed=0, **kwargs):
        super().__init__(n=n, seed=seed, **kwargs)
        self.setup = self.server.setup_message()
        for client in self.clients.values():
            self.server.receive_advert(client.advertise(self.setup))
        self.key_list = self.server.key_list()
        for client in self.clients.values():
            self.server.receive_shares(client.share_keys(self.key_list))
        self.deliveries = self.server.deliveries()

    def mask_all(self):
        for c, client in self.clients.items():
            self.server.receive_masked(client.masked_input(self.deliveries[c]))
        for c, request in self.server.consistency_requests().items():
            self.server.receive_signature(self.clients[c].sign_consistency(request))
        self.requests = self.server.unmask_requests()
        return self

    @property
    def sets(self):
        return self.server.survivor_sets()

    def request(self, sets, receiver=0):
        return self.server.unmask_request(receiver, sets, self.server.signatures)


def test_honest_round_through_the_state_machines_is_exact():
    r = Round().mask_all()
    for c, client in r.clients.items():
        r.server.receive_unmask(client.unmask(r.requests[c]))
    assert np.array_equal(r.server.finish(), r.expected())


@pytest.mark.parametrize("mutate, match", [
    (lambda s: replace(s, survivors=s.survivors + (s.survivors[0],)), "twice or is not sorted"),
    (lambda s: SurvivorSets(s.key_sharers, s.survivors[1:], s.survivors[:1]), "this client is listed as dropped"),
    (lambda s: SurvivorSets(s.key_sharers[1:], s.survivors[1:], ()), "not listed among the survivors"),
    (lambda s: replace(s, key_sharers=s.key_sharers + (99,), survivors=s.survivors + (99,)), "not the one this client"),
    (lambda s: replace(s, survivors=s.survivors[:-1]), "leave clients out"),
    (lambda s: SurvivorSets(s.key_sharers, s.survivors[:6], s.survivors[6:]), "fewer than the threshold"),
    (lambda s: SurvivorSets(s.key_sharers, s.survivors[:-1], s.survivors[-1:]), "not the ones this client signed"),
])
def test_malicious_unmask_requests_with_other_sets_are_refused(mutate, match):
    r = Round().mask_all()
    refuses(r.clients[0], "unmask", r.request(mutate(r.sets)), match)


def test_malicious_unmask_request_without_a_quorum_is_refused():
    r = Round().mask_all()
    short = dict(list(r.server.signatures.items())[: r.server.session.quorum - 1])
    refuses(r.clients[0], "unmask", r.server.unmask_request(0, r.sets, short), "must, so that no other sets")
    forged = dict(r.server.signatures)
    forged[5] = forged[4]
    refuses(r.clients[1], "unmask", r.server.unmask_request(1, r.sets, forged), "signature .* does not verify")


def test_malicious_second_unmask_request_is_refused():
    r = Round().mask_all()
    client = r.clients[0]
    client.unmask(r.requests[0])
    refuses(client, "unmask", r.requests[0], "repeated, replayed or out of order")


def test_malicious_messages_from_another_session_are_refused():
    a, b = Round(seed=1).mask_all(), Round(seed=2).mask_all()
    refuses(a.clients[0], "unmask", b.requests[0], "another session")
    fresh = Round(seed=3)
    refuses(fresh.clients[1], "masked_input", replace_receiver(a.deliveries[1], 1), "another session")


def replace_receiver(data, receiver):
    return replace(ShareDelivery.from_bytes(data), receiver=receiver).to_bytes()


def test_malicious_replayed_stage_messages_are_refused():
    r = Round()
    refuses(r.clients[0], "share_keys", r.key_list, "out of order")  # already shared
    r2 = Round()
    refuses(r2.clients[2], "unmask", r2.request(r2.server.survivor_sets(), 2), "out of order")  # not masked yet


def test_malicious_bit_flip_in_a_share_envelope_is_refused():
    r = Round()
    delivery = ShareDelivery.from_bytes(r.deliveries[4])
    sender, sealed = delivery.envelopes[0]
    bad = bytearray(sealed)
    bad[20] ^= 0x40
    tampered = replace(delivery, envelopes=((sender, bytes(bad)),) + delivery.envelopes[1:]).to_bytes()
    refuses(r.clients[4], "masked_input", tampered, "failed authentication")


def test_malicious_envelope_moved_to_another_receiver_is_refused():
    r = Round()
    delivery_to_4 = ShareDelivery.from_bytes(r.deliveries[4])
    delivery_to_5 = ShareDelivery.from_bytes(r.deliveries[5])
    swapped = dict(delivery_to_5.envelopes)
    swapped[0] = dict(delivery_to_4.envelopes)[0]  # client 0's envelope for 4, handed to 5 as if it were 5's
    moved = replace(delivery_to_5, envelopes=tuple(sorted(swapped.items()))).to_bytes()
    refuses(r.clients[5], "masked_input", moved, "failed authentication")


def test_malicious_withheld_envelope_is_refused():
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
    (lambda kl: replace(kl, adverts=kl.adverts[:5]), "must sign the survivor sets"),
    (lambda kl: replace(kl, round_id="other"), "is for round"),
    (lambda kl: replace(kl, adverts=tuple(replace(a, signature=bytes(64) if a.sender else a.signature)
                                          for a in kl.adverts)), "does not verify"),
])
def test_malicious_key_lists_are_refused(mutate, match):
    job = MaskingJob(n=10)
    setup = job.server.setup_message()
    for client in job.clients.values():
        job.server.receive_advert(client.advertise(setup))
    refuses(job.clients[0], "share_keys", mutate(KeyList.from_bytes(job.server.key_list())).to_bytes(), match)


def test_malicious_key_list_without_the_clients_own_keys_is_refused():
    r = Round()
    stranger = MaskingClient(r.members[0], r.vectors[0], r.terms)
    stranger.advertise(r.setup)  # new keys: the key list carries the old ones
    refuses(stranger, "share_keys", r.key_list, "own keys")


@pytest.mark.parametrize("change, match", [
    (dict(threshold=5), "unsafe"),
    (dict(threshold=8), "graph"),
    (dict(participants=tuple(range(1, 11))), "not in the job's roster"),
    (dict(participants=(0, 0, 1, 2)), "twice"),
    (dict(fraction_bits=60), "fraction bits"),
    (dict(length=LENGTH + 1), "holds"),
    (dict(round_id="other"), "is for round"),
    (dict(roster=bytes(32)), "another job roster"),
])
def test_malicious_setups_are_refused_before_any_key_is_sent(change, match):
    r = Round()
    setup = replace(RoundSetup.from_bytes(r.setup), **change)
    client = MaskingClient(r.members[0], r.vectors[0], r.terms)
    refuses(client, "advertise", setup.to_bytes(), match)


def test_out_of_bound_input_is_refused_before_the_key_advertisement():
    r = Round()
    vector = r.vectors[0].copy()
    vector[0] = np.nan
    client = MaskingClient(r.members[0], vector, r.terms)
    with pytest.raises(InvalidContributionError, match="NaN"):
        client.advertise(r.setup)
    assert client.state is State.ABORTED


def test_malicious_client_messages_duplicate_foreign_unsigned_malformed_are_refused_by_the_server():
    r = Round()
    masked = r.clients[0].masked_input(r.deliveries[0])
    r.server.receive_masked(masked)
    with pytest.raises(ProtocolError, match="second"):
        r.server.receive_masked(masked)
    with pytest.raises(MalformedMessageError):
        r.server.receive_masked(masked[:-3])
    other = Round(seed=9)
    with pytest.raises(ProtocolError, match="another session"):
        r.server.receive_masked(other.clients[1].masked_input(other.deliveries[1]))
    flipped = bytearray(r.clients[1].masked_input(r.deliveries[1]))
    flipped[-100] ^= 1  # inside the signature
    with pytest.raises(AuthenticationError, match="client 1"):
        r.server.receive_masked(bytes(flipped))


def test_a_client_dropping_before_key_sharing_does_not_break_its_neighbours():
    """flwr 1.41 crashed the neighbours of a client that advertised keys and then vanished."""
    job = MaskingJob(n=10)
    setup = job.server.setup_message()
    for client in job.clients.values():
        job.server.receive_advert(client.advertise(setup))
    key_list = job.server.key_list()
    for c, client in job.clients.items():
        if c != 6:  # 6 advertised keys, then vanished
            job.server.receive_shares(client.share_keys(key_list))
    for c, message in job.server.deliveries().items():
        job.server.receive_masked(job.clients[c].masked_input(message))
    for c, message in job.server.consistency_requests().items():
        job.server.receive_signature(job.clients[c].sign_consistency(message))
    for c, message in job.server.unmask_requests().items():
        job.server.receive_unmask(job.clients[c].unmask(message))
    assert np.array_equal(job.server.finish(), job.expected(set(job.vectors) - {6}))


# -- the server chooses how many clients a round has ------------------------------------------------------
@pytest.mark.parametrize("colluders", [1, 5])  # rounds of 2 and of m − 1 = 6 clients
def test_malicious_round_of_the_victim_and_colluders_below_the_minimum(colluders):
    """No Sybil needed: the colluders are roster clients. The double takes part in the small round and the sum
    minus the colluders' inputs is its vector; our client refuses the setup before sending anything."""
    assert MaskingJob(n=10).options.to_json(10)["min_clients"] == 7
    _, outcome, words = small_round(NoMinimumClient, colluders)
    assert outcome.leaked and np.array_equal(outcome.recovered, words)

    clients, outcome, _ = small_round(MaskingClient, colluders)
    assert not outcome.leaked and outcome.notes["victim_sent"] == []
    assert isinstance(outcome.refusals[0], TooFewClientsError) and clients[0].state is State.ABORTED
    assert f"the round setup holds {colluders + 1} clients, fewer than 7" in str(outcome.refusals[0])


def test_malicious_round_of_the_minimum_with_every_honest_client_but_the_victim_claimed_dropped():
    """A setup of m = 7 (the victim, 4 colluders, 2 honest clients); the server withholds the honest clients'
    deliveries, so 5 = q(7) survive: enough for the round's own quorum, fewer than m. Our client masks (a
    uniformly random vector) and then refuses to sign the survivor sets; nothing of it is unmasked."""
    _, outcome, words = small_round(NoMinimumClient, 4, withheld=(5, 6))
    assert outcome.leaked and np.array_equal(outcome.recovered, words)

    clients, outcome, _ = small_round(MaskingClient, 4, withheld=(5, 6))
    assert not outcome.leaked and outcome.notes["victim_sent"] == ["advertise", "share", "input"]
    assert isinstance(outcome.refusals[0], TooFewClientsError) and clients[0].state is State.ABORTED
    assert "the proposed survivor set holds 5 clients, fewer than 7" in str(outcome.refusals[0])


def test_malicious_unmask_request_under_fewer_survivors_than_the_minimum_is_refused():
    """Refused at the reveal too, even by a client that signed: the certificate and the sets are checked again."""
    r = Round(options=MaskingOptions(min_clients=10)).mask_all()
    fewer = SurvivorSets(r.sets.key_sharers, r.sets.survivors[:-1], r.sets.survivors[-1:])
    refuses(r.clients[0], "unmask", r.request(fewer), "survivor set holds 9 clients, fewer than 10")
    assert r.server.session.quorum == 10  # the certificate quorum is never below m
