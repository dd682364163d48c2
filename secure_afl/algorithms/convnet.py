"""A small CNN trained end to end on raw images: the gradient-FL baseline gradient inversion is measured on.

The FedAvg / FedProx heads (algorithms/fedavg.py) train on frozen backbone features, whose updates
reveal features almost directly; the field's gradient-inversion results (DLG, iDLG, Inverting
Gradients) are about a CNN trained end to end on pixels. This module holds that model and its input:

- **ConvNet**: the 8-convolution "ConvNet" of Geiping et al. / breaching for 32 px images (widths
  w, 2w, 2w, 4w, 4w, 4w, 3×3 max-pool, 4w, 4w, 3×3 max-pool, linear), with the width a parameter
  (breaching uses 64; a CPU-sane default is far smaller). Without BatchNorm: its running statistics
  are buffers that a weighted average of parameter vectors would not carry, so the global model
  would evaluate with untrained statistics. Its input is a flat row of normalised pixels, so it
  slots into the same client and server code (and the same protocol rounds) as the heads.
- **LeNet**: the network of the DLG paper (Zhu et al. 2019: three 5×5 convolutions of 12 channels,
  strides 2, 2, 1, sigmoid activations, one linear layer, weights U(±0.5)). Smooth and shallow, it is
  the model DLG was shown on; on the ReLU ConvNet L-BFGS gradient matching stalls (measured in
  benchmarks/gradient_inversion.py), so both are offered.
- **pixel rows**: every image resized to 32 px (bilinear, antialiased), as 3 channels, in [0, 1],
  normalised with public per-dataset constants, flattened. An attacker inverts in this space and
  maps back to [0, 1] with ``to_unit``: the constants are public knowledge.

Both train through FedAvg's client and server (algorithms/fedavg.py, where this module registers them
in ``MODELS``) as two algorithms: ``fedsgd-cnn`` (one full-batch step per round) and ``fedavg-cnn``
(local epochs of minibatches), with ``inputs="pixels"`` so the runner feeds them pixel rows. A third
choice, ``--cnn acnn``, is FedACnnL's own network (registered by algorithms/fedacnnl.py, which defines it,
with its architecture from the --acnn-* options): the gradient-FL baseline on the same CNN.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from secure_afl.algorithms import fedavg

CNNS = ("convnet", "lenet", "acnn")  # the models --cnn chooses (acnn: FedACnnL's network, algorithms/fedacnnl.py)
IMAGE_SIZE = 32
CONVNET_LR = 0.01  # default local learning rate of fedsgd-cnn / fedavg-cnn (best of 0.01, 0.05, 0.2 on mnist5k)
READ_CHUNK = 512  # images decoded at a time
CHANNELS = 3
PIXELS = CHANNELS * IMAGE_SIZE * IMAGE_SIZE
_MNIST = ((0.1307,) * 3, (0.3081,) * 3)
_CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# public normalisation constants (the published training-set statistics of each family); others use ImageNet's
NORMALISATION = {"mnist5k": _MNIST, "digits": _MNIST, "samples-mnist": _MNIST, "samples-fashion-mnist": _MNIST,
                 "cifar10": _CIFAR10, "samples-cifar10": _CIFAR10, "cifar100": _CIFAR100, "samples-cifar100": _CIFAR100}


def normalisation(dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the dataset's public normalisation, each shaped (1, 3, 1, 1)."""
    mean, std = NORMALISATION.get(dataset, _IMAGENET)
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


def pixel_rows(images: torch.Tensor, dataset: str) -> torch.Tensor:
    """uint8 (N, 3, H, W) images → float32 (N, PIXELS) rows: 32 px, [0, 1], normalised, flattened."""
    unit = images.float() / 255.0
    if unit.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        unit = F.interpolate(unit, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True,
                             align_corners=False).clamp(0.0, 1.0)
    mean, std = normalisation(dataset)
    return ((unit - mean) / std).flatten(1)


def pixel_dataset(dataset, split) -> torch.Tensor:
    """Pixel rows (float32, N × PIXELS) of one split of a ``secure_afl.data.datasets.Dataset``, in split order."""
    pool = dataset.pools[split.pool]
    chunks = [pixel_rows(pool.read(split.indices[start : start + READ_CHUNK], IMAGE_SIZE), dataset.name)
              for start in range(0, len(split.indices), READ_CHUNK)]
    return torch.cat(chunks) if chunks else torch.zeros(0, PIXELS)


def to_unit(rows, dataset: str) -> torch.Tensor:
    """Pixel rows (or (N, 3, 32, 32) normalised images) back to [0, 1] images (N, 3, 32, 32), float32."""
    mean, std = normalisation(dataset)
    images = torch.as_tensor(np.asarray(rows) if not torch.is_tensor(rows) else rows).float()
    return (images.reshape(-1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE) * std + mean).clamp(0.0, 1.0)


def box(dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised images of [0, 1] pixels: per-channel (low, high), each (1, 3, 1, 1)."""
    mean, std = normalisation(dataset)
    return -mean / std, (1.0 - mean) / std


class ConvNet(nn.Module):
    """breaching's ConvNet without BatchNorm; takes flat pixel rows (N, PIXELS) or images (N, 3, 32, 32)."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        widths = [CHANNELS, width, 2 * width, 2 * width, 4 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(6):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 3, padding=1), nn.ReLU()]
        layers.append(nn.MaxPool2d(3))
        for _ in range(2):
            layers += [nn.Conv2d(4 * width, 4 * width, 3, padding=1), nn.ReLU()]
        layers += [nn.MaxPool2d(3), nn.Flatten(), nn.Linear(36 * width, num_classes)]
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x.reshape(-1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE))


class LeNet(nn.Module):
    """DLG's LeNet for 32 px images; takes flat pixel rows or images."""

    def __init__(self, num_classes: int, channels: int = 12):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(CHANNELS, channels, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(channels, channels, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(channels, channels, 5, padding=2, stride=1), nn.Sigmoid(),
            nn.Flatten(), nn.Linear(channels * (IMAGE_SIZE // 4) ** 2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x.reshape(-1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE))


def build_lenet(num_classes: int, seed: int) -> LeNet:
    """DLG's LeNet with DLG's initialisation, every parameter U(±0.5), from the public seed."""
    model = LeNet(num_classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.uniform_(-0.5, 0.5, generator=generator)
    return model


def he_uniform_(weight: torch.Tensor, bias: torch.Tensor, fan_in: int, generator: torch.Generator) -> None:
    """He-uniform weights U(±√(6/fan_in)) (PyTorch's default shrinks the signal through stacked ReLU layers until
    nothing trains) and PyTorch's default biases U(±1/√fan_in), in place, from ``generator``."""
    with torch.no_grad():
        nn.init.uniform_(weight, -math.sqrt(6.0 / fan_in), math.sqrt(6.0 / fan_in), generator=generator)
        nn.init.uniform_(bias, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in), generator=generator)


def build_convnet(num_classes: int, width: int, seed: int) -> ConvNet:
    """A ConvNet initialised identically everywhere from the public seed (``he_uniform_``), from a private
    generator rather than the global one."""
    model = ConvNet(num_classes, width)
    generator = torch.Generator().manual_seed(seed)
    for layer in model.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            he_uniform_(layer.weight, layer.bias, layer.weight[0].numel(), generator)
    return model


def configure(config, full_batch: bool) -> fedavg.FedAvgConfig:
    """FedAvg's job with the chosen CNN in place of the head (and its own options, if it registered any);
    without --lr, the CNN's default rate."""
    options = fedavg.MODEL_OPTIONS.get(config.cnn)
    return replace(fedavg.configure(config), head=config.cnn, width=config.cnn_width, full_batch=full_batch,
                   lr=config.lr, architecture=options(config) if options else {})


fedavg.MODELS.update(convnet=lambda job, classes: build_convnet(classes, job.width, job.seed),
                     lenet=lambda job, classes: build_lenet(classes, job.seed))
fedavg.DEFAULT_LR.update(convnet=CONVNET_LR, lenet=CONVNET_LR)
CNN_OPTIONS = ("rounds", "lr", "client_fraction", "param_bound", "cnn", "cnn_width", "acnn_layers", "acnn_channels",
               "acnn_slope")
# no model type: a saved model predicts from backbone features (secure_afl/model.py), which these do not take
FEDSGD_CNN = replace(fedavg.FEDAVG, name="fedsgd-cnn", configure=lambda config: configure(config, full_batch=True),
                     options=CNN_OPTIONS, inputs="pixels", model_type=None)
FEDAVG_CNN = replace(FEDSGD_CNN, name="fedavg-cnn", configure=lambda config: configure(config, full_batch=False),
                     options=(*CNN_OPTIONS, "local_epochs", "local_batch"))
