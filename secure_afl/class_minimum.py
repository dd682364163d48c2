"""The minimum-count rule: a client withholds every class it holds fewer than m samples of.

The closed-form attacks read a class's mean straight out of a client's statistics (H's column over
its count) and a lone sample exactly (a class of one sample is that sample). Both are sharpest for
the rare classes a skewed partition leaves at a client. A client that never uses the rows of a
class it holds fewer than m samples of sends statistics in which every class mean averages at least
m samples, and no sample stands alone in its class. m is public (it is in the job's configuration),
so the server knows the rule, but not which rows it removed.

The rows are dropped, not folded into an "other" class: a merged class would still be the mean of
few samples whenever a client holds one rare class, and the model would learn a class no test
sample has. A client left with no rows takes no part in the job (it has nothing to send); the
secure protocols' minimum aggregation size still applies to the clients that remain.
"""

from __future__ import annotations

import numpy as np

from secure_afl.errors import ConfigError


def withhold_rare_classes(client_indices: list[np.ndarray], labels: np.ndarray, minimum: int) -> list[np.ndarray]:
    """Each client's rows that it uses: those of the classes it holds at least ``minimum`` samples of."""
    if minimum < 1:
        raise ConfigError(f"the minimum samples per class must be at least 1 (1: send every class), got {minimum}")
    labels = np.asarray(labels)
    kept = []
    for indices in client_indices:
        classes, counts = np.unique(labels[indices], return_counts=True)
        kept.append(indices[np.isin(labels[indices], classes[counts >= minimum])])
    return kept


def withheld_summary(held: list[np.ndarray], sent: list[np.ndarray]) -> dict:
    """What the rule removed, for the results document."""
    withheld = [len(h) - len(s) for h, s in zip(held, sent)]
    return {"rows_withheld": int(sum(withheld)), "clients_withholding": int(sum(w > 0 for w in withheld)),
            "clients_with_nothing_to_send": int(sum(len(s) == 0 for s in sent))}
