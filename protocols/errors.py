"""Errors of the aggregation protocols; raised before anything is sent whenever the input is at fault."""


class ProtocolError(Exception):
    """Base class of every error the protocols raise on purpose."""


class InvalidContributionError(ProtocolError, ValueError):
    """A client's vector is malformed, non-finite or outside the round's declared public bound."""


class UnknownProtocolError(ProtocolError, ValueError):
    """No protocol of that name exists."""


class EncodingError(ProtocolError, ValueError):
    """A fixed-point encoding cannot represent the round: the overflow budget does not hold."""


class MalformedMessageError(ProtocolError, ValueError):
    """A wire message is truncated, has trailing bytes, a wrong magic/version, or impossible fields."""


class ProtocolAbort(ProtocolError):
    """A client refused to go on: the server's message was inconsistent, replayed, tampered or unsafe.

    After an abort the client reveals nothing more in that round.
    """


class ThresholdError(ProtocolError):
    """Too few clients remain to finish the round; nothing beyond what was already sent is revealed."""


class ParameterError(ProtocolError, ValueError):
    """Protocol parameters (threshold, neighbours, targets, dropouts) that cannot work."""
