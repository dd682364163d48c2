"""A malicious server against homomorphic aggregation (attacks/protocol/he.py): findings 5–7 of issue 12.

Each attack runs against our key holder and clients (typed refusal, nothing decrypted) and against a
double with the relevant check removed (attacks/protocol/doubles.py), where it recovers the victim's
fixed-point vector exactly.
"""

import numpy as np
import pytest

from attacks.protocol import he as attack
from attacks.protocol.doubles import NoMinimumHEClient, NoMinimumKeyHolder, ServerSumKeyHolder, unverified_context
from attacks.protocol.jobs import HEJob
from attacks.protocol.scenarios import he_small_round, key_substitution_round, oracle_round
from protocols import TooFewClientsError, UnsafeContextError, default_min_clients
from protocols.he import HEClient, HEKeyHolder
from protocols.he.messages import PublicContext
from protocols.he.schemes import SECURITY_128, BFV, check_plain_modulus, check_security
from protocols.he.session import PublicSession


@pytest.mark.parametrize("scheme", ["bfv", "ckks"])
def test_malicious_key_substitution_finding_5(scheme):
    """The server relays its own context; the fingerprint the client checks is that context's own."""
    job = HEJob(scheme=scheme)

    outcome = key_substitution_round(job, unverified_context)
    assert outcome.leaked and np.array_equal(outcome.recovered, job.encoding.encode(job.vectors[1]))
    outcome = key_substitution_round(job, PublicSession.load)
    assert not outcome.leaked and isinstance(outcome.refusals[1], UnsafeContextError)
    assert "not signed by the job's key holder" in str(outcome.refusals[1])


@pytest.mark.parametrize("index, refusal", [(0, "nonce was not drawn"), (1, "another session"), (2, "client 2")])
def test_malicious_decryption_oracle_finding_6(index, refusal):
    outcome, words = oracle_round(ServerSumKeyHolder, index)
    assert outcome.leaked and np.array_equal(outcome.recovered, words)

    outcome, _ = oracle_round(HEKeyHolder, index)
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
