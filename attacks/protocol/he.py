"""A malicious server against homomorphic aggregation: key substitution, the key holder as a decryption
oracle, contexts too weak to trust (findings 5–7 of issue 12), and rounds smaller than the job's minimum."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import tenseal as ts

from attacks.protocol.outcome import Outcome, ask, minus_known
from protocols.errors import ProtocolError
from protocols.he.messages import DecryptedSum, EncryptedInput, HERoundSetup, PublicContext
from protocols.he.schemes import Scheme
from protocols.he.roles import HEServer
from protocols.he.session import HEOptions, PublicSession, pack, session_id, unpack
from protocols.identity import Roster
from protocols.terms import RoundTerms

ACTIVE = "active server, no colluding client"
SMALL_ROUND = "a round smaller than the job's minimum"


def rogue_context(scheme: Scheme, capacity: int, claimed_sender: int) -> tuple[bytes, object]:
    """The server's own key pair dressed as the key holder's public context (it cannot sign as the key holder)."""
    secret = scheme.secret_context()
    message = PublicContext(scheme.label, capacity, scheme.public_bytes(secret), claimed_sender, bytes(64))
    return message.to_bytes(), secret


def minted_setup(roster: Roster, terms: RoundTerms, fingerprint: bytes, participants, length: int) -> bytes:
    """A setup the server made up: its own nonce, the job's public encoding for the round."""
    options = HEOptions.from_roster(roster)
    encoding, plan = options.plan(len(participants), terms.bound)
    return HERoundSetup(terms.round_id, roster.digest, roster.config_sha256, terms.broadcast, options.scheme, fingerprint,
                        os.urandom(16), length, terms.bound, encoding.fraction_bits if encoding else 0,
                        plan.limbs if plan else 1, plan.digit_bits if plan else 0, tuple(sorted(participants))).to_bytes()


def key_substitution(roster: Roster, victim: int, load: Callable[[bytes, Roster], PublicSession],
                     make_client: Callable[[PublicSession], object], terms: RoundTerms, participants, length: int
                     ) -> Outcome:
    """Finding 5: relay the server's own context to the victim; if it encrypts under it, decrypt its input."""
    options = HEOptions.from_roster(roster)
    scheme = options.make_scheme()
    context_bytes, secret = rogue_context(scheme, options.capacity, roster.key_holder)
    parameters = {"scheme": scheme.label, "key_holder": roster.key_holder}
    try:
        public = load(context_bytes, roster)
    except ProtocolError as exc:
        return Outcome("finding 5: key substitution", ACTIVE, parameters, refusals={victim: exc})
    setup_bytes = minted_setup(roster, terms, public.fingerprint, participants, length)
    message = EncryptedInput.from_bytes(make_client(public).encrypt(setup_bytes))
    setup = HERoundSetup.from_bytes(setup_bytes)
    decrypted = [scheme.decrypt(scheme.load(secret, c)) for c in message.ciphertexts]
    sums, _ = unpack(decrypted, setup.limbs, setup.length)
    _, plan = options.plan(len(setup.participants), setup.bound)
    recovered = plan.join(sums) if plan else sums[0].astype(np.float64).view(np.uint64)
    return Outcome("finding 5: key substitution", ACTIVE, parameters, recovered)


def padding_input(public: PublicSession, setup_bytes: bytes, sender: int) -> bytes:
    """Zeros (canary 1) encrypted by the server under the public key: one more "client" for a sum, unsigned."""
    setup = HERoundSetup.from_bytes(setup_bytes)
    zeros = [np.zeros(setup.length, dtype=np.int64 if public.scheme.exact else np.float64)] * setup.limbs
    ciphertexts = tuple(public.scheme.encrypt(public.context, chunk) for chunk in pack(zeros, public.scheme.slots))
    return EncryptedInput(session_id(setup_bytes), sender, public.fingerprint, ciphertexts, bytes(64)).to_bytes()


def decryption_oracle(holder, setup_bytes: bytes, victim_input: bytes, padding: list[bytes], how: str) -> Outcome:
    """Finding 6: have the key holder decrypt a "sum" that is the victim's ciphertext plus the server's own
    zero padding (which makes the canary count right). ``how``: a setup the server minted, an input replayed
    from an earlier round, or a genuine round with too few real clients."""
    parameters = {"min_clients": holder.min_clients, "padding": len(padding), "how": how}
    try:
        holder.begin(setup_bytes)
        for message in [victim_input, *padding]:
            holder.add(message)
        words = DecryptedSum.from_bytes(holder.finish()).words
    except ProtocolError as exc:
        return Outcome("finding 6: the key holder as a decryption oracle", ACTIVE, parameters,
                       refusals={holder.id: exc})
    return Outcome("finding 6: the key holder as a decryption oracle", ACTIVE, parameters, np.array(words))


def small_round(holder, server: HEServer, clients, victim: int, terms: RoundTerms, length: int,
                known: dict[int, np.ndarray], participants=None) -> Outcome:
    """A genuine round, opened by the key holder, that holds only the victim and colluders (roster clients whose
    vectors ``known`` the server has): the decrypted sum minus the colluders' encodings is the victim's input.
    The setup names ``participants`` (default: only the answering ``clients``); naming more is the same attack
    with the others claimed dropped. Exact schemes only (the comparison is on fixed-point words)."""
    participants = sorted(participants or clients)
    encoding, plan = HEOptions.from_roster(server.roster).plan(len(participants), terms.bound)
    setup = server.setup(terms, participants, length, server.receive_open(holder.open_round(terms)), encoding, plan)
    replies, refusals = ask(clients, "encrypt", dict.fromkeys(clients, setup))
    for reply in replies.values():
        server.receive_input(reply)
    parameters = {"clients": len(participants), "answering": len(clients), "colluders": len(known),
                  "min_clients": HEOptions.from_roster(server.roster).min_clients}
    threat = f"active server with {len(known)} colluding roster clients"
    try:
        holder.begin(setup)
        for message in server.inputs():
            holder.add(message)
        words, included = server.receive_decrypted(holder.finish())
    except ProtocolError as exc:
        return Outcome(SMALL_ROUND, threat, parameters, refusals=refusals | {holder.id: exc})
    recovered = minus_known(words, included, victim, {c: encoding.encode(v) for c, v in known.items()})
    return Outcome(SMALL_ROUND, threat, parameters, recovered, refusals)


def weak_contexts() -> dict[str, bytes]:
    """Finding 7: contexts a careless or malicious key holder might publish (serialized, public key only)."""
    def public(context):
        return context.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                                 save_relin_keys=False)

    return {
        "N = 2048, 16-bit plaintext modulus": public(ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=2048,
                                                                plain_modulus=40961, coeff_mod_bit_sizes=[27, 27])),
        "N = 4096, plaintext modulus 65537": public(ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=4096,
                                                               plain_modulus=65537, coeff_mod_bit_sizes=[36, 36, 37])),
        "CKKS context labelled bfv": public(ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192,
                                                       coeff_mod_bit_sizes=[60, 40, 40])),
    }


__all__ = ["decryption_oracle", "key_substitution", "minted_setup", "padding_input", "rogue_context", "small_round",
           "weak_contexts"]
