"""Test doubles: our clients with exactly one defence removed (or the two that only work together).

Each exists to show that an attack in attacks/protocol is real: against the double the attack
rebuilds the victim's input exactly, against the honest client it meets a typed refusal.
"""

from __future__ import annotations

from dataclasses import replace

from protocols.encoding import FixedPoint
from protocols.he import HEClient, HEKeyHolder
from protocols.he.messages import PublicContext
from protocols.he.schemes import fingerprint
from protocols.he.session import HEOptions, PublicSession
from protocols.masking import MaskingClient
from protocols.masking.client import State
from protocols.masking.messages import MASK_KEY_SHARE, SELF_MASK_SHARE
from protocols.masking.session import check_setup, check_terms
from protocols.terms import RoundTerms


def _listed(request):
    """The signers a certificate names, taken on trust."""
    return {signer for signer, _ in request.certificate}


class NoConsistencyClient(MaskingClient):
    """Reveals without checking its neighbours' key-sharer lists or the certificate (finding 1)."""

    def _check_headers(self, request, signers):
        pass

    def _check_certificate(self, request):
        return _listed(request)


class PreIssueClient(NoConsistencyClient):
    """No consistency round at all: reveals under any well-formed proposal with t survivors (the client
    before issue 12)."""

    def _check_neighbourhood(self, sets):
        pass


class NoHeaderClient(MaskingClient):
    """Checks the certificate but not which key-sharer list its neighbours masked with."""

    def _check_headers(self, request, signers):
        pass


class NoQuorumClient(MaskingClient):
    """Reveals under any proposal, whatever its own neighbourhood keeps (finding 2)."""

    def _check_certificate(self, request):
        return _listed(request)

    def _check_neighbourhood(self, sets):
        pass


class NoCertificateClient(MaskingClient):
    """Reveals under any well-formed proposal it is sent, whatever it signed and whoever else did (split views)."""

    def _check_certificate(self, request):
        return _listed(request)


class NoSetChecksClient(NoCertificateClient):
    """Takes survivor and dropped lists as they come and answers each list on its own (flwr 1.41's SecAgg+)."""

    def _check_sets(self, sets):
        pass

    def _reveal(self, sets):
        seeds = [(o, SELF_MASK_SHARE, self._held[o][0]) for o in sets.survivors if o in self._held]
        keys = [(o, MASK_KEY_SHARE, self._held[o][1]) for o in sets.dropped if o in self._held]
        return seeds + keys


class ReplayableClient(NoCertificateClient):
    """Answers every unmask request and keeps its shares between them."""

    def unmask(self, request_bytes):
        if self.state is State.DONE:
            self.state, self._held = State.SIGNED, dict(self._kept)
        else:
            self._kept = dict(self._held)
        return super().unmask(request_bytes)


class IgnoresBroadcastClient(MaskingClient):
    """Does not compare the setup's broadcast with the model it received (finding 3)."""

    def _check_terms(self, setup):
        return check_terms(setup, self._roster, replace(self._terms, broadcast=setup.broadcast))


class ServerBoundClient(MaskingClient):
    """Takes the bound and fraction bits from the server's setup (finding 4)."""

    def _check_terms(self, setup):
        check_setup(setup)
        return FixedPoint(setup.fraction_bits, setup.bound, len(setup.participants))


class NoAdvertCheckClient(MaskingClient):
    """Uses its neighbours' keys without checking their signatures (key-list split)."""

    def _verify_adverts(self, session):
        pass


class NoMinimumClient(MaskingClient):
    """Takes part in a round of any size the server sets up, and signs and reveals under any number of survivors
    (the job's minimum m, protocols/minimum.py, ignored: the floor of 2 clients of ``check_setup`` is all that is
    left). Colluders run it too: they are the server's."""

    min_clients = 1


def unverified_context(context_bytes: bytes, roster) -> PublicSession:
    """What a client that trusts the fingerprint of whatever context the server relays holds (finding 5)."""
    message = PublicContext.from_bytes(context_bytes)
    scheme = HEOptions.from_roster(roster).make_scheme()
    return PublicSession(scheme, scheme.load_context(message.context), fingerprint(message.context))


class ServerSumKeyHolder(HEKeyHolder):
    """Decrypts whatever the server hands it: setups it never opened, ciphertexts of any session, unsigned,
    repeated (finding 6: the pre-issue-12 key holder, which trusted the server's sum and client count)."""

    def _claim_nonce(self, setup):
        return RoundTerms(setup.round_id, setup.bound, setup.broadcast)

    def _verify_input(self, message, setup, session):
        pass


class NoMinimumHEClient(HEClient):
    """Encrypts for a round of any size the server sets up (no job minimum m)."""

    min_clients = 1


class NoMinimumKeyHolder(HEKeyHolder):
    """Decrypts a sum of any number of verified clients (no job minimum m)."""

    min_clients = 1
