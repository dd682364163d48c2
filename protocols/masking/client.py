"""One client of the masking protocol as an explicit state machine over wire messages.

Each method takes the server's message (bytes) for the next stage and returns the client's
reply (bytes). Every check that protects the client's input happens before it answers, and any
failure, of whatever kind, moves the client to ABORTED, after which it answers nothing: an abort
never reveals more than was already sent. The client checks the setup against the terms it
derived itself (protocols/terms.py) and encodes its vector under its own bound before any message
leaves it, so a refusal never depends on the server's choice of bound. It refuses a round of fewer
participants, and survivor sets of fewer survivors, than the job's minimum aggregation size m
(protocols/minimum.py): the server chooses n, so without m it could run a round of the victim and
its colluders. Every reply is signed with the client's identity key; every peer key it uses is
checked against the roster. With a contribution ledger (protocols/ledger.py) it refuses, typed, a
statistic it already released in the job: it checks when the round starts and records the release
just before its masked input leaves it (the point of no return: a round abandoned at advertise or
share spends nothing, one that fails after the input stage spends the statistic).

Why the consistency round closes the attacks of issue 12 (findings 1 and 2)
---------------------------------------------------------------------------
Notation: n participants, k neighbours, t threshold, m the job's minimum aggregation size,
q = max(t, ⌊2n/3⌋ + 1, m) (graph.quorum);
N(v) the neighbours of v, N[v] = N(v) ∪ {v} its share holders; U2_v the key-sharer list v was
given and masked with, M_v = N(v) ∩ U2_v the peers whose pairwise masks hide v's input; a
proposal τ = (U2, U3, D = U2 − U3). The server recovers an honest v's input x_v from
y_v = x_v + PRG(b_v) ± Σ_{u∈M_v} PRG(s_vu) only with b_v and every s_vu, and s_vu needs v's or u's
mask key, or u colluding. The rules a client follows (the checks below):

  (R1) it signs at most one τ per session, and only if τ is well formed, τ.U2 is exactly its own
       key-sharer list, it is itself in U3, U3 holds at least m clients, and its own holders N[h]
       keep ≥ t survivors in U3;
  (R2) before revealing, it knows for each neighbour s ∈ U3 that s masked with τ.U2: s signed τ
       (so s checked it, R1), or s's own signature on its masked input, whose digest names the
       key-sharer list s masked with, verifies for τ.U2;
  (R3) it reveals only under the τ it signed, and only after verifying q signatures on that τ
       from distinct roster clients in U3; then for each owner p whose shares it holds it reveals
       the share of b_p if p ∈ U3, of p's mask key if p ∈ D, never both, nothing else.

Lemma (one view). Fewer than 2q − n colluders ⇒ every honest client that reveals anything in the
session reveals under the same τ. Two certified proposals need 2q valid signatures; signatures
are checked against the roster, so only the n participants can sign, and only colluders sign
twice (R1): 2q ≤ n + c. Hence no owner is a survivor to some honest holders and dropped to
others: the server gets b_p and p's mask key only from colluders, which takes t of them.

Theorem. With one view, the server learns x_v of an honest v only if some client has ≥ t − 1
colluding neighbours. Proof: say x_v leaks. If v ∉ U3, honest holders reveal only v's mask key,
and b_v needs t colluders. So v ∈ U3, and b_v came from ≥ t holders, at least one honest (else t
colluders). An honest holder h that reveals b_v knows that v masked with τ.U2 (R2 if h ≠ v,
R1 if h = v): U2_v = τ.U2, so every survivor in N(v) is in M_v. Honest holders reveal only if
they survive (R1), so at least t − c_v holders of v survive, and at least t − 1 − c_v members of
M_v are honest survivors, where c_v counts v's colluding neighbours. If c_v ≤ t − 2 there is one
such u: its mask key is revealed by no honest holder (u ∈ U3, one view), nor rebuilt by fewer than
t colluding holders of u, and v's own mask key is never revealed (v ∈ U3): s_vu stays secret and
PRG(s_vu) hides x_v (X25519 + HKDF + AES-CTR). Otherwise c_v ≥ t − 1, or u has ≥ t colluding
holders. □

Finding 1 (restricted key-sharer view + false dropouts) tells v that only t − 1 peers T shared
keys and tells the others, in personalised proposals, that T dropped. R3 means personalised
proposals cannot gather q signatures each, and under any one proposal R2 makes every honest
neighbour of v refuse to reveal as soon as v is a survivor whose masked input names a list other
than τ.U2. Finding 2 (each neighbour
told the others dropped) needs a proposal per neighbour: the lemma allows one, and R1's
neighbourhood check refuses each of them first (the neighbour's own holders lose their survivors).
Without R2 the restricted view would still need c_v ≥ 2t − k − 1 colluders (the honest
survivors of v's neighbourhood outside T cannot reach t alone); without the quorum, a split view
would need 2t ≤ k + 1 + c, which clients keep refusing through t > (k + 1)/2.
"""

from __future__ import annotations

import enum
import secrets
from functools import cached_property

import numpy as np

from protocols import shamir
from protocols.encoding import FixedPoint
from protocols.envelope import open_sealed, seal
from protocols.errors import MalformedMessageError, ProtocolAbort, ProtocolError
from protocols.identity import Member
from protocols.keys import MASK_PURPOSE, SHARE_PURPOSE, KeyPair, derive
from protocols.ledger import ContributionLedger, Statistic
from protocols.masking.messages import (
    MASK_KEY_SHARE, SELF_MASK_SHARE, ConsistencyRequest, ConsistencySignature, KeyAdvert, MaskedInput, RoundSetup,
    ShareBundle, ShareDelivery, SurvivorSets, UnmaskRequest, UnmaskResponse, ids_digest, input_digest,
)
from protocols.masking.session import MaskingOptions, Session, check_terms, setup_id
from protocols.minimum import require_min_clients
from protocols.prg import MaskExpander
from protocols.terms import RoundTerms
from protocols.wire import Reader, Writer

SHARE_PLAINTEXT = 2 * shamir.SHARE_BYTES
SNAPSHOT_KIND = 12  # a client's state between stages (``MaskingClient.snapshot``); it never leaves the client


class State(enum.Enum):
    NEW = "new"
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    SIGNED = "signed"
    DONE = "done"
    ABORTED = "aborted"


class MaskingClient:
    """``ledger``: the client's record of released statistics; None only for a client without the difference
    attack's defence (single-round tests, the attack's demonstration)."""

    def __init__(self, member: Member, vector: np.ndarray, terms: RoundTerms, ledger: ContributionLedger | None = None):
        self.id = member.id
        self._member = member
        self._roster = member.roster
        self._vector = vector
        self._terms = terms
        self._ledger = ledger
        self.state = State.NEW
        self._setup: RoundSetup | None = None
        self._setup_bytes = b""
        self._key_list_bytes = b""
        self._session: Session | None = None
        self._encoded: np.ndarray | None = None
        self._mask_keys: KeyPair | None = None
        self._share_keys: KeyPair | None = None
        self._self_seed = b""
        self._held: dict[int, tuple[bytes, bytes]] = {}  # owner → (share of b_owner, share of owner's mask key)
        self._key_sharers: tuple[int, ...] = ()  # U2 as this client was told it, the list it masked with
        self._envelope_keys: dict[int, bytes] = {}  # neighbour → the key that seals shares between us
        self._signed: SurvivorSets | None = None  # the one proposal this client signed

    # -- stage 1 ---------------------------------------------------------------------------
    def advertise(self, setup_bytes: bytes) -> bytes:
        def step():
            setup = RoundSetup.from_bytes(setup_bytes)
            encoding = self._check_terms(setup)
            self._check_ledger()
            require_min_clients(len(setup.participants), self.min_clients, "the round setup")
            if self.id not in setup.participants:
                raise ProtocolAbort(f"client {self.id} is not among the round's participants")
            if setup.length != self._vector.shape[0]:
                raise ProtocolAbort(f"the round expects {setup.length} values, this client holds {self._vector.shape[0]}")
            self._encoded = encoding.encode(self._vector)  # refuses NaN/Inf/beyond the client's own bound
            self._setup, self._setup_bytes = setup, setup_bytes
            self._mask_keys, self._share_keys = KeyPair.generate(), KeyPair.generate()
            advert = KeyAdvert(setup.round_id, self.id, self._mask_keys.public, self._share_keys.public)
            return advert.signed(self._member.identity, setup_id(setup_bytes)).to_bytes()

        return self._transition(State.NEW, State.ADVERTISED, step)

    # -- stage 2 ---------------------------------------------------------------------------
    def share_keys(self, key_list_bytes: bytes) -> bytes:
        def step():
            session = Session.derive(self._setup_bytes, key_list_bytes, self.min_clients)
            own = session.adverts.get(self.id)
            if own is None or (own.mask_key, own.share_key) != (self._mask_keys.public, self._share_keys.public):
                raise ProtocolAbort("the key list does not carry this client's own keys")
            holders = session.holders(self.id)
            if len(holders) < self._setup.threshold:
                raise ProtocolAbort(f"{len(holders)} share holders cannot meet the threshold {self._setup.threshold}")
            self._verify_adverts(session)
            self._session, self._key_list_bytes = session, key_list_bytes
            self._self_seed = secrets.token_bytes(shamir.SECRET_BYTES)
            t = self._setup.threshold
            seed_shares = shamir.split(self._self_seed, holders, t)
            key_shares = shamir.split(self._mask_keys.private_bytes(), holders, t)
            self._held[self.id] = (seed_shares[self.id], key_shares[self.id])
            envelopes = []
            for peer in sorted(session.graph[self.id]):
                key = derive(self._share_keys, session.adverts[peer].share_key, session.session_id, SHARE_PURPOSE, self.id, peer)
                self._envelope_keys[peer] = key
                sealed = seal(key, seed_shares[peer] + key_shares[peer], session.session_id, self._setup.round_id, self.id, peer)
                envelopes.append((peer, sealed))
            return ShareBundle(session.session_id, self.id, tuple(envelopes)).signed(
                self._member.identity, session.session_id).to_bytes()

        return self._transition(State.ADVERTISED, State.SHARED, step)

    # -- stage 3 ---------------------------------------------------------------------------
    def masked_input(self, delivery_bytes: bytes) -> bytes:
        def step():
            session = self._session
            delivery = ShareDelivery.from_bytes(delivery_bytes)
            self._check_session(delivery.session)
            if delivery.receiver != self.id:
                raise ProtocolAbort(f"a share delivery for client {delivery.receiver} reached client {self.id}")
            sharers = _unique(delivery.key_sharers, "the list of clients that shared keys")
            if not sharers <= set(session.adverts) or self.id not in sharers:
                raise ProtocolAbort("the list of clients that shared keys names unknown clients or omits this client")
            expected = session.graph[self.id] & sharers
            senders = [sender for sender, _ in delivery.envelopes]
            if len(set(senders)) != len(senders) or set(senders) != expected:
                raise ProtocolAbort("the delivered envelopes do not match the neighbours that shared keys")
            if len(expected) + 1 < self._setup.threshold:
                raise ProtocolAbort(f"only {len(expected)} neighbours shared keys; the threshold is {self._setup.threshold}")
            for sender, sealed in delivery.envelopes:
                plain = open_sealed(self._envelope_keys[sender], sealed, session.session_id, self._setup.round_id, sender, self.id)
                if len(plain) != SHARE_PLAINTEXT:
                    raise ProtocolAbort(f"the envelope from client {sender} holds {len(plain)} bytes, not two shares")
                seed_share, key_share = plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :]
                for share in (seed_share, key_share):
                    try:
                        shamir.share_value(share)
                    except MalformedMessageError as exc:
                        raise ProtocolAbort(f"client {sender} sent a share that is not an element of the field "
                                            "(a faulty or malicious client); this round cannot be unmasked") from exc
                self._held[sender] = (seed_share, key_share)
            self._key_sharers = tuple(sorted(sharers))
            plus, minus = [self._self_seed], []
            for peer in sorted(expected):
                seed = derive(self._mask_keys, session.adverts[peer].mask_key, session.session_id, MASK_PURPOSE, self.id, peer)
                (plus if peer > self.id else minus).append(seed)
            words, self._encoded = self._encoded, None
            MaskExpander(words.shape[0]).apply(words, plus, minus)
            message = MaskedInput(session.session_id, self.id, ids_digest(self._key_sharers), words)
            reply = message.signed(self._member.identity, session.session_id).to_bytes()
            if self._ledger is not None:  # the point of no return: recorded before the masked input leaves
                self._ledger.claim(self._statistic, session.session_id)
            return reply

        return self._transition(State.SHARED, State.MASKED, step)

    # -- stage 4: consistency ---------------------------------------------------------------
    def sign_consistency(self, request_bytes: bytes) -> bytes:
        def step():
            request = ConsistencyRequest.from_bytes(request_bytes)
            self._check_session(request.session)
            if request.receiver != self.id:
                raise ProtocolAbort(f"a consistency request for client {request.receiver} reached client {self.id}")
            self._check_sets(request.sets)
            self._check_neighbourhood(request.sets)
            self._signed = request.sets
            signature = ConsistencySignature(self._session.session_id, self.id, request.sets.digest())
            return signature.signed(self._member.identity, self._session.session_id).to_bytes()

        return self._transition(State.MASKED, State.SIGNED, step)

    # -- stage 5 ---------------------------------------------------------------------------
    def unmask(self, request_bytes: bytes) -> bytes:
        def step():
            request = UnmaskRequest.from_bytes(request_bytes)
            self._check_session(request.session)
            if request.receiver != self.id:
                raise ProtocolAbort(f"an unmask request for client {request.receiver} reached client {self.id}")
            sets = request.sets
            self._check_sets(sets)
            self._check_neighbourhood(sets)
            signers = self._check_certificate(request)
            self._check_headers(request, signers)
            shares = self._reveal(sets)
            self._held.clear()
            response = UnmaskResponse(self._session.session_id, self.id, tuple(shares))
            return response.signed(self._member.identity, self._session.session_id).to_bytes()

        return self._transition(State.SIGNED, State.DONE, step)

    # -- state between processes -----------------------------------------------------------
    def snapshot(self) -> bytes:
        """Everything this client holds mid-round, in the wire format (kind ``SNAPSHOT_KIND``), for a transport
        that runs each stage in a fresh process (a Flower SuperNode keeps it in the node's ``Context.state``).
        It holds the client's secrets (its input, key pairs, self-mask seed and the shares it holds), so it
        never leaves the client's machine; the identity key and the ledger are not in it (the client's own
        files hold those). The plain vector is in it only before the round opens: from ``advertise`` on the
        client needs only its encoding (until the masked input leaves) and its ledger name, the statistic, so a
        transport that carries the snapshot through every stage does not copy the vector (megabytes) each time."""
        opened = self.state is not State.NEW
        vector = np.zeros(0, np.float64) if opened else np.ascontiguousarray(self._vector, np.float64)
        w = Writer(SNAPSHOT_KIND).text(self.state.value).words(vector.view(np.uint64)).u8(opened)
        if opened:
            statistic = self._statistic
            w.text(statistic.job).text(statistic.round_id).text(statistic.broadcast).text(statistic.content)
        w.text(self._terms.round_id).f64(self._terms.bound).blob(self._terms.broadcast)
        w.blob(self._setup_bytes).blob(self._key_list_bytes)
        w.u8(self._encoded is not None).words(self._encoded if self._encoded is not None else np.zeros(0, np.uint64))
        for keys in (self._mask_keys, self._share_keys):
            w.blob(b"" if keys is None else keys.private_bytes())
        w.blob(self._self_seed).u32(len(self._held))
        for owner, (seed_share, key_share) in sorted(self._held.items()):
            w.u32(owner).blob(seed_share).blob(key_share)
        w.ids(self._key_sharers).u32(len(self._envelope_keys))
        for peer, key in sorted(self._envelope_keys.items()):
            w.u32(peer).blob(key)
        w.u8(self._signed is not None)
        return (self._signed.write(w) if self._signed is not None else w).to_bytes()

    @classmethod
    def restore(cls, data: bytes, member: Member, ledger: ContributionLedger | None = None) -> MaskingClient:
        """The client a ``snapshot`` was taken of, for the same member (identity and roster) and ledger;
        the session is derived again from the setup and key list it saw, as in ``share_keys``."""
        r = Reader(data, SNAPSHOT_KIND, "masking client snapshot")
        try:
            state = State(r.text())
        except ValueError as exc:
            raise MalformedMessageError(f"masking client snapshot: unknown state: {exc}") from exc
        vector = r.words().view(np.float64).copy()
        if r.u8() != (state is not State.NEW):
            raise MalformedMessageError(f"masking client snapshot: state {state.value!r} does not match its contents")
        statistic = None if state is State.NEW else Statistic(r.text(), r.text(), r.text(), r.text())
        client = cls(member, vector, RoundTerms(r.text(), r.f64(), r.blob()), ledger)
        client.state = state
        if statistic is not None:
            client.__dict__["_statistic"] = statistic  # the cached property, computed before the vector was left out
        client._setup_bytes, client._key_list_bytes = r.blob(), r.blob()
        has_encoded, encoded = r.u8(), r.words()
        client._encoded = encoded.copy() if has_encoded else None
        client._mask_keys, client._share_keys = (KeyPair.from_private_bytes(raw) if raw else None
                                                 for raw in (r.blob(), r.blob()))
        client._self_seed = r.blob()
        client._held = {r.u32(): (r.blob(), r.blob()) for _ in range(r.count(12))}
        client._key_sharers = tuple(r.ids())
        client._envelope_keys = {r.u32(): r.blob() for _ in range(r.count(8))}
        client._signed = SurvivorSets.read(r) if r.u8() else None
        r.end()
        if client._setup_bytes:
            client._setup = RoundSetup.from_bytes(client._setup_bytes)
        if client._key_list_bytes:
            client._session = Session.derive(client._setup_bytes, client._key_list_bytes, client.min_clients)
        return client

    # -- checks (one method each, so a test double can remove exactly one) ------------------
    @property
    def min_clients(self) -> int:
        """m: the fewest clients a round, its survivor sets and its certificate may hold; the operator's
        number from the roster, never the server's."""
        return MaskingOptions.from_roster(self._roster).min_clients

    def _check_terms(self, setup: RoundSetup) -> FixedPoint:
        """The setup is the round this client derived itself; its encoding is computed here, not read."""
        return check_terms(setup, self._roster, self._terms)

    def _check_ledger(self) -> None:
        """The round does not ask again for a statistic this client already released in the job."""
        if self._ledger is not None:
            self._ledger.check(self._statistic)

    @cached_property
    def _statistic(self) -> Statistic:
        return Statistic.of(self._roster.digest, self._terms, self._vector)

    def _verify_adverts(self, session: Session) -> None:
        """Every neighbour's keys are signed by that roster client for exactly the setup this client saw."""
        session.verify_adverts(self._roster, session.graph[self.id])

    def _check_sets(self, sets: SurvivorSets) -> None:
        """Well-formed sets that match what this client knows: its own key-sharer list, itself a survivor,
        at least t survivors and at least m."""
        sets.check()
        if self.id in sets.dropped:
            raise ProtocolAbort("this client is listed as dropped")
        if self.id not in sets.survivors:
            raise ProtocolAbort("this client is not listed among the survivors")
        if sets.key_sharers != self._key_sharers:
            raise ProtocolAbort("the proposed key-sharer list is not the one this client was given and masked with")
        if len(sets.survivors) < self._setup.threshold:
            raise ProtocolAbort(f"only {len(sets.survivors)} survivors, fewer than the threshold {self._setup.threshold}")
        require_min_clients(len(sets.survivors), self.min_clients, "the proposed survivor set")

    def _check_neighbourhood(self, sets: SurvivorSets) -> None:
        """This client's own holders keep t survivors (else its secrets could not be rebuilt honestly)."""
        alive = len(self._session.holders(self.id) & set(sets.survivors))
        if alive < self._setup.threshold:
            raise ProtocolAbort(f"only {alive} of this client's {self._setup.neighbours + 1} share holders survive; "
                                f"the threshold is {self._setup.threshold}: refusing to reveal anything")

    def _check_certificate(self, request: UnmaskRequest) -> set[int]:
        """The sets are the ones this client signed, certified by q signatures of distinct roster survivors.
        Returns the signers whose signatures it verified: q of them, and every neighbour among them."""
        if self._signed is None or request.sets != self._signed:
            raise ProtocolAbort("the unmask request's survivor sets are not the ones this client signed")
        digest, survivors, session = request.sets.digest(), set(request.sets.survivors), self._session
        listed = [signer for signer, _ in request.certificate]
        if len(set(listed)) != len(listed) or not set(listed) <= survivors:
            raise ProtocolAbort("the certificate lists a client twice or outside the survivors")
        neighbours, verified = session.graph[self.id], set()
        for signer, signature in sorted(request.certificate, key=lambda entry: entry[0] not in neighbours):
            if len(verified) >= session.quorum and signer not in neighbours:
                break  # q verified, every neighbour among them: the rest need no check
            self._roster.verify(session.session_id, ConsistencySignature.STAGE, signer, digest, signature)
            verified.add(signer)
        if len(verified) < session.quorum:
            raise ProtocolAbort(f"only {len(verified)} survivors signed these survivor sets; {session.quorum} must, "
                                "so that no other sets can be certified in this session")
        return verified

    def _check_headers(self, request: UnmaskRequest, signers: set[int]) -> None:
        """Each surviving neighbour masked with exactly the proposed key-sharer list: it signed the sets (having
        checked that list against its own), or its masked-input signature, which names the list it masked
        with, is attached and verifies."""
        session = self._session
        unsigned = (session.graph[self.id] & set(request.sets.survivors)) - signers
        if sorted(c for c, _, _ in request.headers) != sorted(unsigned):
            raise ProtocolAbort("the unmask request does not carry the masked-input signature of every surviving "
                                "neighbour that did not sign the survivor sets")
        sharers = ids_digest(request.sets.key_sharers)
        for client, words_digest, signature in request.headers:
            try:
                self._roster.verify(session.session_id, MaskedInput.STAGE, client,
                                    input_digest(session.session_id, client, sharers, words_digest), signature)
            except ProtocolAbort as exc:
                raise ProtocolAbort(f"client {client}'s masked input was not made with the proposed key-sharer list "
                                    f"(the server showed clients different lists), or is not its own: {exc}") from exc

    def _reveal(self, sets: SurvivorSets) -> list[tuple[int, int, bytes]]:
        """Per owner whose shares this client holds: its self-mask seed's share if it survived, its mask key's
        share if it dropped; never both (one branch per owner), nothing for an owner in neither list."""
        survivors, dropped = set(sets.survivors), set(sets.dropped)
        shares = []
        for owner in sorted(self._held):
            seed_share, key_share = self._held[owner]
            if owner in survivors:
                shares.append((owner, SELF_MASK_SHARE, seed_share))
            elif owner in dropped:
                shares.append((owner, MASK_KEY_SHARE, key_share))
        return shares

    # -- helpers ---------------------------------------------------------------------------
    def _check_session(self, session_id: bytes) -> None:
        if session_id != self._session.session_id:
            raise ProtocolAbort("a message for another session or round (replayed or misrouted)")

    def _transition(self, expected: State, following: State, step) -> bytes:
        """Run one stage if the client is where that stage starts; abort on any failure whatsoever."""
        if self.state is not expected:
            was = self.state
            self._abort()
            raise ProtocolAbort(f"client {self.id}: a {following.value!r} request arrived in state {was.value!r}"
                                " (repeated, replayed or out of order)")
        try:
            reply = step()
        except ProtocolError:
            self._abort()
            raise
        except Exception as exc:  # anything else a hostile message provokes is still a refusal
            self._abort()
            raise ProtocolAbort(f"client {self.id} refused a {following.value!r} request it could not process: "
                                f"{type(exc).__name__}: {exc}") from exc
        self.state = following
        return reply

    def _abort(self) -> None:
        self.state = State.ABORTED
        self._held.clear()
        self._envelope_keys.clear()
        self._encoded = None
        self._self_seed = b""


def _unique(ids, what: str) -> frozenset[int]:
    if len(set(ids)) != len(ids):
        raise ProtocolAbort(f"{what} names a client twice")
    return frozenset(ids)
