"""Statistics matching: dummy images fitted to what a small AFL client transmitted (DLG's idea on G_k, H_k).

A plaintext AFL client k sends G_k = Σ_i x_i x_iᵀ and H_k = Σ_i x_i y_iᵀ over its n_k rows, where
x_i = m(φ(image_i)) is the job's public pipeline: the frozen backbone φ, then the public feature map m
(the random buffer when the job has one, then the row-norm bound: every row rescaled to the public
norm R under ``l2``, shrunk to it under ``clip``). The class counts (attack ``counts``, exact) give the
labels y_i up to their order. So a curious server can do what DLG does with a gradient: optimise n_k
dummy images x̂_i until Σ m(φ(x̂_i)) m(φ(x̂_i))ᵀ and Σ m(φ(x̂_i)) y_iᵀ match G_k and H_k, relative
squared Frobenius error each, with the total-variation, box and BatchNorm-statistics priors of
optimise.py, Adam, on the GPU when one is lent.

For a class alone on its client the H column is that image's feature, so matching reduces to
feature inversion (the closed-form route: ``invert --source singleton``); for a class with several
images H gives only their sum and G the rest, which the closed-form route reaches through the Gram
factorisation (``invert --source gram``). Matching fits all images of a client at once instead.
Only clients with n_k ≤ ``max_samples`` (a public bound the attacker chooses: the message says n_k)
are attacked: with many rows the fit is as hard as the pixels are many.

The start matters more than the fit. Fitting pixels through the backbone raises the feature
cosine quickly but drifts toward adversarial texture that no longer looks like the private image
(measured on the digits client of tests/test_inversion.py: feature cosine 0.69 → 0.94, pixel PSNR
12.96 → 12.47 dB and the one identified image lost). So the default start is the closed-form route
itself: the client's rows recovered exactly by the Gram factorisation (attacks/statistics/gram.py;
certified rows only, the class's mean direction H[:, c] / n_c for the others) decoded by the learned
decoder, and the fit stays near it by a proximity term (``anchor`` × mean squared pixel distance to
the start) at a small learning rate: it sharpens the decoded images toward the statistics without
leaving them. Other starts: the decoder's image of each class's mean direction (``decoder``), the
class-mean public image, grey noise; images started from a shared direction get seeded jitter so
images of one class do not stay identical. The images come back unordered within a class; the
evaluator matches them to the truth (Hungarian, attacks/images.py).
Under masking or HE no client's statistics are readable, and the attack says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from attacks.base import Attack, NotApplicable, Reconstruction, ServerView, register
from attacks.inversion.decoder import Decoder, DecoderSettings, trained_decoder
from attacks.inversion.knowledge import Encoder, Knowledge, unit
from attacks.inversion.optimise import BatchNormPrior, total_variation
from attacks.statistics.closed_form import HONEST_BUT_CURIOUS, readable_clients
from attacks.statistics.gram import recover_rows, rows_are_nonnegative
from attacks.statistics.rounds import round_key
from secure_afl.features.buffer import RandomBuffer
from secure_afl.features.feature_map import FeatureMap

STARTS = ("closed-form", "decoder", "class-mean", "noise")
DECODED = ("closed-form", "decoder")  # starts drawn by the learned decoder
SMALL_CLIENTS = "small-clients"  # the evaluator's target kind: every sample of the attacked small clients
THREAT_MODEL = (HONEST_BUT_CURIOUS + "; also holds the public backbone and feature map and public images disjoint "
                "from every client's data (its decoder's training set and the class-mean start)")


@dataclass(frozen=True)
class MatchSettings:
    max_samples: int = 8  # public bound on n_k: larger clients are left alone
    clients: int | None = 16  # how many of the small clients (lowest ids first) are attacked; None: all
    steps: int = 200
    learning_rate: float = 0.01
    total_variation: float = 0.02
    batch_norm: float = 0.01
    anchor: float = 10.0  # weight of the mean squared pixel distance to the start (0: free to drift)
    start: str = "closed-form"
    jitter: float = 0.05  # standard deviation of the seeded noise added to starts drawn from a shared direction
    seed: int = 0


@dataclass(frozen=True)
class ClientTarget:
    """One attacked client's transmitted statistics and the labels its class counts give."""

    round: str
    client: int
    gram: torch.Tensor  # (d, d) float64
    cross: torch.Tensor  # (d, C) float64
    labels: np.ndarray  # one per sample, sorted
    norm: float | None  # the public row norm R (None: no norm bound, the Gram factorisation is not tried)


def public_map(config: dict) -> FeatureMap:
    """The job's public feature map from backbone features to the rows its statistics are built from (the
    runner's, rebuilt from the transcript's public configuration)."""
    buffer = None
    if config.get("buffer_width"):
        buffer = RandomBuffer(config["buffer_width"], config["buffer_activation"], config["buffer_seed"],
                              config["buffer_bias"])
    return FeatureMap(buffer, config.get("feature_norm", "l2"), float(config.get("max_norm", 1.0)))


def statistics_loss(rows: torch.Tensor, onehot: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """‖XᵀX − G‖²/‖G‖² + ‖XᵀY − H‖²/‖H‖² (Frobenius), for dummy rows X (n, d) and labels Y (n, C)."""
    rows = rows.double()
    gram_error = (rows.T @ rows - gram).square().sum() / gram.square().sum().clamp_min(1e-300)
    cross_error = (rows.T @ onehot - cross).square().sum() / cross.square().sum().clamp_min(1e-300)
    return gram_error + cross_error


@register
class MatchStatistics(Attack):
    name = "match-statistics"
    threat_model = THREAT_MODEL
    metric = "identified"  # pixel-space nearest neighbour among the training images is the target
    threshold = 1.0
    targets = SMALL_CLIENTS
    source = "statistics"  # what the image evaluator reports as the source (G_k, H_k themselves)

    def __init__(self, knowledge: Knowledge | None = None, settings: MatchSettings = MatchSettings(),
                 decoder: DecoderSettings = DecoderSettings()):
        if settings.start not in STARTS:
            raise ValueError(f"unknown matching start {settings.start!r}; choose one of {', '.join(STARTS)}")
        if settings.max_samples < 1:
            raise ValueError(f"the client size bound must be at least 1, got {settings.max_samples}")
        self.knowledge, self.settings, self.decoder_settings = knowledge, settings, decoder
        self.method = f"{settings.start}+matching"
        self.decoder: Decoder | None = None

    def reconstruct(self, view: ServerView, rounds: dict[str, str]) -> Iterator[Reconstruction]:
        """One image per sample of every attacked client: the start when decoded (``pixels/closed-form`` or
        ``pixels/decoder``) and the matched image (``pixels/matching``)."""
        if self.knowledge is None:
            raise NotApplicable("no public backbone and images were given to optimise through")
        targets = self.client_targets(view, rounds)
        if not targets:
            return
        knowledge, settings = self.knowledge, self.settings
        if settings.start in DECODED and view.config.get("buffer_width"):
            raise NotApplicable("the decoder start needs backbone directions, and H's columns live in the random "
                                "buffer's space: start from the class-mean image instead")
        shape = (knowledge.public.channels, *knowledge.public.size)
        starts = self.starts(targets, shape, rows_are_nonnegative(view.config))
        encoder = knowledge.encoder.to(knowledge.device)
        feature_map = public_map(view.config)
        if settings.start in DECODED:
            for target, images in zip(targets, starts):
                yield from _items(target, images, settings.start)
        from tqdm.auto import tqdm

        prior = BatchNormPrior(encoder.model)
        try:
            with tqdm(total=len(targets) * settings.steps, desc="match statistics", unit="step",
                      disable=not knowledge.progress, leave=False) as bar:
                for target, start in zip(targets, starts):
                    images = fit(encoder, feature_map, target, start, settings, prior, bar)
                    yield from _items(target, images, "matching")
        finally:
            prior.remove()

    def client_targets(self, view: ServerView, rounds: dict[str, str]) -> list[ClientTarget]:
        """The first readable statistics round of X's rows: its clients with 1 ≤ n_k ≤ max_samples, lowest ids
        first, up to ``clients``."""
        found: list[ClientTarget] = []
        attacked = None
        for item, client, stats, counts, _ in readable_clients(view, rounds):
            key = round_key(item.entry)
            if item.space != "x":
                rounds[key] = f"rows live in {item.space}, not the job's mapped backbone features: not matched"
                continue
            if attacked not in (None, key):
                rounds[key] = "not attacked: the first statistics round of the features is"
                continue
            attacked = key
            size = int(counts.sum())
            if not 1 <= size <= self.settings.max_samples:
                continue
            if self.settings.clients is not None and len(found) >= self.settings.clients:
                continue
            found.append(ClientTarget(item.entry.name, client, torch.from_numpy(stats.gram),
                                      torch.from_numpy(stats.cross), np.repeat(np.arange(len(counts)), counts),
                                      item.norm))
        if attacked is not None and not found:
            rounds[attacked] = f"no client holds at most {self.settings.max_samples} samples"
        return found

    def starts(self, targets: list[ClientTarget], shape: tuple[int, int, int],
               nonnegative: bool = False) -> list[torch.Tensor]:
        """Each client's starting images (n_k, C, H, W) in [0, 1]; those drawn from a shared direction jittered
        from a seeded generator. ``nonnegative``: the public configuration makes the rows nonnegative, which
        the Gram factorisation of the closed-form start needs."""
        generator = torch.Generator().manual_seed(self.settings.seed)
        public = self.knowledge.public
        if self.settings.start in DECODED:
            self.decoder = trained_decoder(self.knowledge, self.decoder_settings)
        out = []
        for target in targets:
            count = len(target.labels)
            shared = torch.ones(count, dtype=torch.bool)  # drawn from a direction other samples share
            if self.settings.start in DECODED:
                directions = target.cross.T[torch.from_numpy(target.labels)]  # the class's summed rows
                if self.settings.start == "closed-form" and nonnegative:
                    shared = _exact_rows(target, directions)
                base = self.decoder(unit(directions).float())[:, :shape[0]]
            elif self.settings.start == "class-mean":
                base = torch.stack([public.unit()[torch.from_numpy(public.labels == c)].mean(dim=0)
                                    if np.any(public.labels == c) else torch.full(shape, 0.5) for c in target.labels])
            else:
                base = torch.full((count, *shape), 0.5)
            noise = torch.randn(count, *shape, generator=generator) * self.settings.jitter
            out.append((base + noise * shared.view(-1, 1, 1, 1)).clamp(0.0, 1.0))
        return out


def _exact_rows(target: ClientTarget, directions: torch.Tensor) -> torch.Tensor:
    """Put the rows the Gram factorisation certifies in place of their class's direction in ``directions``
    (one row per sample, in the order of ``target.labels``); returns which samples still share a direction."""
    shared = torch.ones(len(target.labels), dtype=torch.bool)
    if target.norm is None:
        return shared
    counts = np.bincount(target.labels, minlength=target.cross.shape[1])
    recovery = recover_rows(target.gram.numpy(), target.cross.numpy(), counts, target.norm, nonnegative=True)
    if not recovery.applicable:
        return shared
    for row, label in zip(recovery.rows[recovery.certified], recovery.labels[recovery.certified]):
        free = np.flatnonzero((target.labels == label) & shared.numpy())
        if len(free):
            directions[free[0]] = torch.from_numpy(row).to(directions.dtype)
            shared[free[0]] = False
    return shared


def fit(encoder: Encoder, feature_map: FeatureMap, target: ClientTarget, start: torch.Tensor, settings: MatchSettings,
        prior: BatchNormPrior, bar) -> torch.Tensor:
    """Adam on one client's dummy images against ``statistics_loss`` plus the priors and the pull toward the start;
    the box by projection."""
    device = next(encoder.model.parameters()).device
    gram, cross = target.gram.to(device), target.cross.to(device)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(target.labels), cross.shape[1]).double().to(device)
    origin = start.to(device)
    images = origin.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([images], lr=settings.learning_rate)
    for _ in range(settings.steps):
        prior.take()
        rows, _ = feature_map.apply(encoder(images))
        loss = (statistics_loss(rows, onehot, gram, cross) + settings.total_variation * total_variation(images).sum()
                + settings.batch_norm * prior.take().sum() + settings.anchor * (images - origin).square().mean())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            images.clamp_(0.0, 1.0)
        bar.update(1)
    prior.take()
    return images.detach().cpu()


def _items(target: ClientTarget, images: torch.Tensor, stage: str) -> Iterator[Reconstruction]:
    colour = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    for image, label in zip(colour.numpy(), target.labels):
        yield Reconstruction("image", target.round, target.client, f"pixels/{stage}", image, int(label))
