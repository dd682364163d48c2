"""The registered gradient-inversion attacks on the ConvNet's updates: DLG, iDLG and Inverting Gradients.

Each attacks the first readable round of a ``fedsgd-cnn`` / ``fedavg-cnn`` run (ConvNet or LeNet) (the one started
from the public initialisation), every client of it up to ``clients``, and returns one image per
sample the client trained on (n_k is in the message: the batch size is public). The images are
unordered, as the attack has no way to know the order; the evaluator matches them to the truth
(Hungarian) before scoring. Rounds of a head on backbone features are skipped: their updates give
features away in closed form (attacks/gradient/head.py), not pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import ClassVar

from attacks.base import ATTACKED, Attack, Reconstruction, ServerView, register
from attacks.gradient.matching import Recipe, invert
from attacks.gradient.updates import client_updates, parameter_rounds
from attacks.statistics.rounds import round_key
from secure_afl.algorithms.convnet import CNNS

GRADIENT_SERVER = ("honest-but-curious server of a gradient baseline: follows the protocol and reads every message it "
                   "receives in one normal run ([n_k θ_k, n_k]: the update and the batch size n_k); knows the "
                   "architecture, the parameters it broadcast, every client's local learning rate, epochs and batch "
                   "size and the public normalisation constants (the job's public configuration); does not modify "
                   "the model; no colluding client")


class GradientInversion(Attack):
    """Shared driver; a subclass names its recipe. ``steps`` overrides the recipe's, ``clients`` is the scope in
    the round (a count, lowest ids first, or a tuple of ids; None: all), ``seed`` draws the starting noise."""

    metric = "psnr"
    threshold = 20.0  # dB: a reconstruction counted as recovered (no universal threshold: the distribution is reported)
    targets = "batches"
    threat_model = GRADIENT_SERVER
    recipe: ClassVar[Recipe]

    def __init__(self, steps: int | None = None, clients: int | tuple[int, ...] | None = 4, seed: int = 0):
        self.steps = steps if steps is not None else self.recipe.steps
        self.clients = clients
        self.seed = seed

    def reconstruct(self, view: ServerView, rounds: dict[str, str]) -> Iterator[Reconstruction]:
        dataset = view.config["dataset"]
        recipe = replace(self.recipe, steps=self.steps)
        for entry in parameter_rounds(view, rounds):
            if entry.spec["layout"]["local"]["model"] not in CNNS:
                rounds[round_key(entry)] = ("the model is a head on backbone features, not a network on pixels: its "
                                            "update gives features in closed form (attack head-features)")
                continue
            rounds[round_key(entry)] = ATTACKED
            for update in client_updates(entry, self.clients):
                images, labels = invert(update, recipe, dataset, self.seed + update.client)
                for image, label in zip(images, labels):
                    yield Reconstruction("image", entry.name, update.client, "pixels",
                                         image.flatten().double().numpy(), int(label))


@register
class DLG(GradientInversion):
    name = "dlg"
    recipe = Recipe("l2", "lbfgs", joint_labels=True, steps=300, lr=1.0)


@register
class IDLG(GradientInversion):
    name = "idlg"
    recipe = Recipe("l2", "lbfgs", joint_labels=False, steps=300, lr=1.0)


@register
class InvertingGradients(GradientInversion):
    name = "inverting-gradients"
    recipe = Recipe("cosine", "adam", joint_labels=False, steps=1000, lr=0.1, tv=0.01, boxed=True, signed=True)
