"""Closed-form feature recovery from a head's update (FedAvg / FedProx on frozen features).

The first layer of the linear and MLP heads is z = W x + b. For one sample, its gradients are
∂L/∂W = δ xᵀ and ∂L/∂b = δ, so every row j with δ_j ≠ 0 gives x = (∂L/∂W)_j / (∂L/∂b)_j exactly.
That survives local training on one sample: every SGD step adds a multiple of x to row j and the same
multiple to b_j, and FedProx's proximal step shrinks both deviations by the same factor, so the
client's whole update obeys (θ − θ_k)_{W_j} = (θ − θ_k)_{b_j} · x. The attack reads it off every
single-sample client (n_k = 1 is in the message), taking the row with the largest bias update; the
label is the arg-min of the last layer's bias update (the iDLG rule). With more samples a row mixes
them, so larger clients are left alone. Under DP-SGD the noise breaks the equality: the
reconstruction is not certified. What comes back is the mapped feature ``x`` the head trained on
(the backbone feature, l2-normalised, when the job has no random buffer), for feature inversion to
decode.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from attacks.base import ATTACKED, Attack, Reconstruction, ServerView, register
from attacks.gradient.inversion import GRADIENT_SERVER
from attacks.gradient.updates import client_updates, last_linear, parameter_rounds
from attacks.statistics.rounds import round_key


@register
class HeadFeatures(Attack):
    name = "head-features"
    threat_model = GRADIENT_SERVER
    metric = "cosine"
    threshold = 0.9999
    targets = "singletons"

    def reconstruct(self, view: ServerView, rounds: dict[str, str]) -> Iterator[Reconstruction]:
        for entry in parameter_rounds(view, rounds, first_only=False):
            local = entry.spec["layout"]["local"]
            if local["model"] not in ("linear", "mlp"):
                rounds[round_key(entry)] = f"the model ({local['model']}) starts with a convolution, not a linear layer"
                continue
            rounds[round_key(entry)] = ATTACKED
            for update in client_updates(entry):
                if update.samples != 1:
                    continue
                weight, bias = (update.gradient[i].double().numpy() for i in (0, 1))
                row = int(np.argmax(np.abs(bias)))
                if bias[row] == 0.0:
                    continue
                label = int(np.argmin(update.gradient[last_linear(update.model)].double().numpy()))
                yield Reconstruction("feature", entry.name, update.client, "x", weight[row] / bias[row], label,
                                     certified=not local["dp"])
