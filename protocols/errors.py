"""Errors of the aggregation protocols; raised before anything is sent whenever the input is at fault."""


class ProtocolError(Exception):
    """Base class of every error the protocols raise on purpose."""


class InvalidContributionError(ProtocolError, ValueError):
    """A client's vector is malformed, non-finite or outside the round's declared public bound."""


class UnknownProtocolError(ProtocolError, ValueError):
    """No protocol of that name exists."""
