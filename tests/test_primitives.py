"""Our own wrappers around the cryptography package: PRG words, Shamir, graphs, envelopes, wire format."""

import numpy as np
import pytest

from protocols import MalformedMessageError, ParameterError, ProtocolAbort, ThresholdError, choose_parameters
from protocols import shamir
from protocols.envelope import open_sealed, seal
from protocols.graph import Targets, minimum_threshold, neighbour_graph
from protocols.masking.messages import (
    ConsistencyRequest, ConsistencySignature, KeyList, MaskedInput, SurvivorSets, UnmaskRequest, UnmaskResponse,
)
from protocols.prg import MaskExpander, keystream


def test_aes256_ctr_keystream_matches_nist_sp800_38a_f55():
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    counter = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    plaintext = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    ciphertext = bytes.fromhex("601ec313775789a5b7a7f504bbf3d228")
    stream = keystream(key, counter, 16)
    assert bytes(a ^ b for a, b in zip(stream, plaintext)) == ciphertext


def test_mask_words_are_the_little_endian_keystream_and_chunks_or_threads_do_not_change_them():
    seed = bytes(range(32))
    raw = keystream(seed, bytes(16), 8 * 1000)
    expected = np.array([int.from_bytes(raw[8 * i : 8 * i + 8], "little") for i in range(1000)], dtype=np.uint64)
    assert np.array_equal(MaskExpander(1000).expand(seed), expected)
    for chunk, threads in [(7, 1), (64, 3), (1 << 14, 4), (2, 5)]:
        assert np.array_equal(MaskExpander(1000, chunk_words=chunk, threads=threads).expand(seed), expected)
    odd = MaskExpander(999, chunk_words=10, threads=4).expand(seed)
    assert np.array_equal(odd, expected[:999])


def test_apply_adds_and_subtracts_modulo_2_64():
    seeds = [bytes([i]) * 32 for i in range(3)]
    expander = MaskExpander(513, chunk_words=64)
    vector = np.arange(513, dtype=np.uint64)
    expander.apply(vector, plus=seeds[:2], minus=seeds[2:])
    expected = np.arange(513, dtype=np.uint64) + expander.expand(seeds[0]) + expander.expand(seeds[1]) - expander.expand(seeds[2])
    assert np.array_equal(vector, expected)
    expander.apply(vector, plus=seeds[2:], minus=seeds[:2])
    assert np.array_equal(vector, np.arange(513, dtype=np.uint64))


def test_shamir_any_t_shares_reconstruct_and_fewer_do_not():
    secret = bytes(range(32))
    holders = [0, 3, 5, 8, 13, 21]
    shares = shamir.split(secret, holders, threshold=4)
    rebuild = shamir.Reconstructor(4)
    for subset in ([0, 3, 5, 8], [21, 13, 8, 5], holders):
        assert rebuild.reconstruct({h: shares[h] for h in subset}) == secret
    with pytest.raises(ThresholdError):
        rebuild.reconstruct({h: shares[h] for h in holders[:3]})
    # t − 1 shares are consistent with every secret: with a fresh polynomial the same 3 shares differ
    again = shamir.split(secret, holders, threshold=4)
    assert any(again[h] != shares[h] for h in holders[:3])


def test_shamir_corrupted_share_does_not_give_the_secret():
    secret = bytes(32)
    shares = shamir.split(secret, [1, 2, 3], threshold=3)
    bad = dict(shares)
    bad[2] = (int.from_bytes(bad[2], "big") ^ (1 << 400)).to_bytes(shamir.SHARE_BYTES, "big")
    with pytest.raises(ThresholdError, match="inconsistent"):
        shamir.Reconstructor(3).reconstruct(bad)


def test_envelope_binds_session_round_and_pair():
    key = bytes(32)
    sealed = seal(key, b"shares", b"s" * 32, "r1", 1, 2)
    assert open_sealed(key, sealed, b"s" * 32, "r1", 1, 2) == b"shares"
    for args in [(b"t" * 32, "r1", 1, 2), (b"s" * 32, "r2", 1, 2), (b"s" * 32, "r1", 2, 1), (b"s" * 32, "r1", 1, 3)]:
        with pytest.raises(ProtocolAbort, match="failed authentication"):
            open_sealed(key, sealed, *args)
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(ProtocolAbort):
        open_sealed(key, bytes(tampered), b"s" * 32, "r1", 1, 2)


def test_ring_lattice_is_k_regular_symmetric_and_depends_on_the_session():
    ids = list(range(40))
    graph = neighbour_graph(ids, 6, b"a" * 32)
    assert all(len(graph[i]) == 6 and i not in graph[i] for i in ids)
    assert all(i in graph[j] for i in ids for j in graph[i])
    assert graph == neighbour_graph(ids, 6, b"a" * 32)
    assert graph != neighbour_graph(ids, 6, b"b" * 32)
    complete = neighbour_graph(ids[:5], 4, b"a" * 32)
    assert all(complete[i] == set(ids[:5]) - {i} for i in ids[:5])


def test_parameter_choice_meets_its_targets_and_refuses_unsafe_thresholds():
    small = choose_parameters(20)
    assert small.complete and small.threshold == 14
    large = choose_parameters(500)
    assert not large.complete and large.neighbours % 2 == 0
    assert large.security_log2 <= -40 and large.failure_log2 <= -20
    smaller = choose_parameters(500, neighbours=large.neighbours - 2)
    assert smaller.security_log2 > -40 or smaller.failure_log2 > -20  # the smallest k that meets both
    stricter = choose_parameters(500, targets=Targets(dropout_fraction=0.2))
    assert stricter.neighbours > large.neighbours
    with pytest.raises(ParameterError, match="strict majority"):
        choose_parameters(10, threshold=minimum_threshold(9) - 1)
    with pytest.raises(ParameterError, match="even"):
        choose_parameters(50, neighbours=7)
    with pytest.raises(ParameterError, match="at least 2"):
        choose_parameters(1)


SETS = SurvivorSets((1, 2, 3), (1, 3), (2,))


@pytest.mark.parametrize("message", [
    KeyList("r", ()).to_bytes(),
    MaskedInput(b"s" * 32, 3, b"d" * 32, np.arange(5, dtype=np.uint64), b"g" * 64).to_bytes(),
    UnmaskResponse(b"s" * 32, 3, ((1, 0, b"x" * 66),), b"g" * 64).to_bytes(),
    ConsistencyRequest(b"s" * 32, 3, SETS).to_bytes(),
    ConsistencySignature(b"s" * 32, 3, SETS.digest(), b"g" * 64).to_bytes(),
    UnmaskRequest(b"s" * 32, 3, SETS, ((1, b"g" * 64), (3, b"h" * 64)), ((2, b"d" * 32, b"g" * 64),)).to_bytes(),
])
def test_truncated_or_padded_messages_are_refused_cleanly(message):
    cls = {3: KeyList, 6: MaskedInput, 7: UnmaskRequest, 8: UnmaskResponse, 10: ConsistencyRequest,
           11: ConsistencySignature}[message[5]]
    assert cls.from_bytes(message).to_bytes() == message
    for cut in range(len(message)):
        with pytest.raises(MalformedMessageError):
            cls.from_bytes(message[:cut])
    with pytest.raises(MalformedMessageError, match="trailing"):
        cls.from_bytes(message + b"\0")
    with pytest.raises(MalformedMessageError, match="kind"):
        (KeyList if cls is not KeyList else MaskedInput).from_bytes(message)
    with pytest.raises(MalformedMessageError, match="version"):
        cls.from_bytes(message[:4] + b"\x09" + message[5:])


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 written out with hmac, to check our wrapper independently of `cryptography`."""
    import hashlib
    import hmac

    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out, counter = out + block, counter + 1
    return out[:length]


def test_reference_hkdf_matches_rfc5869_case_1():
    okm = _hkdf_sha256(bytes.fromhex("0b" * 22), bytes.fromhex("000102030405060708090a0b0c"),
                       bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


def test_pair_keys_follow_rfc7748_agreement_and_hkdf_and_are_symmetric():
    from protocols.keys import MASK_PURPOSE, SHARE_PURPOSE, KeyPair, derive

    alice = KeyPair.from_private_bytes(bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob = KeyPair.from_private_bytes(bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    assert alice.public.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    shared = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    session = b"\x11" * 32
    key = derive(alice, bob.public, session, MASK_PURPOSE, 7, 3)
    assert key == derive(bob, alice.public, session, MASK_PURPOSE, 3, 7)
    info = MASK_PURPOSE + (3).to_bytes(4, "big") + (7).to_bytes(4, "big")
    assert key == _hkdf_sha256(shared, session, info, 32)
    assert key != derive(alice, bob.public, session, SHARE_PURPOSE, 7, 3)
    assert key != derive(alice, bob.public, b"\x12" * 32, MASK_PURPOSE, 7, 3)


def test_low_order_peer_key_is_refused():
    from protocols.keys import MASK_PURPOSE, KeyPair, derive

    with pytest.raises(ProtocolAbort, match="key agreement"):
        derive(KeyPair.generate(), bytes(32), b"s" * 32, MASK_PURPOSE, 1, 2)
