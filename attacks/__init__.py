"""Privacy attacks on what federated clients transmit, and their evaluation against ground truth.

``ATTACKS`` maps names to registered attacks (importing the subpackages registers them); an attack
sees a ``ServerView`` only. See attacks/base.py for the case / attack / evaluator split.
"""

from attacks import gradient, inversion, membership, statistics  # noqa: F401  (registers every attack)
from attacks.base import ATTACKS, Attack, AttackOutput, NotApplicable, Reconstruction, ServerView

__all__ = ["ATTACKS", "Attack", "AttackOutput", "NotApplicable", "Reconstruction", "ServerView"]
