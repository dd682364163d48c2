"""Attacks on the gradient baselines' updates: gradient inversion (DLG, iDLG, Inverting Gradients) on the
ConvNet trained end to end, and closed-form feature recovery from a head's update. Importing this package
registers them."""

from attacks.gradient import head, inversion  # noqa: F401  (registration)
