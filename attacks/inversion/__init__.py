"""Feature inversion: backbone features another attack recovered from the transcript, back to images.

Importing this package registers the ``invert`` attack (attack.py) and ``match-statistics``
(statistics_matching.py: dummy images fitted to a small client's G_k, H_k). The public knowledge it needs
(backbone, public images) is in knowledge.py, the learned decoder in decoder.py (cached by
decoder_cache.py, trained on augment.py's copies), optimisation through the backbone in optimise.py
and the image evaluator in evaluation.py (imported by the suite only: it holds ground truth).
"""

from attacks.inversion import attack, statistics_matching  # noqa: F401  (registration)
