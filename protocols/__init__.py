"""Secure aggregation of flat float64 vectors; knows nothing of learning and imports nothing from it."""

from __future__ import annotations

from protocols.base import AggregationProtocol, RoundResult, check_contributions
from protocols.errors import InvalidContributionError, ProtocolError, UnknownProtocolError
from protocols.plaintext import PlaintextProtocol
from protocols.transcript import RoundView, Transcript

PROTOCOLS: dict[str, type[AggregationProtocol]] = {PlaintextProtocol.name: PlaintextProtocol}


def make_protocol(name: str, **options) -> AggregationProtocol:
    """A protocol by name; unknown names are refused with the list of known ones."""
    if name not in PROTOCOLS:
        raise UnknownProtocolError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name](**options)


__all__ = [
    "PROTOCOLS",
    "AggregationProtocol",
    "InvalidContributionError",
    "PlaintextProtocol",
    "ProtocolError",
    "RoundResult",
    "RoundView",
    "Transcript",
    "UnknownProtocolError",
    "check_contributions",
    "make_protocol",
]
