"""A learned decoder from backbone features to images (Dosovitskiy & Brox, CVPR 2016), trained on public images.

The attacker encodes public images (and augmented copies of them) with the job's public backbone
and fits an up-convolutional network from each unit-norm feature back to its image at the data
set's native resolution. Globally pooled CNN features keep enough of the layout for this to work;
optimisation through the backbone alone (optimise.py) finds images with the right feature that look
nothing like the original. Trained once per (backbone, public pool, settings) and kept on disk
(decoder_cache.py), so every later attack on the same job decodes at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from attacks.inversion.augment import Augmentation, augmented
from attacks.inversion.decoder_cache import DecoderCache
from attacks.inversion.knowledge import Knowledge, unit

FEATURE_GAIN = 32.0  # unit features have entries of ~1/√d: scaled up so the first layer starts in a useful range


@dataclass(frozen=True)
class DecoderSettings:
    """Everything that determines a trained decoder besides its training pairs (part of the cache key)."""

    width: int = 64  # channels at the smallest resolution; halved at every up-convolution
    epochs: int = 8
    batch: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    augmentation: Augmentation = field(default_factory=Augmentation)


class UpDecoder(nn.Module):
    """Linear map to a small feature map, then stride-2 up-convolutions to the native size."""

    def __init__(self, feature_dim: int, channels: int, size: int, width: int):
        super().__init__()
        base, stages = size, 0
        while base % 2 == 0 and base > 8:
            base, stages = base // 2, stages + 1
        self.base, self.width = base, width
        self.project = nn.Sequential(nn.Linear(feature_dim, width * base * base), nn.LeakyReLU(0.2))
        layers: list[nn.Module] = []
        current = width
        for _ in range(stages):
            following = max(current // 2, 16)
            layers += [nn.ConvTranspose2d(current, following, 4, 2, 1), nn.BatchNorm2d(following), nn.LeakyReLU(0.2)]
            current = following
        layers.append(nn.Conv2d(current, channels, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.project(unit(features) * FEATURE_GAIN).view(-1, self.width, self.base, self.base)
        return torch.sigmoid(self.body(hidden))


@dataclass
class Decoder:
    """A trained decoder and what it was trained on (stated in every report)."""

    network: UpDecoder
    settings: DecoderSettings
    pairs: int  # (feature, image) pairs it was trained on
    public: str
    from_cache: bool

    def __call__(self, features: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """(N, C, H, W) images in [0, 1] (C = 3; a grey decoder's channel repeated) for (N, d) features."""
        device = next(self.network.parameters()).device
        self.network.eval()
        with torch.inference_mode():
            images = torch.cat([self.network(features[i:i + batch].float().to(device)).cpu()
                                for i in range(0, len(features), batch)]) if len(features) else torch.zeros(0, 1, 1, 1)
        return images.expand(-1, 3, -1, -1).clone() if images.shape[1] == 1 else images

    def describe(self) -> dict:
        return {"architecture": "up-convolutional (Dosovitskiy & Brox)", "pairs": self.pairs, "public_images": self.public,
                "settings": asdict(self.settings), "from_cache": self.from_cache}


def build(feature_dim: int, knowledge: Knowledge, settings: DecoderSettings) -> UpDecoder:
    height, width = knowledge.public.size
    if height != width:
        raise ValueError(f"the decoder draws square images; the public images are {height} × {width}")
    torch.manual_seed(settings.seed)
    return UpDecoder(feature_dim, knowledge.public.channels, height, settings.width)


def trained_decoder(knowledge: Knowledge, settings: DecoderSettings = DecoderSettings()) -> Decoder:
    """The decoder for this backbone and public pool: from the cache when a sound entry exists, else trained
    (with a progress bar) and stored."""
    public = knowledge.public
    cache = DecoderCache(knowledge.cache_dir) if knowledge.cache_dir is not None else None
    key = DecoderCache.key({"encoder": knowledge.encoder.identity, "public": public.fingerprint(),
                            "settings": asdict(settings), "architecture": UpDecoder.__name__})
    if cache is not None and (entry := cache.load(key)) is not None:
        state, meta = entry
        network = build(int(meta["feature_dim"]), knowledge, settings)
        network.load_state_dict(state)
        return Decoder(network.to(knowledge.device).eval(), settings, int(meta["pairs"]), public.description, True)
    images = augmented(public.unit(), settings.augmentation, settings.seed)
    features = knowledge.encoder.to(knowledge.device).features(
        images if public.channels == 3 else images.expand(-1, 3, -1, -1), progress=knowledge.progress)
    network = build(features.shape[1], knowledge, settings).to(knowledge.device)
    fit(network, features, images, settings, knowledge.device, knowledge.progress)
    if cache is not None:
        cache.store(key, network.state_dict(), {"feature_dim": features.shape[1], "pairs": len(images)})
    return Decoder(network.eval(), settings, len(images), public.description, False)


def fit(network: UpDecoder, features: torch.Tensor, images: torch.Tensor, settings: DecoderSettings,
        device: torch.device, progress: bool) -> None:
    """Pixel MSE, AdamW with a one-cycle schedule, seeded shuffling."""
    from tqdm.auto import tqdm

    steps_per_epoch = max(len(images) // settings.batch, 1)
    optimiser = torch.optim.AdamW(network.parameters(), settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, settings.learning_rate,
                                                   total_steps=settings.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(settings.seed)
    network.train()
    with tqdm(total=settings.epochs * steps_per_epoch, desc="decoder", unit="step", disable=not progress,
              leave=False) as bar:
        for _ in range(settings.epochs):
            order = torch.randperm(len(images), generator=generator)
            for step in range(steps_per_epoch):
                batch = order[step * settings.batch:(step + 1) * settings.batch]
                loss = F.mse_loss(network(features[batch].to(device)), images[batch].to(device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                bar.update(1)
                bar.set_postfix(mse=f"{loss.item():.4f}", refresh=False)
    network.eval()
