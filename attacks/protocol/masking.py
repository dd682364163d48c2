"""A malicious masking server: one driver per attack, over an honest ``MaskingServer``'s message builders.

The drivers start from a server and clients that have not exchanged anything yet (``small_round``
builds its own server: the round's size is the attack). They use the
server's own message builders (``delivery``, ``consistency_request``, ``unmask_request``) with
lists of their choosing, collect what clients answer, and try to strip every mask off the
victim's masked input with the secrets that came back. A client that refuses contributes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from attacks.protocol.outcome import Outcome, ask, minus_known
from protocols import shamir
from protocols.encoding import FixedPoint
from protocols.errors import ProtocolError, ThresholdError
from protocols.envelope import open_sealed, seal
from protocols.identity import Member
from protocols.keys import MASK_PURPOSE, SHARE_PURPOSE, KeyPair, derive
from protocols.masking import MaskingClient, MaskingServer
from protocols.masking.messages import (
    SELF_MASK_SHARE, ConsistencySignature, KeyAdvert, KeyList, MaskedInput, RoundSetup, ShareBundle,
    ShareDelivery, SurvivorSets, UnmaskResponse,
)
from protocols.masking.session import MaskingOptions, Session
from protocols.prg import MaskExpander

ACTIVE = "active server, no colluding client"


def parameters(server: MaskingServer, **extra) -> dict:
    setup = server.setup
    return {"clients": len(setup.participants), "neighbours": setup.neighbours, "threshold": setup.threshold,
            "quorum": server.session.quorum if server.session else None, **extra}


# -- the honest opening, which every attack below shares -------------------------------------------
def share(server: MaskingServer, clients: Mapping[int, MaskingClient], refusals: dict) -> None:
    """Stages 1–2 as an honest server runs them; refusals are added to ``refusals``."""
    replies, more = ask(clients, "advertise", dict.fromkeys(clients, server.setup_message()))
    refusals |= more
    for reply in replies.values():
        server.receive_advert(reply)
    key_list = server.key_list()
    replies, more = ask(clients, "share_keys", dict.fromkeys(replies, key_list))
    refusals |= more
    for reply in replies.values():
        server.receive_shares(reply)


def mask(server: MaskingServer, clients, views: Mapping[int, Iterable[int]], refusals: dict) -> None:
    """Stage 3 with each client told its own key-sharer list."""
    replies, more = ask(clients, "masked_input", {c: server.delivery(c, view) for c, view in views.items()})
    refusals |= more
    for reply in replies.values():
        server.receive_masked(reply)


def certify_and_unmask(server: MaskingServer, clients, views: Mapping[int, SurvivorSets], refusals: dict,
                       forged: Mapping[int, Member] = ()) -> dict[int, UnmaskResponse]:
    """Stages 4–5 with a proposal per client: each proposal goes out with whatever signatures it gathered
    (``forged``: colluders whose identity keys the server holds sign every proposal)."""
    replies, more = ask(clients, "sign_consistency", {c: server.consistency_request(c, sets) for c, sets in views.items()})
    refusals |= more
    signed: dict[bytes, dict[int, bytes]] = {}
    for client, reply in replies.items():
        message = ConsistencySignature.from_bytes(reply)
        signed.setdefault(message.sets, {})[client] = message.signature
    session = server.session.session_id
    for sets in {sets.digest(): sets for sets in views.values()}.values():
        for client, member in dict(forged).items():
            signature = ConsistencySignature(session, client, sets.digest()).signed(member.identity, session).signature
            signed.setdefault(sets.digest(), {})[client] = signature
    requests = {c: server.unmask_request(c, sets, signed.get(sets.digest(), {})) for c, sets in views.items()
                if c in replies}
    answers, more = ask(clients, "unmask", requests)
    refusals |= more
    return {c: UnmaskResponse.from_bytes(a) for c, a in answers.items()}


def gather(responses: Iterable[UnmaskResponse], held: Mapping[int, Mapping[int, tuple[bytes, bytes]]] = ()
           ) -> tuple[dict[int, dict[int, bytes]], dict[int, dict[int, bytes]]]:
    """owner → holder → share, for self-mask seeds and for mask keys (``held``: colluders' whole holdings)."""
    seeds: dict[int, dict[int, bytes]] = {}
    keys: dict[int, dict[int, bytes]] = {}
    for response in responses:
        for owner, kind, value in response.shares:
            (seeds if kind == SELF_MASK_SHARE else keys).setdefault(owner, {})[response.sender] = value
    for holder, shares in dict(held).items():
        for owner, (seed_share, key_share) in shares.items():
            seeds.setdefault(owner, {})[holder] = seed_share
            keys.setdefault(owner, {})[holder] = key_share
    return seeds, keys


def strip(session: Session, words: np.ndarray, victim: int, seed: bytes, partner_keys: Mapping[int, KeyPair] = (),
          own_key: KeyPair | None = None, partners: Iterable[int] = ()) -> np.ndarray:
    """The victim's masked input ``words`` with its self mask and every pairwise mask removed: its encoding.

    Each pairwise seed comes from the partner's mask key (``partner_keys``) or the victim's own."""
    words = np.array(words)
    plus, minus = [], [seed]
    for peer in sorted(partners):
        if own_key is not None:
            pair = derive(own_key, session.adverts[peer].mask_key, session.session_id, MASK_PURPOSE, victim, peer)
        else:
            pair = derive(partner_keys[peer], session.adverts[victim].mask_key, session.session_id, MASK_PURPOSE, peer, victim)
        (minus if peer > victim else plus).append(pair)  # the victim added +PRG for larger ids
    MaskExpander(words.shape[0]).apply(words, plus, minus)
    return words


def rebuild(threshold: int, shares: Mapping[int, bytes] | None) -> bytes | None:
    """A secret from the shares the attack obtained, or None when fewer than t arrived."""
    try:
        return shamir.Reconstructor(threshold).reconstruct(dict(shares or {}))
    except ThresholdError:
        return None


def rebuild_key(threshold: int, shares) -> KeyPair | None:
    raw = rebuild(threshold, shares)
    return None if raw is None else KeyPair.from_private_bytes(raw)


def _strip_through_partners(server, victim, seeds, keys, partners) -> np.ndarray | None:
    t = server.threshold
    seed = rebuild(t, seeds.get(victim))
    partner_keys = {u: rebuild_key(t, keys.get(u)) for u in partners}
    if seed is None or any(k is None for k in partner_keys.values()):
        return None
    return strip(server.session, server.masked_inputs[victim], victim, seed, partner_keys, partners=partners)


def _strip_with_own_key(server, victim, seeds, keys, partners) -> np.ndarray | None:
    """Both of the victim's secrets came back: its self-mask seed and its own mask key."""
    t = server.threshold
    seed, own = rebuild(t, seeds.get(victim)), rebuild_key(t, keys.get(victim))
    if seed is None or own is None:
        return None
    return strip(server.session, server.masked_inputs[victim], victim, seed, own_key=own, partners=partners)


def _survivor_sets(sharers, dropped) -> SurvivorSets:
    dropped = set(dropped)
    return SurvivorSets(tuple(sharers), tuple(c for c in sharers if c not in dropped), tuple(sorted(dropped)))


# -- finding 1 ------------------------------------------------------------------------------------
def restricted_view(server: MaskingServer, clients, victim: int, false_dropouts: bool = True) -> Outcome:
    """Finding 1: tell the victim that only t − 1 of its neighbours (the peers) shared keys, so it masks
    with them alone; tell every other client, each in its own proposal, that those peers dropped (all but
    itself); rebuild the victim's self-mask seed and the peers' mask keys, strip the victim's input.
    Without ``false_dropouts`` every client gets the one proposal in which everybody survived (it can be
    certified: only the victim's own masked input betrays the restricted list)."""
    refusals: dict = {}
    share(server, clients, refusals)
    sharers = server.key_sharers()
    peers = sorted(server.session.graph[victim] & set(sharers))[: server.threshold - 1]
    views = {c: sharers for c in sharers}
    views[victim] = tuple(sorted({victim, *peers}))
    mask(server, clients, views, refusals)
    proposals = {c: _survivor_sets(sharers, set(peers) - {c} if false_dropouts else ()) for c in server.masked_inputs
                 if c != victim}
    seeds, keys = gather(certify_and_unmask(server, clients, proposals, refusals).values())
    recovered = _strip_through_partners(server, victim, seeds, keys, peers)
    return Outcome("finding 1: restricted key-sharer view + false dropouts", ACTIVE,
                   parameters(server, peers=len(peers)), recovered, refusals)


# -- finding 2 ------------------------------------------------------------------------------------
def neighbourhood_wipe(server: MaskingServer, clients, victim: int) -> Outcome:
    """Finding 2: every neighbour of the victim is told that the victim's other neighbours dropped (each in its
    own proposal), every other client that they all dropped; the victim survives everywhere."""
    refusals: dict = {}
    sharers = _share_and_mask(server, clients, refusals)
    around = set(server.session.graph[victim])
    proposals = {c: _survivor_sets(sharers, around - {c}) for c in server.masked_inputs if c != victim}
    seeds, keys = gather(certify_and_unmask(server, clients, proposals, refusals).values())
    recovered = _strip_through_partners(server, victim, seeds, keys, around)
    return Outcome("finding 2: SecAgg+ neighbourhood wiped", ACTIVE, parameters(server), recovered, refusals)


# -- an honest round, for the attacks that lie before it -------------------------------------------
def honest_round(server: MaskingServer, clients, withheld: Iterable[int] = ()
                 ) -> tuple[np.ndarray | None, dict[int, ProtocolError]]:
    """Every stage as an honest server runs it; the sum's words, or None once too many refused. ``withheld``:
    clients whose share deliveries the server never sends, claiming they dropped before masking."""
    refusals: dict = {}
    try:
        _share_and_mask(server, clients, refusals, withheld)
        _certify(server, clients, refusals)
        answers, more = ask(clients, "unmask", server.unmask_requests())
        refusals |= more
        for answer in answers.values():
            server.receive_unmask(answer)
        return server.finish(), refusals
    except ThresholdError:
        return None, refusals


def _share_and_mask(server: MaskingServer, clients, refusals: dict, withheld: Iterable[int] = ()) -> tuple[int, ...]:
    """Stages 1–3 as an honest server runs them (but for the ``withheld`` clients' deliveries); returns U2."""
    share(server, clients, refusals)
    sharers, withheld = server.key_sharers(), set(withheld)
    mask(server, clients, {c: sharers for c in sharers if c not in withheld}, refusals)
    return sharers


def _certify(server: MaskingServer, clients, refusals: dict) -> None:
    """Stage 4 as an honest server runs it."""
    replies, more = ask(clients, "sign_consistency", server.consistency_requests())
    refusals |= more
    for reply in replies.values():
        server.receive_signature(reply)


# -- finding 3 ------------------------------------------------------------------------------------
def split_model(server: MaskingServer, clients, victim: int, known: Mapping[int, np.ndarray]) -> Outcome:
    """Finding 3: the clients other than the victim were sent a model under which their contributions are
    ``known`` (encoded words); one setup goes to all. The "sum" minus the known part is the victim's input."""
    total, refusals = honest_round(server, clients)
    recovered = minus_known(total, server.included, victim, dict(known))
    return Outcome("finding 3: different models in one session", ACTIVE, parameters(server), recovered, refusals)


# -- finding 4 ------------------------------------------------------------------------------------
def bound_oracle(probe, public_bound: float, rounds: int = 40) -> Outcome:
    """Finding 4: bisect the victim's largest |value| with the bound of fresh rounds. ``probe(bound)`` sends
    the victim a new setup declaring ``bound`` and returns its typed refusal or None if it advertised keys.
    It stops once no float lies between the bounds (about 55 rounds): ``high`` is then the value itself, and a
    further probe would only ask for the public bound, which every client accepts."""
    low, high, answers, refusals = 0.0, public_bound, [], {}
    for index in range(rounds):
        guess = (low + high) / 2
        if not low < guess < high:
            break
        refusal = probe(guess)
        answers.append(refusal is None)
        if refusal is None:
            high = guess
        else:
            low = guess
            refusals[index] = refusal
    recovered = np.array([high]) if any(answers) else None  # all refused: the answers carry nothing
    return Outcome("finding 4: the bound as an oracle", ACTIVE, {"rounds": rounds, "public_bound": public_bound},
                   recovered, refusals, {"answers": answers})


# -- the server chooses how many clients a round has -------------------------------------------------
class UncheckedServer(MaskingServer):
    """The attacker's server: the honest message builders without the job's minimum m (m is what stops it)."""

    min_clients = 1


def small_round(roster, terms, clients, victim: int, length: int, known: Mapping[int, np.ndarray],
                withheld: Iterable[int] = ()) -> Outcome:
    """A round of the victim and colluders: roster clients whose vectors the server knows (``known``; they run
    whatever code the server likes), planned as the job's options plan a round of that many clients. Without
    ``withheld`` the setup names only them; with it the setup also names honest clients that the server lets
    share keys and then claims dropped before masking, so the survivors are the victim and the colluders
    again. The sum minus the colluders' encodings is the victim's input."""
    participants = sorted(clients)
    options = MaskingOptions.from_roster(roster)
    encoding, graph = options.plan(len(participants), terms.bound)
    server = UncheckedServer(roster, terms, participants, length, encoding, graph)
    total, refusals = honest_round(server, clients, withheld)
    recovered = minus_known(total, server.included, victim, encoded(known, encoding))
    sent = [stage for stage, messages in server.received.items() if victim in messages]
    extra = {"colluders": len(known), "withheld": len(set(withheld)), "min_clients": options.min_clients}
    return Outcome("a round smaller than the job's minimum", f"active server with {len(known)} colluding roster clients",
                   parameters(server, **extra), recovered, refusals, {"victim_sent": sent})


# -- attacks refused before issue 12, kept as drivers -----------------------------------------------
def survivor_and_dropped(server: MaskingServer, clients, victim: int) -> Outcome:
    """The flwr 1.41 attack: list the victim both as a survivor and as dropped, so holders reveal both of its
    secrets; strip its input with its own mask key."""
    refusals: dict = {}
    sharers = _share_and_mask(server, clients, refusals)
    lying = SurvivorSets(sharers, sharers, (victim,))
    seeds, keys = gather(certify_and_unmask(server, clients, {c: lying for c in server.masked_inputs}, refusals).values())
    recovered = _strip_with_own_key(server, victim, seeds, keys, server.session.graph[victim] & set(sharers))
    return Outcome("victim listed as survivor and dropped", ACTIVE, parameters(server), recovered, refusals)


def split_views(server: MaskingServer, clients, victim: int, recruit: int) -> Outcome:
    """``recruit`` of the victim's neighbours collude (hand over their identity keys and every share they hold;
    clients must be ``recruitable``). The victim and t − 1 − c honest holders hear "the victim survived"
    (self-mask seed shares), the other honest holders hear "the victim dropped" (mask-key shares)."""
    refusals: dict = {}
    sharers = _share_and_mask(server, clients, refusals)
    around = sorted(server.session.graph[victim])
    colluders = {c: clients[c] for c in around[:recruit]}
    honest = {c: client for c, client in clients.items() if c not in colluders}
    told_dropped = set(around[recruit:][server.threshold - 1 - recruit:])
    survived, dropped = _survivor_sets(sharers, ()), _survivor_sets(sharers, {victim})
    proposals = {c: dropped if c in told_dropped else survived for c in server.masked_inputs if c in honest}
    members = {c: colluder.identity_member() for c, colluder in colluders.items()}
    responses = certify_and_unmask(server, honest, proposals, refusals, forged=members)
    seeds, keys = gather(responses.values(), {c: colluder.holdings() for c, colluder in colluders.items()})
    recovered = _strip_with_own_key(server, victim, seeds, keys, server.session.graph[victim])
    return Outcome("split views", f"active server with {recruit} colluding neighbours of the victim",
                   parameters(server, colluders=recruit), recovered, refusals)


def replayed_unmask(server: MaskingServer, clients, victim: int) -> Outcome:
    """Run the round honestly up to the certified unmask request (everyone survived: self-mask seeds come
    back), then replay the request with the victim dropped to collect its mask key too."""
    refusals: dict = {}
    sharers = _share_and_mask(server, clients, refusals)
    _certify(server, clients, refusals)
    requests = server.unmask_requests()
    first, more = ask(clients, "unmask", requests)
    refusals |= more
    lying = _survivor_sets(sharers, {victim})
    second, more = ask(clients, "unmask", {c: server.unmask_request(c, lying, server.signatures) for c in requests})
    refusals |= more
    seeds, _ = gather(UnmaskResponse.from_bytes(a) for a in first.values())
    _, keys = gather(UnmaskResponse.from_bytes(a) for a in second.values())
    recovered = _strip_with_own_key(server, victim, seeds, keys, server.session.graph[victim])
    return Outcome("replayed unmask request", ACTIVE, parameters(server), recovered, refusals)


def substituted_keys(server: MaskingServer, clients, victim: int) -> Outcome:
    """Key-list split: the victim's key list carries keys the server made for every other client, so the
    victim's share envelopes open for the server and every pairwise seed is the server's to compute."""
    replies, refusals = ask(clients, "advertise", dict.fromkeys(clients, server.setup_message()))
    for reply in replies.values():
        server.receive_advert(reply)
    server.key_list()  # the honest session, for everyone else
    fakes = {c: (KeyPair.generate(), KeyPair.generate()) for c in replies if c != victim}
    real = KeyAdvert.from_bytes(replies[victim])
    adverts = tuple(real if c == victim else KeyAdvert(real.round_id, c, fakes[c][0].public, fakes[c][1].public, bytes(64))
                    for c in sorted(replies))
    key_list = KeyList(real.round_id, adverts).to_bytes()
    try:
        bundle = ShareBundle.from_bytes(clients[victim].share_keys(key_list))
    except ProtocolError as exc:
        return Outcome("substituted keys (key-list split)", ACTIVE, parameters(server), None, refusals | {victim: exc})
    session = Session.derive(server.setup_message(), key_list, server.min_clients)
    setup = RoundSetup.from_bytes(server.setup_message())
    envelope_keys = {peer: derive(fakes[peer][1], real.share_key, session.session_id, SHARE_PURPOSE, peer, victim)
                     for peer in session.graph[victim]}
    opened = {peer: open_sealed(envelope_keys[peer], sealed, session.session_id, setup.round_id, victim, peer)
              for peer, sealed in bundle.envelopes}
    filler = bytes(2 * shamir.SHARE_BYTES)  # any field elements: the victim only stores them
    envelopes = tuple((peer, seal(envelope_keys[peer], filler, session.session_id, setup.round_id, peer, victim))
                      for peer in sorted(session.graph[victim]))
    delivery = ShareDelivery(session.session_id, victim, tuple(sorted(replies)), envelopes).to_bytes()
    masked = MaskedInput.from_bytes(clients[victim].masked_input(delivery))
    seed = rebuild(setup.threshold, {peer: plain[: shamir.SHARE_BYTES] for peer, plain in opened.items()})
    words = strip(session, masked.words, victim, seed, {peer: keys[0] for peer, keys in fakes.items()},
                  partners=session.graph[victim])
    return Outcome("substituted keys (key-list split)", ACTIVE, parameters(server), words, refusals)


def sybil_isolation(server: MaskingServer, victim: MaskingClient, sybils: Mapping[int, MaskingClient],
                    sybil_words: Mapping[int, np.ndarray]) -> Outcome:
    """Surround the victim with clients the server runs itself (their inputs known): the "sum" minus theirs
    is the victim's input. It works exactly when the victim accepts the server's roster."""
    clients = {victim.id: victim, **sybils}
    total, refusals = honest_round(server, clients)
    recovered = minus_known(total, server.included, victim.id, dict(sybil_words))
    return Outcome("Sybil isolation", f"active server with {len(sybils)} Sybil clients", parameters(server),
                   recovered, refusals)


# -- malicious clients -------------------------------------------------------------------------------
class Recruitable:
    """Mixin of a client the server may recruit: its owner hands over its identity key and every share it holds
    (the client itself behaves as its base class does)."""

    def identity_member(self) -> Member:
        return self._member

    def holdings(self) -> dict[int, tuple[bytes, bytes]]:
        return dict(self._held)


def recruitable(client_class: type) -> type:
    return type(f"Recruitable{client_class.__name__}", (Recruitable, client_class), {})


NOT_A_FIELD_ELEMENT = shamir.PRIME.to_bytes(shamir.SHARE_BYTES, "big")


class OverflowSharer(MaskingClient):
    """Finding 9: seals, for each neighbour, a self-mask "share" equal to the field prime p."""

    def share_keys(self, key_list_bytes: bytes) -> bytes:
        bundle = ShareBundle.from_bytes(super().share_keys(key_list_bytes))
        session, round_id = self._session.session_id, self._setup.round_id
        envelopes = []
        for peer, sealed in bundle.envelopes:
            plain = open_sealed(self._envelope_keys[peer], sealed, session, round_id, self.id, peer)
            bad = NOT_A_FIELD_ELEMENT + plain[shamir.SHARE_BYTES:]
            envelopes.append((peer, seal(self._envelope_keys[peer], bad, session, round_id, self.id, peer)))
        return ShareBundle(session, self.id, tuple(envelopes)).signed(self._member.identity, session).to_bytes()


class OverflowRevealer(MaskingClient):
    """Finding 9 at the last stage: reveals p in place of every share it holds."""

    def unmask(self, request_bytes: bytes) -> bytes:
        response = UnmaskResponse.from_bytes(super().unmask(request_bytes))
        shares = tuple((owner, kind, NOT_A_FIELD_ELEMENT) for owner, kind, _ in response.shares)
        session = self._session.session_id
        return UnmaskResponse(session, self.id, shares).signed(self._member.identity, session).to_bytes()


def encoded(vectors: Mapping[int, np.ndarray], encoding: FixedPoint) -> dict[int, np.ndarray]:
    """What the server knows of clients whose inputs it chose (a crafted model, Sybils): their encodings."""
    return {c: encoding.encode(v) for c, v in vectors.items()}


__all__ = ["Recruitable", "recruitable", "OverflowRevealer", "OverflowSharer", "bound_oracle", "encoded", "honest_round",
           "neighbourhood_wipe", "replayed_unmask", "restricted_view", "small_round", "split_model", "split_views",
           "substituted_keys", "survivor_and_dropped", "sybil_isolation", "UncheckedServer"]
