"""The ``invert`` attack: features another attack recovered from the transcript, turned back into images.

Source features (``--source``):

- ``singleton`` (default): the exact feature of every sample alone in its class on its client
  (attacks/statistics/closed_form.py), read through the public random buffer's inversion when the
  run has one (attacks/statistics/buffer.py);
- ``gram``: every row the Gram factorisation recovered (attacks/statistics/gram.py);
- ``true``: an ORACLE, not an attack: the evaluator hands over the true features of the singleton
  targets, which measures the image stage alone (the upper bound of the end-to-end attack).

The statistics' rows are X = the backbone feature rescaled by the public row-norm bound (no buffer),
so a recovered row gives the backbone feature's direction exactly and its norm not at all; decoders
and optimisation work on directions, so nothing is lost. Rows of any other space (DeepAFL's deeper
layers, a Gram row under a buffer) are not mapped back and the rounds say so.

Method (``--method``): the learned decoder (decoder.py), optimisation through the backbone
(optimise.py), or the decoder's output refined by optimisation. The public knowledge (the backbone
and public images, knowledge.py) is handed to the attack by its caller; the attack never sees a
training image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from attacks.base import ATTACKED, Attack, NotApplicable, Reconstruction, ServerView, register
from attacks.inversion.decoder import Decoder, DecoderSettings, trained_decoder
from attacks.inversion.knowledge import Knowledge
from attacks.inversion.optimise import OptimiseSettings, optimise_images
from attacks.statistics.buffer import BufferAttack
from attacks.statistics.closed_form import HONEST_BUT_CURIOUS, SingletonAttack
from attacks.statistics.gram import GramAttack

SOURCES = {"singleton": "singletons", "gram": "samples", "true": "singletons"}  # source → what the evaluator targets
METHODS = ("decoder", "optimise", "decoder+optimise")
ORACLE = "true"
THREAT_MODEL = (HONEST_BUT_CURIOUS + "; also holds the public backbone and public images disjoint from every "
                "client's data, on which it trains its decoder")
ORACLE_MODEL = ("ORACLE, not an attack: the true backbone features of the targets are handed to the image stage, "
                "which measures feature-to-image inversion alone (an upper bound for the end-to-end attack)")


@dataclass(frozen=True)
class SourceFeature:
    """A feature to invert and where it came from (the evaluator matches images to targets by client and class)."""

    round: str
    client: int
    label: int | None
    value: np.ndarray  # backbone feature, up to its norm
    certified: bool


@register
class InvertAttack(Attack):
    name = "invert"
    threat_model = THREAT_MODEL
    metric = "identified"  # pixel-space nearest neighbour among the training images is the target
    threshold = 1.0  # rank 1 (the nearest neighbour)
    targets = "singletons"

    def __init__(self, knowledge: Knowledge | None = None, source: str = "singleton", method: str = "decoder",
                 oracle: list[SourceFeature] | None = None, decoder: DecoderSettings = DecoderSettings(),
                 optimise: OptimiseSettings = OptimiseSettings()):
        if source not in SOURCES:
            raise ValueError(f"unknown inversion source {source!r}; choose one of {', '.join(SOURCES)}")
        if method not in METHODS:
            raise ValueError(f"unknown inversion method {method!r}; choose one of {', '.join(METHODS)}")
        self.knowledge, self.source, self.method, self.oracle = knowledge, source, method, oracle
        self.decoder_settings, self.optimise_settings = decoder, optimise
        self.targets = SOURCES[source]
        if source == ORACLE:
            self.threat_model = ORACLE_MODEL
        self.decoder: Decoder | None = None  # the decoder used, once trained or loaded (its description goes in the report)

    def reconstruct(self, view: ServerView, rounds: dict[str, str]) -> Iterator[Reconstruction]:
        """One image per source feature, per method stage: space ``pixels/decoder`` or ``pixels/optimisation``."""
        if self.knowledge is None:
            raise NotApplicable("no public images and backbone were given to train a decoder on")
        features = self.source_features(view, rounds)
        if not features:
            return
        targets = torch.from_numpy(np.stack([f.value for f in features])).float()
        public = self.knowledge.public
        stages: list[tuple[str, torch.Tensor]] = []
        start = None
        if self.method in ("decoder", "decoder+optimise"):
            self.decoder = trained_decoder(self.knowledge, self.decoder_settings)
            decoded = self.decoder(targets)
            stages.append(("decoder", decoded))
            start = decoded[:, :public.channels]
        if self.method in ("optimise", "decoder+optimise"):
            encoder = self.knowledge.encoder.to(self.knowledge.device)
            images, _ = optimise_images(encoder, targets, (public.channels, *public.size), self.optimise_settings, start,
                                        self.knowledge.progress)
            stages.append(("optimisation", images.expand(-1, 3, -1, -1) if public.channels == 1 else images))
        for stage, images in stages:
            for feature, image in zip(features, images.numpy()):
                yield Reconstruction("image", feature.round, feature.client, f"pixels/{stage}", image, feature.label,
                                     feature.certified)

    def source_features(self, view: ServerView, rounds: dict[str, str]) -> list[SourceFeature]:
        if self.source == ORACLE:
            if self.oracle is None:
                raise NotApplicable("the oracle source needs the true features, which only the evaluator holds")
            rounds["oracle"] = ATTACKED
            return list(self.oracle)
        buffered = bool(view.config.get("buffer_width"))
        if self.source == "singleton":
            attack = BufferAttack() if buffered else SingletonAttack()
        elif buffered:
            raise NotApplicable("the Gram rows live in the random buffer's space; mapping them back to backbone "
                                "features is not implemented (use --source singleton, which inverts the buffer)")
        else:
            attack = GramAttack()
        found = []
        for item in attack.reconstruct(view, rounds):
            if item.space not in ("x", "backbone"):
                rounds[item.round] = f"rows live in {item.space}, not the backbone's feature space: not inverted"
                continue
            found.append(SourceFeature(item.round, item.client, item.label, item.value, item.certified))
        return found
