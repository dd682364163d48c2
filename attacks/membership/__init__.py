"""Membership inference on what the server saw: scores for candidate records, not reconstructions.

Importing this package registers the ``membership`` attack (attack.py); its tests on statistics are
in statistics.py, LiRA on the released model in model.py, its evaluator in evaluation.py and the ROC
figures in roc.py and plot.py.
"""

from attacks.membership import attack  # noqa: F401  (registration)
