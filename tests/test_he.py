"""Homomorphic aggregation: exact sums, keys the server never holds, refusals of bad messages."""

from dataclasses import replace

import numpy as np
import pytest
import tenseal as ts

from attacks.protocol.jobs import HEJob
from protocols import FixedPoint, InvalidContributionError, MalformedMessageError, ProtocolAbort, ProtocolError
from protocols import ThresholdError, make_protocol
from protocols.he import AddOnly, HEClient, HEServer
from protocols.he.limbs import LimbPlan
from protocols.he.messages import EncryptedInput, HERoundSetup, PublicContext
from protocols.he.schemes import BFV, CKKS, batching_prime, is_prime

LENGTH, BOUND = 300, 4.0


def vectors(n, length=LENGTH, seed=0):
    rng = np.random.default_rng(seed)
    return {c: rng.uniform(-BOUND, BOUND, length) for c in range(n)}


def fixed_point_sum(vs, encoding):
    total = np.zeros(next(iter(vs.values())).shape[0], dtype=np.uint64)
    for v in vs.values():
        total += encoding.encode(v)
    return total


@pytest.mark.parametrize("name", ["he-bfv", "he-ckks"])
@pytest.mark.parametrize("n", [2, 10, 50])
def test_exact_schemes_equal_the_plaintext_fixed_point_sum(name, n):
    vs = vectors(n, seed=n)
    vs[0][:2] = [BOUND, -BOUND]
    protocol = make_protocol(name)
    result = protocol.aggregate("r", vs, BOUND)
    details = result.details
    encoding = FixedPoint.for_round(n, BOUND, details["fraction_bits"])
    np.testing.assert_array_equal(result.total, encoding.decode(fixed_point_sum(vs, encoding)))
    assert details["exact"] and result.included == set(vs)


def test_more_limbs_carry_the_full_64_bit_precision_of_masking():
    vs = vectors(10)
    one, two = (make_protocol("he-bfv", limbs=k).aggregate("r", vs, BOUND) for k in (1, 2))
    best = FixedPoint.for_round(10, BOUND).fraction_bits
    assert one.details["fraction_bits"] < best == two.details["fraction_bits"]
    np.testing.assert_array_equal(two.total, FixedPoint.for_round(10, BOUND).decode(
        fixed_point_sum(vs, FixedPoint.for_round(10, BOUND))))


def test_approximate_ckks_says_so_and_is_close():
    vs = vectors(5)
    protocol = make_protocol("he-ckks-approx")
    result = protocol.aggregate("r", vs, BOUND)
    assert not protocol.exact and not result.details["exact"]
    assert np.abs(result.total - sum(vs.values())).max() < 1e-6


@pytest.mark.parametrize("limbs", [1, 2, 3, 4])
def test_limbs_split_and_join_exactly_at_the_extremes(limbs):
    n, limit = 7, 2**40
    plan = LimbPlan.for_scheme(limbs, limit, n)
    encoding = plan.encoding(n, 1.0)
    if limbs > 1:  # two limbs of 37 bits already carry the full 64-bit precision
        assert encoding.fraction_bits == FixedPoint.for_round(n, 1.0).fraction_bits
    rng = np.random.default_rng(limbs)
    values = [np.concatenate([[1.0, -1.0, 0.0], rng.uniform(-1, 1, 500)]) for _ in range(n)]
    words = [encoding.encode(v) for v in values]
    sums = [sum(plan.split(w)[j] for w in words) for j in range(limbs)]
    assert all(np.abs(s).max() <= limit for s in sums)
    expected = np.zeros(503, dtype=np.uint64)
    for w in words:
        expected += w
    np.testing.assert_array_equal(plan.join(sums), expected)


def test_server_context_holds_no_secret_key_and_refuses_one():
    job = HEJob()
    assert not job.public.context.has_secret_key()
    assert not ts.context_from(PublicContext.from_bytes(job.holder.public_context).context).has_secret_key()
    leaky = PublicContext("bfv", 4, job.holder._context.serialize(save_secret_key=True), 0).signed(
        job.members[0].identity, job.roster.digest).to_bytes()
    with pytest.raises(ProtocolError, match="secret key"):
        HEServer(job.roster).receive_context(leaky)


def test_the_key_holder_only_adds():
    job = HEJob(n=2)
    vector = AddOnly(ts.bfv_vector(job.holder._context, [1, 2, 3]))
    assert (vector + vector).vector.decrypt() == [2, 4, 6]
    for attempt in (lambda: vector * vector, lambda: 3 * vector, lambda: vector * 3, lambda: vector @ vector):
        with pytest.raises(ProtocolError, match="only adds"):
            attempt()


def run_round(job, setup, inputs):
    """The honest path after the clients: the server relays, the key holder sums and decrypts."""
    for message in inputs.values():
        job.server.receive_input(message)
    job.holder.begin(setup)
    for message in job.server.inputs():
        job.holder.add(message)
    return job.server.receive_decrypted(job.holder.finish())


def test_honest_round_through_the_roles_is_exact():
    job = HEJob()
    setup = job.setup()
    words, included = run_round(job, setup, {c: job.client(c).encrypt(setup) for c in job.vectors})
    np.testing.assert_array_equal(words, job.expected())
    assert included == set(job.vectors)


def test_input_with_another_fingerprint_is_refused():
    job = HEJob()
    setup = job.setup()
    message = EncryptedInput.from_bytes(job.client(1).encrypt(setup))
    forged = replace(message, fingerprint=bytes(32)).signed(job.members[1].identity, message.session).to_bytes()
    with pytest.raises(ProtocolError, match="fingerprint"):
        job.server.receive_input(forged)
    job.holder.begin(setup)
    with pytest.raises(ProtocolAbort, match="another public context"):
        job.holder.add(forged)


def test_a_client_encrypting_under_another_key_is_caught_by_the_canary():
    """TenSEAL decrypts foreign ciphertexts to garbage without complaint; the canary catches it."""
    job, other = HEJob(), HEJob(seed=5)
    setup = job.setup()
    inputs = {c: job.client(c).encrypt(setup) for c in job.vectors}
    foreign = EncryptedInput.from_bytes(other.client(2).encrypt(other.setup()))
    mine = EncryptedInput.from_bytes(inputs[2])
    inputs[2] = replace(mine, ciphertexts=foreign.ciphertexts).signed(job.members[2].identity, mine.session).to_bytes()
    with pytest.raises(ProtocolAbort, match="canary"):
        run_round(job, setup, inputs)


def test_key_holder_refuses_unknown_nonces_second_decryptions_and_small_sums():
    job = HEJob(min_clients=3)
    setup = job.setup()
    inputs = {c: job.client(c).encrypt(setup) for c in job.vectors}
    job.holder.begin(setup)
    for c in (0, 1):
        job.holder.add(inputs[c])
    with pytest.raises(ThresholdError, match="fewer than 3"):
        job.holder.finish()
    with pytest.raises(ProtocolAbort, match="nonce was not drawn"):  # its one decryption is spent
        job.holder.begin(setup)
    minted = HERoundSetup.from_bytes(setup)
    with pytest.raises(ProtocolAbort, match="nonce was not drawn"):  # a setup the server made up
        job.holder.begin(replace(minted, nonce=bytes(16)).to_bytes())


def test_input_from_another_session_is_refused():
    job = HEJob()
    first, second = job.setup(), job.setup()
    replayed = job.client(2).encrypt(first)
    with pytest.raises(ProtocolError, match="another session"):
        job.server.receive_input(replayed)
    job.holder.begin(second)
    with pytest.raises(ProtocolAbort, match="another session"):
        job.holder.add(replayed)


def test_duplicate_and_foreign_inputs_are_refused():
    job = HEJob()
    setup = job.setup()
    inputs = {c: job.client(c).encrypt(setup) for c in job.vectors}
    job.server.receive_input(inputs[0])
    with pytest.raises(ProtocolError, match="second"):
        job.server.receive_input(inputs[0])
    stranger = replace(EncryptedInput.from_bytes(inputs[1]), sender=42).to_bytes()
    with pytest.raises(ProtocolError, match="not in the round"):
        job.server.receive_input(stranger)
    job.holder.begin(setup)
    job.holder.add(inputs[0])
    with pytest.raises(ProtocolAbort, match="already counted"):
        job.holder.add(inputs[0])


@pytest.mark.parametrize("damage", ["truncate-message", "truncate-ciphertext", "garbage-ciphertext", "drop-ciphertext"])
def test_malformed_ciphertexts_give_a_clear_error(damage):
    """Altered in transit: the signature fails at the server. Signed garbage from a client: the key holder
    names the client."""
    job = HEJob()
    setup = job.setup()
    data = job.client(1).encrypt(setup)
    message = EncryptedInput.from_bytes(data)
    ct = message.ciphertexts[0]
    if damage == "truncate-message":
        with pytest.raises(MalformedMessageError):
            job.server.receive_input(data[:-7])
        return
    bad = {"truncate-ciphertext": (ct[: len(ct) // 2],), "garbage-ciphertext": (bytes(len(ct)),),
           "drop-ciphertext": ()}[damage]
    with pytest.raises(ProtocolError):
        job.server.receive_input(replace(message, ciphertexts=bad).to_bytes())
    signed = replace(message, ciphertexts=bad).signed(job.members[1].identity, message.session).to_bytes()
    job.holder.begin(setup)
    with pytest.raises(ProtocolAbort, match="client 1"):
        job.holder.add(signed)


def test_out_of_range_input_is_refused_before_encryption():
    job = HEJob()
    setup = job.setup()
    bad = job.vectors[3].copy()
    bad[7] = BOUND * 1.5
    with pytest.raises(InvalidContributionError, match="exceeds"):
        HEClient(job.members[3], bad, job.terms, job.public).encrypt(setup)
    nan = job.vectors[3].copy()
    nan[0] = np.nan
    with pytest.raises(InvalidContributionError):
        make_protocol("he-bfv").aggregate("r", {0: job.vectors[0], 1: nan}, BOUND)


def test_bfv_plaintext_modulus_follows_the_measured_noise_rule_and_sums_exactly_at_its_edge():
    """n ciphertexts at ±Λ/n each: the sum must decrypt exactly, up to 10^4 clients."""
    for n in (100, 10_000):
        scheme = BFV(clients=n)
        assert is_prime(scheme.plain_modulus) and scheme.plain_modulus % (2 * scheme.degree) == 1
        context = scheme.secret_context()
        per_client = scheme.limit // n
        values = np.array([per_client, -per_client] * (scheme.slots // 2), dtype=np.int64)
        one = AddOnly(ts.bfv_vector(context, values.tolist()))
        total = one
        for _ in range(n - 1):
            total = total + one
        np.testing.assert_array_equal(np.array(total.vector.decrypt()), values * n)
    assert BFV(clients=20).plain_bits == 55 and BFV(clients=10_000).plain_bits == 50


def test_ckks_integer_sums_are_exact_at_the_enforced_limit():
    scheme = CKKS(integer=True)
    context = scheme.secret_context()
    n = 100
    rng = np.random.default_rng(3)
    chunks = [rng.integers(-(scheme.limit // n), scheme.limit // n, scheme.slots) for _ in range(3)]
    vectors_ = [AddOnly(ts.ckks_vector(context, c.astype(np.float64).tolist())) for c in chunks]
    total = vectors_[0]
    for i in range(1, n):
        total = total + vectors_[i % 3]
    expected = sum(chunks[i % 3] for i in range(n))
    np.testing.assert_array_equal(scheme.decrypt(total.vector), expected)
    garbage = AddOnly(ts.ckks_vector(context, [0.5] * 8))
    with pytest.raises(ProtocolError, match="away from an integer"):
        scheme.decrypt(garbage.vector)


def test_batching_prime_search():
    p = batching_prime(40, 4096)
    assert is_prime(p) and p % 8192 == 1 and p.bit_length() == 40
    assert not is_prime(561) and not is_prime(2**61 + 1) and is_prime(2**61 - 1)


def test_simulated_dropouts_leave_clients_out_and_a_key_holder_dropout_fails_cleanly():
    """Issue 16 item 14: HE accepts the same dropout options as masking; a client that never sends is left out,
    and the key holder leaving ends the round with an abort, before any sum exists."""
    from protocols.dropouts import draw_dropouts

    vs = vectors(8, length=20)
    survived = failed = 0
    for seed in range(8):
        protocol = make_protocol("he-bfv", dropout={"input": 0.25}, dropout_seed=seed, min_clients=5)
        drawn = draw_dropouts(list(vs), {"input": 0.25}, seed, ("input",))["input"]
        assert len(drawn) == 2
        if min(vs) in drawn:  # the default key holder is the lowest id
            with pytest.raises(ProtocolAbort, match="key holder 0 dropped out"):
                protocol.aggregate("r", vs, BOUND)
            failed += 1
            continue
        result = protocol.aggregate("r", vs, BOUND)
        kept = {c: v for c, v in vs.items() if c not in drawn}
        encoding = FixedPoint.for_round(8, BOUND, result.details["fraction_bits"])
        assert result.included == set(kept)
        np.testing.assert_array_equal(result.total, encoding.decode(fixed_point_sum(kept, encoding)))
        survived += 1
    assert survived and failed
    with pytest.raises(ProtocolError, match="unknown dropout stages"):
        make_protocol("he-bfv", dropout={"share": 0.1})
