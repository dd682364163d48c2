"""FedACnnL: a small CNN trained layer by layer, each layer a distributed ridge problem (spec §6).

This is this toolkit's closed-form reading of "Analytic Personalized Federated Meta-Learning"
(papers/001_*.txt): the paper's method section is not available, and its authors call the per-layer
least-squares problem a *surrogate* of the network's objective; what follows is the formulation of
issue 17, with every assumption a public parameter (``FedACnnLConfig``).

- The network: L convolutions 3×3 (padding 1) of c channels on normalised 32 px pixel rows, each
  followed by a leaky ReLU of slope s (invertible) and 2×2 mean pooling, then a linear head on the
  flattened last maps. A convolution is a linear map on patch rows (algorithms/patches.py): one row per
  image and output position, 9c_in values and a bias column.
- Targets: layer l has a public label-encoding matrix E_l (C × c, Gaussian or scaled orthogonal, from a
  public seed); every output position of an image of class y has the target pre-activation
  t_l(y) = f⁻¹(clip(E_lᵀ e_y)). Stacked over classes these form the public target table T_l (C × c).
- Layer l is ridge regression of those targets on the patch rows A: W_l = (Σ_k G_l^k + γ_l I)⁻¹ Σ_k H_l^k,
  G = AᵀA, H = AᵀT. Since every row's target is its class's row of T_l, H = (AᵀY) T_l with Y the rows'
  one-hot labels: a client sends G and H° = AᵀY (d × C, the statistics AFL sends, with patch rows) and the
  server forms Σ H = (Σ H°) T_l. The sums are the same; when c ≥ C (T_l of full row rank, the default) H°
  and H carry the same information, and H° is the smaller message.
- Rounds, bottom up: round l broadcasts W_1 … W_{l−1}; each client runs its images through them and sends
  its packed (G, H°, rows, rows per class) for layer l; a last round is AFL on the head's rows (flattened
  maps and a bias column, one-hot targets). L + 1 rounds, each a ``RoundSpec`` through the run's protocol,
  with a public bound on every entry (from the data set's public pixel range, the broadcast weights and
  the largest client size) and a layout naming the Gram and cross-term slices, so masking, HE, transcripts
  and the closed-form attacks apply to every layer unchanged.
- Clients accumulate their statistics over mini-batches of ``batch`` images; each image is processed on its
  own, so the batch size changes only the order of float64 sums. With shared seeds every W_l equals the
  one trained centrally on the pooled data, whatever the partition.
- The same network as a torch module (``ACnnNetwork``, registered as ``fedavg-cnn --cnn acnn``): the gradient-FL
  baseline the paper's "less training time than gradient FL" is measured against must train THIS network end to
  end. Its parameters are the matrices above and its forward is patches.scores, the one FedACnnLModel predicts by.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from secure_afl.algorithms import fedavg, patches
from secure_afl.algorithms.afl import AFLConfig, ridge_solve, statistics_bound
from secure_afl.algorithms.base import Algorithm, AlgorithmClient, AlgorithmServer, RoundSpec
from secure_afl.algorithms.convnet import CHANNELS, IMAGE_SIZE, box, he_uniform_
from secure_afl.errors import ConfigError, FeatureError
from secure_afl.linalg import solve_spd
from secure_afl.statistics import Statistics, StatisticsLayout, validate_features

ENCODINGS = ("orthogonal", "gaussian")
PREDICT_CHUNK = 256  # images run through the network at a time when predicting


@dataclass(frozen=True)
class FedACnnLConfig:
    layers: int = 2  # L convolutions (32 px halves at each: at most 4)
    channels: int = 16  # c, the channels of every convolution
    slope: float = 0.1  # the leaky ReLU's negative slope s, in (0, 1]
    clip: float = 1.0  # E_lᵀe_y is clipped to ±clip before f⁻¹
    encoding: str = "orthogonal"  # E_l: scaled orthogonal or Gaussian
    seed: int = 0  # public seed of the E_l
    layer_gamma: float = 1.0  # γ_l of the convolutions' ridge solves
    head: AFLConfig = AFLConfig()  # the head's solve (γ): AFL's
    batch: int = 64  # images per mini-batch a client accumulates over
    pixel_bound: float = 1.0  # public: |normalised pixel| ≤ this (from the data set's normalisation constants)

    def __post_init__(self) -> None:
        if not 1 <= self.layers <= 4:
            raise ConfigError(f"--acnn-layers must be 1 to 4 (32 px halve at every layer), got {self.layers}")
        if self.channels < 1 or self.batch < 1:
            raise ConfigError(f"--acnn-channels and --acnn-batch must be at least 1, got {self.channels}, {self.batch}")
        if not 0 < self.slope <= 1:
            raise ConfigError(f"--acnn-slope must lie in (0, 1] (the leaky ReLU must be invertible), got {self.slope}")
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"--acnn-clip must be a positive finite number, got {self.clip}")
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"unknown --acnn-encoding {self.encoding!r}; choose one of {', '.join(ENCODINGS)}")
        if not (np.isfinite(self.layer_gamma) and self.layer_gamma > 0):
            raise ConfigError(f"--acnn-gamma must be a positive finite number, got {self.layer_gamma}")

    def in_channels(self, layer: int) -> int:
        """Channels of layer ``layer``'s input (layer 1 reads the image)."""
        return CHANNELS if layer == 1 else self.channels

    def size(self, layer: int) -> int:
        """Side of layer ``layer``'s input maps (its output positions per image are size²)."""
        return IMAGE_SIZE >> (layer - 1)

    @property
    def head_dim(self) -> int:
        return self.channels * self.size(self.layers + 1) ** 2 + 1

    @property
    def architecture(self) -> dict:
        """The options that fix the network (the rest fix how FedACnnL trains it): ``ACnnNetwork``'s."""
        return {"layers": self.layers, "channels": self.channels, "slope": self.slope}


def encoding_matrix(config: FedACnnLConfig, layer: int, num_classes: int) -> np.ndarray:
    """E_l (C × c) from the public seed: standard Gaussian, or orthonormal rows (columns when c < C) scaled so
    that the mean squared entry is 1."""
    rng = np.random.default_rng([config.seed, layer])
    gaussian = rng.standard_normal((num_classes, config.channels))
    if config.encoding == "gaussian":
        return gaussian
    tall = gaussian.T if config.channels >= num_classes else gaussian
    q, r = np.linalg.qr(tall)
    q = q * np.sign(np.diag(r))  # a unique orthonormal basis for the seed
    basis = q.T if config.channels >= num_classes else q
    return basis * np.sqrt(max(num_classes, config.channels))


def target_table(config: FedACnnLConfig, layer: int, num_classes: int) -> np.ndarray:
    """T_l (C × c): row y is the target pre-activation f⁻¹(clip(E_lᵀ e_y)) of every position of a class-y image."""
    encoded = np.clip(encoding_matrix(config, layer, num_classes), -config.clip, config.clip)
    return patches.leaky_relu_inverse(encoded, config.slope)


def layer_round(layer: int) -> str:
    return f"fedacnnl/layer-{layer}"


HEAD_ROUND = "fedacnnl/head"


@dataclass(frozen=True)
class FedACnnLModel:
    """The trained network: W_1 … W_L and the head; predicts from normalised 32 px pixel rows."""

    slope: float
    layers: list[np.ndarray]  # W_l, (9c_in + 1) × c
    head: np.ndarray  # (c·s² + 1) × C

    @property
    def weights(self) -> np.ndarray:
        """The head, the last thing broadcast (the convolutions went out with the rounds)."""
        return self.head

    def head_inputs(self, pixels) -> torch.Tensor:
        """The head's rows (no bias column) of pixel rows (float64), computed PREDICT_CHUNK images at a time."""
        x = torch.as_tensor(np.asarray(pixels) if not torch.is_tensor(pixels) else pixels)
        chunks = [patches.head_rows(patches.forward(x[i : i + PREDICT_CHUNK], self.layers, self.slope))
                  for i in range(0, len(x), PREDICT_CHUNK)]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.head.shape[0] - 1, dtype=torch.float64)

    def scores(self, pixels) -> np.ndarray:
        return patches.affine(self.head_inputs(pixels), self.head).numpy()

    def predict(self, pixels) -> np.ndarray:
        return np.argmax(self.scores(pixels), axis=1)

    def accuracy(self, pixels, labels: np.ndarray) -> float:
        if len(labels) == 0:
            return float("nan")
        return float(np.mean(self.predict(pixels) == np.asarray(labels)))

    def relative_difference(self, other: FedACnnLModel) -> float:
        """The largest relative difference of any layer or the head."""
        pairs = list(zip(self.layers, other.layers)) + [(self.head, other.head)]
        return max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in pairs)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        arrays = {f"layer_{l}": w for l, w in enumerate(self.layers, start=1)}
        return {"slope": self.slope, "layers": len(self.layers)}, {**arrays, "head": self.head}

    @classmethod
    def from_state(cls, meta: dict, arrays) -> FedACnnLModel:
        layers = [np.asarray(arrays[f"layer_{l}"], dtype=np.float64) for l in range(1, int(meta["layers"]) + 1)]
        return cls(float(meta["slope"]), layers, np.asarray(arrays["head"], dtype=np.float64))


class ACnnNetwork(nn.Module):
    """FedACnnL's network as a torch module, for FedAvg to train end to end: parameters W_1 … W_L and the head in
    the layouts FedACnnL solves for (so ``load`` takes a FedACnnL model as it is), forward ``patches.scores`` in the
    parameters' dtype. Takes flat pixel rows (N, PIXELS) or images (N, 3, 32, 32)."""

    def __init__(self, config: FedACnnLConfig, num_classes: int):
        super().__init__()
        self.slope = config.slope
        self.layers = nn.ParameterList(
            nn.Parameter(torch.empty(patches.patch_dim(config.in_channels(l)), config.channels))
            for l in range(1, config.layers + 1))
        self.head = nn.Parameter(torch.empty(config.head_dim, num_classes))

    def matrices(self) -> list[nn.Parameter]:
        """W_1 … W_L, then the head (``parameters()`` lists the head first)."""
        return [*self.layers, self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patches.scores(x, list(self.layers), self.head, self.slope, self.head.dtype)

    def load(self, model: FedACnnLModel) -> ACnnNetwork:
        """Take a FedACnnL model's weights (in this module's dtype)."""
        with torch.no_grad():
            for parameter, weights in zip(self.matrices(), [*model.layers, model.head]):
                parameter.copy_(torch.as_tensor(weights))
        return self


def build_network(architecture: dict, num_classes: int, seed: int) -> ACnnNetwork:
    """The network of ``architecture`` (``FedACnnLConfig.architecture``) initialised identically everywhere from the
    public seed: every matrix's weight rows He-uniform and its bias row PyTorch's default (convnet.he_uniform_)."""
    network = ACnnNetwork(FedACnnLConfig(**architecture), num_classes)
    generator = torch.Generator().manual_seed(seed)
    for matrix in network.matrices():
        he_uniform_(matrix[:-1], matrix[-1], matrix.shape[0] - 1, generator)
    return network


class FedACnnLClient(AlgorithmClient):
    """Holds its pixel rows; answers each layer's round with its packed statistics of that layer."""

    def __init__(self, pixels: torch.Tensor | np.ndarray, labels: np.ndarray, num_classes: int,
                 config: FedACnnLConfig):
        validate_features(pixels, labels, num_classes)
        if len(labels) and float(torch.as_tensor(pixels).abs().max()) > config.pixel_bound:
            raise FeatureError(f"pixel values beyond the public bound ±{config.pixel_bound:.4g} would break every "
                               "round's declared bound; give normalised 32 px pixel rows (convnet.pixel_rows)")
        self.pixels = torch.as_tensor(pixels)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = num_classes
        self.config = config

    def statistics(self, layer: int, weights: list[np.ndarray], rows: list[int] | None = None) -> np.ndarray:
        """The packed statistics of layer ``layer`` (``config.layers`` + 1: the head) over this client's images
        (or the ``rows`` among them), through the broadcast ``weights`` W_1 … W_{layer−1}, accumulated over
        mini-batches of ``config.batch`` images."""
        pixels, labels = (self.pixels, self.labels) if rows is None else (self.pixels[rows], self.labels[rows])
        head = layer > self.config.layers
        layout = round_layout(self.config, layer, self.num_classes)
        sums = patches.RowSums(layout.dim - 1, self.num_classes)
        for start in range(0, len(labels), self.config.batch):
            maps = patches.forward(pixels[start : start + self.config.batch], weights, self.config.slope)
            x = patches.head_rows(maps)[:, None, :] if head else patches.windows(maps)
            sums.add(x, labels[start : start + self.config.batch])
        return layout.pack(Statistics(sums.gram, sums.cross, sums.count, sums.class_counts))

    def contribute(self, spec: RoundSpec) -> np.ndarray:
        layer = int(spec.layout.get("layer", 0))
        weights = [np.asarray(spec.broadcast.get(f"w{l}", np.empty(0))) for l in range(1, layer)]
        expected = round_layout(self.config, layer, self.num_classes) if 1 <= layer <= self.config.layers + 1 else None
        if expected is None or spec.length != expected.length or len(weights) != layer - 1:
            raise ConfigError(f"a FedACnnL client cannot answer round {spec.name!r} of length {spec.length}")
        return self.statistics(layer, weights)


def round_layout(config: FedACnnLConfig, layer: int, num_classes: int) -> StatisticsLayout:
    """The packed vector of layer ``layer`` (``config.layers`` + 1: the head)."""
    dim = config.head_dim if layer > config.layers else patches.patch_dim(config.in_channels(layer))
    return StatisticsLayout(dim, num_classes)


class FedACnnLServer(AlgorithmServer):
    """Asks for one layer at a time, bottom up, and solves each layer's ridge problem from the sums."""

    def __init__(self, config: FedACnnLConfig, num_classes: int, max_samples: int):
        self.config = config
        self.num_classes = num_classes
        self.max_samples = max_samples
        self.layers: list[np.ndarray] = []
        self.entry_bounds = [config.pixel_bound]  # public bound on the entries of each layer's input maps
        self.head: np.ndarray | None = None
        self.sums: dict[int, Statistics] = {}  # layer → the round's summed statistics
        self.round_seconds: list[float] = []  # wall time of each round, from its spec to its solve
        self._started = 0.0

    def layer(self) -> int:
        """The layer the next round trains (``config.layers`` + 1: the head), or 0 when done."""
        if len(self.layers) < self.config.layers:
            return len(self.layers) + 1
        return 0 if self.head is not None else self.config.layers + 1

    def spec(self, layer: int, participants: frozenset[int] | None = None, name: str | None = None) -> RoundSpec:
        """Round ``layer``: its public bound (entries of the input maps ≤ b, so |G| ≤ rows·b², |H°| ≤ rows·b for
        at most ``max_samples`` images of s² positions each; head rows have one row per image) and layout."""
        config, layout = self.config, round_layout(self.config, layer, self.num_classes)
        head = layer > config.layers
        rows = self.max_samples * (1 if head else config.size(layer) ** 2)
        bound = statistics_bound(rows, self.entry_bounds[layer - 1])
        if head:
            described = layout.describe("acnn-head", layer=layer)
        else:
            described = layout.describe("patch", layer=layer, positions=config.size(layer) ** 2,
                                        note="G and H° = AᵀY over the image's patch rows (one per output position); "
                                             "the server forms H = H° T_l with the public target table T_l")
        broadcast = {f"w{l}": w for l, w in enumerate(self.layers[: layer - 1], start=1)}
        self._started = time.perf_counter()
        return RoundSpec(name or (HEAD_ROUND if head else layer_round(layer)), layout.length, bound, broadcast,
                         participants, described)

    def next_round(self) -> RoundSpec | None:
        layer = self.layer()
        return None if layer == 0 else self.spec(layer)

    def solve(self, layer: int, total: Statistics) -> np.ndarray:
        """W_l = (ΣG + γ_l I)⁻¹ (ΣH°) T_l for a convolution; AFL's ridge for the head."""
        if layer > self.config.layers:
            return ridge_solve(total, self.config.head)
        cross = total.cross @ target_table(self.config, layer, self.num_classes)
        return solve_spd(total.gram + self.config.layer_gamma * np.eye(total.dim), cross,
                         what=f"layer {layer}'s ΣG + γ_l I")

    def receive(self, spec: RoundSpec, total: np.ndarray) -> None:
        layer = int(spec.layout["layer"])
        self.sums[layer] = round_layout(self.config, layer, self.num_classes).unpack(total)
        weights = self.solve(layer, self.sums[layer])
        if layer > self.config.layers:
            self.head = weights
        else:
            self.layers.append(weights)
            self.entry_bounds.append(patches.output_bound(weights, self.entry_bounds[-1]))
        self.round_seconds.append(time.perf_counter() - self._started)

    def model(self) -> FedACnnLModel:
        if self.head is None:
            raise ConfigError("the FedACnnL server has not trained every layer yet")
        return FedACnnLModel(self.config.slope, list(self.layers), self.head)


def pixel_bound(dataset: str) -> float:
    """The largest |normalised pixel| of the data set's public normalisation: a public entry bound."""
    low, high = box(dataset)
    return float(torch.maximum(low.abs(), high.abs()).max())


def configure(config) -> FedACnnLConfig:
    return FedACnnLConfig(config.acnn_layers, config.acnn_channels, config.acnn_slope, config.acnn_clip,
                          config.acnn_encoding, config.acnn_seed, config.acnn_gamma,
                          AFLConfig(config.gamma, config.restore), config.acnn_batch, pixel_bound(config.dataset))


def build_clients(job: FedACnnLConfig, data, client_type=FedACnnLClient) -> dict[int, FedACnnLClient]:
    return {k: client_type(data.train_x[idx], data.train_y[idx], data.num_classes, job)
            for k, idx in enumerate(data.client_indices) if len(idx)}


def build(job: FedACnnLConfig, data, max_samples: int, max_norm: float):
    return FedACnnLServer(job, data.num_classes, max_samples), build_clients(job, data)


def train_centrally(job: FedACnnLConfig, pixels, labels: np.ndarray, num_classes: int) -> FedACnnLServer:
    """The same layer-wise training on pooled data, with no protocol: the centralized reference."""
    server = FedACnnLServer(job, num_classes, len(labels))
    client = FedACnnLClient(pixels, labels, num_classes, job)
    while (spec := server.next_round()) is not None:
        server.receive(spec, client.contribute(spec))
    return server


def reference(job: FedACnnLConfig, x, y: np.ndarray, num_classes: int, max_norm: float) -> FedACnnLModel:
    return train_centrally(job, x, y, num_classes).model()


def report(job: FedACnnLConfig, server: FedACnnLServer, clients: dict, features) -> dict:
    """Per-round wall time (clients' forward and statistics, the sum, the solve) and the public entry bounds."""
    return {"acnn": {"round_seconds": server.round_seconds, "entry_bounds": server.entry_bounds,
                     "rounds": [layer_round(l) for l in range(1, job.layers + 1)] + [HEAD_ROUND]}}


def sample_rows(config: dict, broadcast, layout: dict, pixels) -> np.ndarray:
    """Each image's row in the space of a round's statistics (for scoring attacks there): its mean patch row of
    layer l (what H° / positions sums per class), or its head row; through the weights that round broadcast."""
    layer = int(layout["layer"])
    weights = [np.asarray(broadcast[f"w{l}"]) for l in range(1, layer)]
    x = torch.as_tensor(np.asarray(pixels))
    chunks = []
    for start in range(0, len(x), PREDICT_CHUNK):
        maps = patches.forward(x[start : start + PREDICT_CHUNK], weights, float(config["acnn_slope"]))
        rows = patches.head_rows(maps) if layout["rows"] == "acnn-head" else patches.windows(maps).mean(dim=1)
        chunks.append(torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], dim=1).numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, int(layout["dim"])))


ACNN_LR = 0.05  # default rate of fedavg-cnn --cnn acnn: best of 0.01, 0.05, 0.2 on mnist5k (0.2 diverges)
fedavg.MODELS["acnn"] = lambda job, classes: build_network(job.architecture, classes, job.seed)
fedavg.MODEL_OPTIONS["acnn"] = lambda config: configure(config).architecture
fedavg.DEFAULT_LR["acnn"] = ACNN_LR
ACNN_OPTIONS = ("acnn_layers", "acnn_channels", "acnn_slope", "acnn_clip", "acnn_encoding", "acnn_seed",
                "acnn_gamma", "acnn_batch")
ALGORITHM = Algorithm("fedacnnl", configure, build, options=ACNN_OPTIONS, rounds=lambda config: config.acnn_layers + 1,
                      reference=reference, report=report, model_type=FedACnnLModel, sample_rows=sample_rows,
                      inputs="pixels")
