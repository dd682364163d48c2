"""Typed errors: each says what was wrong and what to do, and is raised before anything is sent or written.

The CLI turns any ``SecureAFLError`` (and the protocols' ``ProtocolError``) into one line on
stderr and a non-zero exit, so messages are written for the person at the terminal.
"""


class SecureAFLError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(SecureAFLError, ValueError):
    """An option has a value outside what it accepts."""


class DataError(SecureAFLError):
    """A dataset is unknown, missing or malformed."""


class BackboneError(SecureAFLError):
    """A backbone name is unknown or its weights cannot be used."""


class WeightsNotFoundError(BackboneError):
    """No local pretrained weights exist and random weights were not asked for."""


class FeatureError(SecureAFLError, ValueError):
    """Features or labels are not fit to compute statistics from (NaN/Inf, wrong shape)."""


class EmptyClientError(FeatureError):
    """A client holds no samples, so it has no statistics to contribute."""


class ModelFileError(SecureAFLError):
    """A saved model file is missing, damaged, of another format or of a version this package cannot read."""


class SingularSystemError(SecureAFLError, ArithmeticError):
    """A normal-equation matrix is not (numerically) positive definite."""


class TrainingWarning(UserWarning):
    """A finished run whose result is dominated by a setting: parameter clamps, DP noise, or accuracy at chance."""
