"""Each protocol attack staged on a small job, against client classes of the caller's choosing.

The same staging serves the tests (tests/test_malicious_*.py) and the catalogue of outcomes
(attacks/protocol/catalogue.py), so that what the privacy report states is what the tests assert.
A scenario returns the attack's ``Outcome`` with what only the evaluator may read: the victim's
fixed-point words, or the job that holds them (the drivers never read the victim's vector).
"""

from __future__ import annotations

import numpy as np

from attacks.protocol import he, masking
from attacks.protocol.doubles import NoMinimumClient, NoMinimumHEClient
from attacks.protocol.jobs import BOUND, LENGTH, HEJob, MaskingJob
from attacks.protocol.outcome import Outcome
from protocols import FixedPoint, Identity, Member, ProtocolError, Roster, default_min_clients
from protocols.he import HEClient
from protocols.masking import MaskingClient, MaskingOptions, MaskingServer
from protocols.terms import RoundTerms, broadcast_digest


# -- masking ---------------------------------------------------------------------------------------
def job_with(client_class, victim_class=None, victim=0, **kwargs) -> MaskingJob:
    """A masking job whose clients all run ``client_class`` but the victim (``victim_class``, default the same)."""
    job = MaskingJob(**kwargs)
    job.clients = {c: (client_class if c != victim else (victim_class or client_class))(job.members[c], v, job.terms)
                   for c, v in job.vectors.items()}
    return job


def victim_words(job, victim=0) -> np.ndarray:
    return job.encoding.encode(job.vectors[victim])


def split_model_round(client_class) -> tuple[MaskingJob, Outcome]:
    """Finding 3 on 6 clients: the victim got the real model, the others (``client_class``) one under which their
    update is known (here: zero); one setup for all."""
    victim_model, crafted = broadcast_digest({"w": np.ones(3)}), broadcast_digest({"w": np.zeros(3)})
    base = MaskingJob(n=6, terms=RoundTerms("r", BOUND, victim_model))
    known = {c: np.zeros(LENGTH) for c in base.vectors if c != 0}
    job = MaskingJob(n=6, terms=RoundTerms("r", BOUND, victim_model), vectors_={0: base.vectors[0], **known})
    others = RoundTerms("r", BOUND, crafted)  # what the other clients received
    job.clients = {c: (MaskingClient(job.members[c], v, job.terms) if c == 0 else
                       client_class(job.members[c], v, others)) for c, v in job.vectors.items()}
    return job, masking.split_model(job.server, job.clients, 0, masking.encoded(known, job.encoding))


def bound_probe(job, client_class, victim=0):
    """One fresh round per probe: the server declares ``bound``; the victim answers or refuses."""
    n = len(job.vectors)

    def probe(bound):
        encoding = FixedPoint.for_round(n, bound)
        server = MaskingServer(job.roster, RoundTerms("r", bound), list(job.vectors), LENGTH, encoding, job.parameters)
        try:
            client_class(job.members[victim], job.vectors[victim], job.terms).advertise(server.setup_message())
        except ProtocolError as exc:
            return exc
        return None

    return probe


def small_round(victim_class, colluders, withheld=()):
    """A job of 10 clients (default m = 7): the victim (client 0), ``colluders`` roster clients whose vectors the
    server knows (running the server's code, without the minimum), and honest clients claimed dropped.
    Returns the clients, the outcome and the victim's words under the round's own encoding."""
    job = MaskingJob(n=10)
    known = {c: job.vectors[c] for c in range(1, colluders + 1)}
    clients = {0: victim_class(job.members[0], job.vectors[0], job.terms),
               **{c: NoMinimumClient(job.members[c], v, job.terms) for c, v in known.items()},
               **{c: MaskingClient(job.members[c], job.vectors[c], job.terms) for c in withheld}}
    outcome = masking.small_round(job.roster, job.terms, clients, 0, LENGTH, known, withheld)
    encoding, _ = job.options.plan(len(clients), BOUND)  # the round's own encoding
    return clients, outcome, encoding.encode(job.vectors[0])


def split_views_round(client_class, recruit=5) -> tuple[MaskingJob, Outcome]:
    """SecAgg+ (n = 30, k = 10, t = 8) with ``recruit`` colluding neighbours of the victim."""
    job = MaskingJob(n=30, options=MaskingOptions(neighbours=10))
    job.clients = {c: masking.recruitable(client_class)(job.members[c], v, job.terms) for c, v in job.vectors.items()}
    return job, masking.split_views(job.server, job.clients, 0, recruit=recruit)


def sybil_round(victim_roster_from_server: bool):
    """The server enrols Sybils (identities it holds) with the victim's public key in a roster of its own."""
    operator = MaskingJob(n=10)
    victim_identity = operator.members[0].identity
    sybils = {c: Identity.generate(c) for c in range(1, 10)}
    fake = Roster("server-made", {0: victim_identity.public, **{c: i.public for c, i in sybils.items()}},
                  operator.roster.config)
    victim_roster = fake if victim_roster_from_server else operator.roster
    victim = MaskingClient(Member(victim_identity, victim_roster), operator.vectors[0], operator.terms)
    zeros = np.zeros(LENGTH)
    clients = {c: MaskingClient(Member(i, fake), zeros, operator.terms) for c, i in sybils.items()}
    server = MaskingServer(fake, operator.terms, list(range(10)), LENGTH, operator.encoding, operator.parameters)
    known = masking.encoded(dict.fromkeys(sybils, zeros), operator.encoding)
    return operator, masking.sybil_isolation(server, victim, clients, known)


# -- homomorphic encryption ------------------------------------------------------------------------
def key_substitution_round(job: HEJob, load) -> Outcome:
    """Finding 5 against client 1, which loads the relayed context with ``load``."""
    return he.key_substitution(job.roster, 1, load, lambda public: HEClient(job.members[1], job.vectors[1], job.terms,
                               public), job.terms, list(job.vectors), job.length)


def oracle_scenarios(job, holder):
    """(how, setup, victim's input, padding) for the three ways the server asked for one client's plaintext."""
    minted = he.minted_setup(job.roster, job.terms, job.public.fingerprint, list(job.vectors), job.length)
    earlier = job.setup()
    replayed = job.client(1).encrypt(earlier)
    holder.begin(earlier)  # the earlier round's one decryption, used honestly
    for c in job.vectors:
        holder.add(job.client(c).encrypt(earlier))
    holder.finish()
    nonce = job.server.receive_open(holder.open_round(job.terms))
    genuine = job.server.setup(job.terms, sorted(job.vectors), job.length, nonce, job.encoding, job.plan)
    return [
        ("minted setup", minted, job.client(1).encrypt(minted), [he.padding_input(job.public, minted, 2)]),
        ("replayed input", genuine, replayed, [he.padding_input(job.public, genuine, 2)]),
        ("too few clients", genuine, job.client(1).encrypt(genuine), [he.padding_input(job.public, genuine, 2)]),
    ]


def oracle_round(holder_class, index) -> tuple[Outcome, np.ndarray]:
    """Finding 6 on a job of 4 (key holder 0, victim 1), the ``index``-th of ``oracle_scenarios``."""
    job = HEJob()
    job.holder = holder_class(job.members[0])  # it opens the job's rounds too
    job.public = job.server.receive_context(job.holder.public_context)
    how, setup, victim, padding = oracle_scenarios(job, job.holder)[index]
    return he.decryption_oracle(job.holder, setup, victim, padding, how), job.encoding.encode(job.vectors[1])


def he_small_round(victim_class, holder_class, colluders, participants=None):
    """A job of 6 clients with the default m = 5 and key holder 0: a genuine round of the victim (client 1) and
    ``colluders`` roster clients whose vectors the server knows (running its code, without the minimum)."""
    job = HEJob(n=6, min_clients=default_min_clients(6))
    holder = holder_class(job.members[0])
    job.public = job.server.receive_context(holder.public_context)
    known = {c: job.vectors[c] for c in range(2, colluders + 2)}
    clients = {1: victim_class(job.members[1], job.vectors[1], job.terms, job.public),
               **{c: NoMinimumHEClient(job.members[c], v, job.terms, job.public) for c, v in known.items()}}
    outcome = he.small_round(holder, job.server, clients, 1, job.terms, job.length, known, participants)
    encoding, _ = job.options.plan(len(participants or clients), job.terms.bound)  # the round's own encoding
    return outcome, encoding.encode(job.vectors[1])
