"""Secure aggregation of flat float64 vectors; knows nothing of learning and imports nothing from it."""

from __future__ import annotations

from protocols.base import AggregationProtocol, RoundResult, check_contributions
from protocols.encoding import FixedPoint
from protocols.errors import (
    AuthenticationError, EncodingError, InvalidContributionError, LedgerError, MalformedMessageError, ParameterError,
    ProtocolAbort, ProtocolError, RosterError, StatisticReusedError, ThresholdError, TooFewClientsError,
    UnknownProtocolError, UnsafeContextError,
)
from protocols.graph import GraphParameters, Targets, TargetsNotMetWarning, choose_parameters
from protocols.he import ApproximateCKKSProtocol, BFVProtocol, CKKSProtocol
from protocols.identity import Identity, Member, Roster, enrol
from protocols.ledger import ContributionLedger, Statistic
from protocols.masking import MaskingProtocol
from protocols.minimum import default_min_clients
from protocols.plaintext import PlaintextProtocol
from protocols.terms import RoundTerms, broadcast_digest
from protocols.transcript import RoundView, Transcript, TranscriptError, TranscriptWriter

PROTOCOLS: dict[str, type[AggregationProtocol]] = {
    protocol.name: protocol
    for protocol in (MaskingProtocol, BFVProtocol, CKKSProtocol, ApproximateCKKSProtocol, PlaintextProtocol)
}


def make_protocol(name: str, **options) -> AggregationProtocol:
    """A protocol by name; unknown names are refused with the list of known ones."""
    if name not in PROTOCOLS:
        raise UnknownProtocolError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name](**options)


__all__ = [
    "PROTOCOLS",
    "AggregationProtocol",
    "AuthenticationError",
    "ContributionLedger",
    "EncodingError",
    "FixedPoint",
    "GraphParameters",
    "Identity",
    "InvalidContributionError",
    "LedgerError",
    "MalformedMessageError",
    "MaskingProtocol",
    "Member",
    "ParameterError",
    "PlaintextProtocol",
    "ProtocolAbort",
    "ProtocolError",
    "Targets",
    "TargetsNotMetWarning",
    "ThresholdError",
    "TooFewClientsError",
    "choose_parameters",
    "Roster",
    "RosterError",
    "RoundResult",
    "RoundTerms",
    "RoundView",
    "Statistic",
    "StatisticReusedError",
    "Transcript",
    "TranscriptError",
    "TranscriptWriter",
    "UnknownProtocolError",
    "UnsafeContextError",
    "broadcast_digest",
    "check_contributions",
    "default_min_clients",
    "enrol",
    "make_protocol",
]
