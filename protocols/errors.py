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
    """A participant refused to go on: a message was inconsistent, replayed, tampered, unsigned or unsafe.

    After an abort a client reveals nothing more in that round (its state machine is ABORTED).
    """


class AuthenticationError(ProtocolAbort):
    """A message whose sender is not in the job's roster, or whose signature does not verify against the
    roster's identity key for that sender (a Sybil, a forgery, or a message moved from another session,
    stage or round). The receiver refuses it and names the sender."""


class UnsafeContextError(ProtocolAbort):
    """A homomorphic public context that is not the one the job configured, is not signed by the job's key
    holder, or falls short of 128-bit security or of the plaintext modulus the sums need."""


class RosterError(ProtocolError, ValueError):
    """A job roster (or identity) file that cannot be used: wrong format or version, malformed keys, a
    configuration whose hash does not match, or a client missing from it."""


class ThresholdError(ProtocolError):
    """Too few clients remain to finish the round; nothing beyond what was already sent is revealed."""


class TooFewClientsError(ProtocolAbort, ThresholdError):
    """A round, key list, survivor set or sum that holds fewer clients than the job's minimum aggregation size
    m (protocols/minimum.py) or the certificate quorum allows. A client refuses it and aborts; the server
    abandons the round."""


class ParameterError(ProtocolError, ValueError):
    """Protocol parameters (threshold, neighbours, targets, dropouts) that cannot work."""


class StatisticReusedError(ProtocolAbort):
    """A client refused to release a statistic it already released into an aggregation of the same job: a second
    sum of it over a client set that differs by one client would give that client's vector away (the difference
    attack). Raised before anything derived from the input leaves the client (protocols/ledger.py)."""


class LedgerError(ProtocolAbort):
    """A client's contribution ledger cannot be read or written: the client refuses the round rather than risk
    releasing a statistic twice (protocols/ledger.py)."""
