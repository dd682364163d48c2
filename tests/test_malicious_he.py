"""A malicious server against homomorphic aggregation (attacks/protocol/he.py): findings 5–7 of issue 12.

Each attack runs against our key holder and clients (typed refusal, nothing decrypted) and against a
double with the relevant check removed (tests/malicious_doubles.py), where it recovers the victim's
fixed-point vector exactly.
"""

import numpy as np
import pytest

from attacks.protocol import he as attack
from jobs import HEJob
from malicious_doubles import NoMinimumHEClient, NoMinimumKeyHolder, ServerSumKeyHolder, unverified_context
from protocols import TooFewClientsError, UnsafeContextError, default_min_clients
from protocols.he import HEClient, HEKeyHolder
from protocols.he.messages import PublicContext
from protocols.he.schemes import SECURITY_128, BFV, check_plain_modulus, check_security
from protocols.he.session import PublicSession


@pytest.mark.parametrize("scheme", ["bfv", "ckks"])
def test_malicious_key_substitution_finding_5(scheme):
    """The server relays its own context; the fingerprint the client checks is that context's own."""
    job = HEJob(scheme=scheme)

    def run(load):
        return attack.key_substitution(job.roster, 1, load, lambda public: HEClient(job.members[1], job.vectors[1],
                                       job.terms, public), job.terms, list(job.vectors), job.length)

    outcome = run(unverified_context)
    assert outcome.leaked and np.array_equal(outcome.recovered, job.encoding.encode(job.vectors[1]))
    outcome = run(PublicSession.load)
    assert not outcome.leaked and isinstance(outcome.refusals[1], UnsafeContextError)
    assert "not signed by the job's key holder" in str(outcome.refusals[1])


def oracle_scenarios(job, holder):
    """(how, setup, victim's input, padding) for the three ways the server asked for one client's plaintext."""
    minted = attack.minted_setup(job.roster, job.terms, job.public.fingerprint, list(job.vectors), job.length)
    earlier = job.setup()
    replayed = job.client(1).encrypt(earlier)
    holder.begin(earlier)  # the earlier round's one decryption, used honestly
    for c in job.vectors:
        holder.add(job.client(c).encrypt(earlier))
    holder.finish()
    nonce = job.server.receive_open(holder.open_round(job.terms))
    genuine = job.server.setup(job.terms, sorted(job.vectors), job.length, nonce, job.encoding, job.plan)
    return [
        ("minted setup", minted, job.client(1).encrypt(minted), [attack.padding_input(job.public, minted, 2)]),
        ("replayed input", genuine, replayed, [attack.padding_input(job.public, genuine, 2)]),
        ("too few clients", genuine, job.client(1).encrypt(genuine), [attack.padding_input(job.public, genuine, 2)]),
    ]


@pytest.mark.parametrize("index, refusal", [(0, "nonce was not drawn"), (1, "another session"), (2, "client 2")])
def test_malicious_decryption_oracle_finding_6(index, refusal):
    double_job = HEJob()
    double = ServerSumKeyHolder(double_job.members[0])
    double_job.public = double_job.server.receive_context(double.public_context)
    how, setup, victim, padding = oracle_scenarios(double_job, double)[index]
    outcome = attack.decryption_oracle(double, setup, victim, padding, how)
    assert outcome.leaked and np.array_equal(outcome.recovered, double_job.encoding.encode(double_job.vectors[1]))

    job = HEJob()
    how, setup, victim, padding = oracle_scenarios(job, job.holder)[index]
    outcome = attack.decryption_oracle(job.holder, setup, victim, padding, how)
    assert not outcome.leaked and refusal in str(outcome.refusals[0])


def test_malicious_decryption_of_a_single_verified_client_is_refused():
    """Without padding the server cannot even make the count: the key holder counts verified clients itself."""
    job = HEJob()
    setup = job.setup()
    outcome = attack.decryption_oracle(job.holder, setup, job.client(1).encrypt(setup), [], "one client")
    assert not outcome.leaked and "fewer than 2" in str(outcome.refusals[0])


@pytest.mark.parametrize("name", list(attack.weak_contexts()))
def test_malicious_weak_contexts_finding_7_are_refused_typed(name):
    """Even signed by the real key holder (careless or malicious), a weak or mislabelled context is refused."""
    job = HEJob()
    context = attack.weak_contexts()[name]
    signed = PublicContext("bfv", 4, context, 0).signed(job.members[0].identity, job.roster.digest).to_bytes()
    with pytest.raises(UnsafeContextError):
        PublicSession.load(signed, job.roster)


def test_security_table_and_plaintext_modulus_rules():
    for degree, bits in SECURITY_128.items():
        check_security(degree, bits)
        with pytest.raises(UnsafeContextError, match="128-bit"):
            check_security(degree, bits + 1)
    with pytest.raises(UnsafeContextError, match="not one of"):
        check_security(3000, 10)
    scheme = BFV(clients=20)
    check_security(scheme.degree, sum(scheme.coefficient_bits))
    check_plain_modulus(scheme.plain_modulus, scheme.degree, scheme.plain_bits)
    with pytest.raises(UnsafeContextError, match="batching prime"):
        check_plain_modulus(scheme.plain_modulus + 2, scheme.degree, scheme.plain_bits)
    with pytest.raises(UnsafeContextError, match="exactly 55"):
        check_plain_modulus(65537, 4096, 55)


@pytest.mark.parametrize("bound", [float("nan"), float("inf"), -1.0, 0.0, 8.0])
def test_malicious_setup_bounds_are_refused_typed_by_clients_and_key_holder(bound):
    """Finding 8 on the HE side: a bound other than the job's, NaN and ±Inf included, is a typed refusal."""
    from dataclasses import replace

    from protocols import ProtocolAbort
    from protocols.he.messages import HERoundSetup

    job = HEJob()
    setup = replace(HERoundSetup.from_bytes(job.setup()), bound=bound).to_bytes()
    with pytest.raises(ProtocolAbort, match="bound"):
        job.client(1).encrypt(setup)
    with pytest.raises(ProtocolAbort, match="bound"):
        job.holder.begin(setup)


# -- the server chooses how many clients a round has ------------------------------------------------------
def he_small_round(victim_class, holder_class, colluders, participants=None):
    """A job of 6 clients with the default m = 5 and key holder 0: a genuine round of the victim (client 1) and
    ``colluders`` roster clients whose vectors the server knows (running its code, without the minimum)."""
    job = HEJob(n=6, min_clients=default_min_clients(6))
    holder = holder_class(job.members[0])
    job.public = job.server.receive_context(holder.public_context)
    known = {c: job.vectors[c] for c in range(2, colluders + 2)}
    clients = {1: victim_class(job.members[1], job.vectors[1], job.terms, job.public),
               **{c: NoMinimumHEClient(job.members[c], v, job.terms, job.public) for c, v in known.items()}}
    outcome = attack.small_round(holder, job.server, clients, 1, job.terms, job.length, known, participants)
    encoding, _ = job.options.plan(len(participants or clients), job.terms.bound)  # the round's own encoding
    return outcome, encoding.encode(job.vectors[1])


@pytest.mark.parametrize("colluders", [1, 3])  # rounds of 2 and of m − 1 = 4 clients
def test_malicious_he_round_of_the_victim_and_colluders_below_the_minimum(colluders):
    """Under HE the colluders are roster clients too (no Sybil): the decrypted sum minus their inputs is the
    victim's. The client and the key holder each refuse such a round on their own."""
    assert default_min_clients(6) == 5
    outcome, words = he_small_round(NoMinimumHEClient, NoMinimumKeyHolder, colluders)
    assert outcome.leaked and np.array_equal(outcome.recovered, words)

    outcome, _ = he_small_round(HEClient, NoMinimumKeyHolder, colluders)  # the key holder sums only the colluders
    assert not outcome.leaked and set(outcome.refusals) == {1}
    assert isinstance(outcome.refusals[1], TooFewClientsError)
    assert f"the round setup holds {colluders + 1} clients, fewer than 5" in str(outcome.refusals[1])

    outcome, _ = he_small_round(NoMinimumHEClient, HEKeyHolder, colluders)  # refused before any decryption
    assert not outcome.leaked and isinstance(outcome.refusals[0], TooFewClientsError)
    assert f"the round setup holds {colluders + 1} clients, fewer than 5" in str(outcome.refusals[0])

    outcome, _ = he_small_round(HEClient, HEKeyHolder, colluders)
    assert not outcome.leaked and set(outcome.refusals) == {0, 1}


def test_malicious_he_round_of_the_minimum_with_the_other_clients_claimed_dropped():
    """The setup names m = 5 clients, only the victim and 2 colluders answer: the client cannot tell (dropouts
    happen), the key holder counts the verified inputs and decrypts nothing."""
    outcome, words = he_small_round(HEClient, NoMinimumKeyHolder, 2, participants=[1, 2, 3, 4, 5])
    assert outcome.leaked and np.array_equal(outcome.recovered, words)

    outcome, _ = he_small_round(HEClient, HEKeyHolder, 2, participants=[1, 2, 3, 4, 5])
    assert not outcome.leaked and set(outcome.refusals) == {0}
    assert isinstance(outcome.refusals[0], TooFewClientsError)
    assert "the sum of the verified clients' inputs holds 3 clients, fewer than 5" in str(outcome.refusals[0])
