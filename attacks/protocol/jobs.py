"""Small jobs for the attack scenarios and the tests: the operator's roster and identities, and role objects built
from them."""

from __future__ import annotations

import numpy as np

from protocols import FixedPoint
from protocols.he import HEClient, HEKeyHolder, HEServer
from protocols.he.session import HEOptions
from protocols.identity import Member, enrol
from protocols.masking import MaskingClient, MaskingOptions, MaskingServer
from protocols.terms import RoundTerms

LENGTH, BOUND = 32, 4.0


def vectors(n, length=LENGTH, bound=BOUND, seed=0):
    rng = np.random.default_rng(seed)
    return {c: rng.uniform(-bound, bound, length) for c in range(n)}


def members(n, options: dict, key_holder=None, job="test-job", ids=None):
    roster, identities = enrol(job, range(n) if ids is None else ids, {"protocol": options}, key_holder)
    return {c: Member(identity, roster) for c, identity in identities.items()}


class MaskingJob:
    """A masking round's honest clients and an honest server, before any message: tests drive them."""

    def __init__(self, n=10, options=MaskingOptions(), length=LENGTH, seed=0, terms=None, client_class=MaskingClient,
                 vectors_=None):
        self.vectors = vectors_ or vectors(n, length, seed=seed)
        self.options = options
        self.members = members(n, options.to_json(n))
        self.roster = self.members[0].roster
        self.terms = terms or RoundTerms("r", BOUND)
        self.encoding, self.parameters = options.plan(n, self.terms.bound)
        self.server = MaskingServer(self.roster, self.terms, list(self.vectors), length, self.encoding, self.parameters)
        self.clients = {c: client_class(self.members[c], v, self.terms) for c, v in self.vectors.items()}

    def expected(self, clients=None) -> np.ndarray:
        total = np.zeros(next(iter(self.vectors.values())).shape[0], dtype=np.uint64)
        for c in sorted(self.vectors if clients is None else clients):
            total += self.encoding.encode(self.vectors[c])
        return total


class HEJob:
    """An HE job: key holder 0, an honest server holding the signed context, clients with their terms."""

    def __init__(self, n=4, scheme="bfv", length=300, seed=0, min_clients=2, terms=None):
        self.vectors = vectors(n, length, seed=seed)
        self.options = HEOptions(scheme, n, 1, None, min_clients)
        self.members = members(n, self.options.to_json(), key_holder=0)
        self.roster = self.members[0].roster
        self.terms = terms or RoundTerms("r", BOUND)
        self.holder = HEKeyHolder(self.members[0])
        self.server = HEServer(self.roster)
        self.public = self.server.receive_context(self.holder.public_context)
        self.encoding, self.plan = self.options.plan(n, self.terms.bound)
        self.length = length

    def setup(self, terms=None, participants=None) -> bytes:
        terms = terms or self.terms
        nonce = self.server.receive_open(self.holder.open_round(terms))
        return self.server.setup(terms, sorted(participants or self.vectors), self.length, nonce, self.encoding,
                                 self.plan)

    def client(self, c, terms=None) -> HEClient:
        return HEClient(self.members[c], self.vectors[c], terms or self.terms, self.public)

    def expected(self, clients=None, encoding: FixedPoint | None = None) -> np.ndarray:
        encoding = encoding or self.encoding
        total = np.zeros(self.length, dtype=np.uint64)
        for c in sorted(self.vectors if clients is None else clients):
            total += encoding.encode(self.vectors[c])
        return total
