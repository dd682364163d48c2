"""Homomorphic aggregation: exact sums, keys the server never holds, refusals of bad messages."""

from dataclasses import replace

import numpy as np
import pytest
import tenseal as ts

from protocols import FixedPoint, InvalidContributionError, MalformedMessageError, ProtocolAbort, ProtocolError
from protocols import make_protocol
from protocols.he import AddOnly, HEClient, HEKeyHolder, HEServer
from protocols.he.limbs import LimbPlan
from protocols.he.messages import EncryptedInput, EncryptedSum, PublicContext
from protocols.he.schemes import BFV, CKKS, batching_prime, is_prime
from protocols.he.session import PublicSession

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
    holder = HEKeyHolder(BFV(clients=4))
    server = HEServer(holder.scheme)
    server.receive_context(holder.public_context, 0)
    assert not server._public.context.has_secret_key()
    assert not ts.context_from(PublicContext.from_bytes(holder.public_context).context).has_secret_key()
    leaky = PublicContext("bfv", 4, holder._context.serialize(save_secret_key=True)).to_bytes()
    with pytest.raises(ProtocolError, match="secret key"):
        HEServer(holder.scheme).receive_context(leaky, 0)


def test_the_server_only_adds():
    holder = HEKeyHolder(BFV(clients=2))
    vector = AddOnly(ts.bfv_vector(holder._context, [1, 2, 3]))
    assert (vector + vector).vector.decrypt() == [2, 4, 6]
    for attempt in (lambda: vector * vector, lambda: 3 * vector, lambda: vector * 3, lambda: vector @ vector):
        with pytest.raises(ProtocolError, match="only adds"):
            attempt()


class Round:
    def __init__(self, n=4, scheme=None, seed=0):
        self.vectors = vectors(n, seed=seed)
        self.holder = HEKeyHolder(scheme or BFV(clients=n))
        self.server = HEServer(self.holder.scheme)
        self.server.receive_context(self.holder.public_context, 0)
        plan = LimbPlan.for_scheme(1, self.holder.scheme.limit, n)
        self.encoding = plan.encoding(n, BOUND)
        self.setup = self.server.setup("r", list(self.vectors), LENGTH, BOUND, self.encoding, plan)
        public = PublicSession.load(self.holder.public_context)
        self.clients = {c: HEClient(c, v, public) for c, v in self.vectors.items()}

    def inputs(self):
        return {c: client.encrypt(self.setup) for c, client in self.clients.items()}


def test_honest_round_through_the_roles_is_exact():
    r = Round()
    for message in r.inputs().values():
        r.server.receive_input(message)
    words = r.server.receive_decrypted(r.holder.decrypt(r.setup, r.server.encrypted_sum()), 0)
    np.testing.assert_array_equal(words, fixed_point_sum(r.vectors, r.encoding))


def test_input_under_another_key_is_refused_by_fingerprint():
    r = Round()
    stranger = HEKeyHolder(r.holder.scheme)
    rogue = HEClient(1, r.vectors[1], PublicSession.load(stranger.public_context))
    with pytest.raises(ProtocolAbort, match="fingerprint"):
        rogue.encrypt(r.setup)  # the client itself sees the setup names another context
    message = EncryptedInput.from_bytes(r.inputs()[1])
    forged = replace(message, fingerprint=stranger.fingerprint).to_bytes()
    with pytest.raises(ProtocolError, match="fingerprint"):
        r.server.receive_input(forged)


def test_decrypting_a_sum_made_under_another_key_is_detected():
    """TenSEAL decrypts foreign ciphertexts to garbage without complaint; the canary catches it."""
    r = Round()
    other = Round(seed=5)
    for message in other.inputs().values():
        other.server.receive_input(message)
    foreign = EncryptedSum.from_bytes(other.server.encrypted_sum())
    for message in r.inputs().values():
        r.server.receive_input(message)
    honest = EncryptedSum.from_bytes(r.server.encrypted_sum())
    spliced = replace(honest, ciphertexts=foreign.ciphertexts).to_bytes()
    with pytest.raises(ProtocolAbort, match="canary"):
        r.holder.decrypt(r.setup, spliced)


def test_key_holder_refuses_other_sessions_second_decryptions_and_small_sums():
    r = Round()
    inputs = r.inputs()
    r.server.receive_input(inputs[0])
    single = EncryptedSum.from_bytes(r.server.encrypted_sum())
    with pytest.raises(ProtocolAbort, match="at least 2"):
        r.holder.decrypt(r.setup, single.to_bytes())
    with pytest.raises(ProtocolAbort, match="canary"):  # one client's ciphertext passed off as everyone's
        r.holder.decrypt(r.setup, replace(single, included=tuple(r.vectors)).to_bytes())
    later = Round()
    for message in later.inputs().values():
        later.server.receive_input(message)
    with pytest.raises(ProtocolAbort, match="another session"):
        later.holder.decrypt(later.setup, replace(EncryptedSum.from_bytes(later.server.encrypted_sum()),
                                                  session=r.server.session).to_bytes())
    later.holder.decrypt(later.setup, later.server.encrypted_sum())
    with pytest.raises(ProtocolAbort, match="second decryption"):
        later.holder.decrypt(later.setup, later.server.encrypted_sum())


def test_input_from_another_session_is_refused():
    first, second = Round(), Round()
    replayed = first.inputs()[2]
    with pytest.raises(ProtocolError, match="another session"):
        second.server.receive_input(replayed)


def test_duplicate_and_foreign_inputs_are_refused():
    r = Round()
    inputs = r.inputs()
    r.server.receive_input(inputs[0])
    with pytest.raises(ProtocolError, match="second"):
        r.server.receive_input(inputs[0])
    stranger = replace(EncryptedInput.from_bytes(inputs[1]), sender=42).to_bytes()
    with pytest.raises(ProtocolError, match="not in the round"):
        r.server.receive_input(stranger)


@pytest.mark.parametrize("damage", ["truncate-message", "truncate-ciphertext", "garbage-ciphertext", "drop-ciphertext"])
def test_malformed_ciphertexts_give_a_clear_error(damage):
    r = Round()
    data = r.inputs()[1]
    message = EncryptedInput.from_bytes(data)
    ct = message.ciphertexts[0]
    if damage == "truncate-message":
        bad, error = data[:-7], MalformedMessageError
    elif damage == "truncate-ciphertext":
        bad, error = replace(message, ciphertexts=(ct[: len(ct) // 2],)).to_bytes(), ProtocolError
    elif damage == "garbage-ciphertext":
        bad, error = replace(message, ciphertexts=(bytes(len(ct)),)).to_bytes(), ProtocolError
    else:
        bad, error = replace(message, ciphertexts=()).to_bytes(), ProtocolError
    with pytest.raises(error):
        r.server.receive_input(bad)


def test_out_of_range_input_is_refused_before_encryption():
    r = Round()
    bad = r.vectors[3].copy()
    bad[7] = BOUND * 1.5
    client = HEClient(3, bad, PublicSession.load(r.holder.public_context))
    with pytest.raises(InvalidContributionError, match="exceeds"):
        client.encrypt(r.setup)
    nan = r.vectors[3].copy()
    nan[0] = np.nan
    with pytest.raises(InvalidContributionError):
        make_protocol("he-bfv").aggregate("r", {0: r.vectors[0], 1: nan}, BOUND)


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
