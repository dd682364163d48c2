"""FedAvg and FedProx (spec §7) on the same frozen features, with optional DP-SGD through Opacus.

The same client and server also train models other modules register in ``MODELS`` (algorithms/convnet.py:
a CNN trained end to end on pixel rows), as FedAvg or as FedSGD with ``full_batch`` (one step on all of a
client's data per epoch), the gradient-FL baseline the gradient-inversion attacks are measured on.

Each round the server broadcasts the global parameters θ; every sampled client trains locally
(E epochs of SGD; FedProx follows every SGD step with the proximal step of μ/2‖θ − θ_global‖²,
θ ← θ − lr·μ(θ − θ_global), which DP-SGD's per-sample machinery would otherwise drop) and
contributes [n_k θ_k, n_k]. The weighted
average Σ n_k θ_k / Σ n_k is a sum, so the run's protocol (masking, HE) covers these baselines
too, and the server never sees one client's parameters.

Public bound: a client projects its parameters onto the box |θ_i| ≤ ``param_bound`` before
sending (counted in the history; with the defaults it never binds on normalised features), so
every entry of [n_k θ_k, n_k] is at most n_max · max(param_bound, 1).

DP-SGD: each client owns an Opacus PrivacyEngine for the whole run (its accountant sees every
local step of every round), with per-sample clipping ``dp_clip`` and either a given noise
multiplier or the one that reaches ``dp_epsilon`` at δ = ``dp_delta`` over the planned steps.
The reported ε is the largest over clients (each client's data are protected by its own DP).
Noise and sampling draw from a torch generator seeded per round by ``privacy.noise_seed``: fresh from
``secrets`` in one process, never from the public seed. A deployed site answers every message in a fresh
process and replays its earlier rounds (deploy/client_app.py), so there the seed comes from the site's secret
key and the round's name (``DPConfig.noise_key``): a repeated call re-sends the same release, never a second
one the server could average, and the accountant of each process counts the rounds the site answered.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from secure_afl.algorithms.base import Algorithm, AlgorithmClient, AlgorithmServer, RoundSpec
from secure_afl.errors import ConfigError, TrainingWarning
from secure_afl.privacy import noise_seed

HEADS = ("linear", "mlp")  # models trained on frozen features
CLAMP_WARNING = 0.01  # warn when more than this fraction of the parameter values sent were clamped
# the learning rate each head gets unless one is given, chosen on validation: linear by
# benchmarks/accuracy_table.py, mlp by benchmarks/head_selection.py (at the linear head's rate it ends at chance)
DEFAULT_LR = {"linear": 16.0, "mlp": 1.0}  # a module registering MODELS adds their rates
ACCOUNTANTS = ("rdp", "prv", "gdp")
BOUND_SLACK = 1.0 + 1e-6


@dataclass(frozen=True)
class DPConfig:
    clip: float = 1.0  # per-sample gradient norm bound
    noise_multiplier: float | None = None  # σ; or derive it from the target ε
    epsilon: float | None = None
    delta: float = 1e-5
    accountant: str = "rdp"
    noise_key: bytes | None = field(default=None, repr=False, compare=False)  # a deployed site's secret (docstring)

    def __post_init__(self) -> None:
        if (self.noise_multiplier is None) == (self.epsilon is None):
            raise ConfigError("DP-SGD needs exactly one of a noise multiplier (--dp-noise) or a target ε (--dp-epsilon)")
        if not self.clip > 0:
            raise ConfigError(f"the DP clipping bound must be positive, got {self.clip}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ConfigError(f"the noise multiplier must be positive, got {self.noise_multiplier}")
        if self.epsilon is not None and not self.epsilon > 0:
            raise ConfigError(f"the target ε must be positive, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"δ must lie in (0, 1), got {self.delta}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"unknown accountant {self.accountant!r}; choose one of {', '.join(ACCOUNTANTS)}")


@dataclass(frozen=True)
class FedAvgConfig:
    rounds: int = 100
    local_epochs: int = 1
    lr: float | None = None  # None: the head's DEFAULT_LR (large because features are l2-normalised rows)
    batch_size: int = 32
    client_fraction: float = 1.0
    mu: float = 0.0  # FedProx proximal weight; 0 is FedAvg
    head: str = "linear"
    hidden: int = 256
    param_bound: float = 100.0
    seed: int = 0
    dp: DPConfig | None = None
    width: int = 4  # the width of a registered CNN (algorithms/convnet.py)
    architecture: dict = field(default_factory=dict)  # a registered model's own public options (MODEL_OPTIONS)
    full_batch: bool = False  # FedSGD: each local epoch is one step on all of a client's data

    def __post_init__(self) -> None:
        positive = {"rounds": self.rounds, "local_epochs": self.local_epochs, "batch_size": self.batch_size,
                    "hidden": self.hidden, "width": self.width}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.head not in (*HEADS, *MODELS):
            raise ConfigError(f"unknown head {self.head!r}; choose one of {', '.join((*HEADS, *MODELS))}")
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.head])  # frozen: resolved once, here
        if not (self.lr > 0 and self.param_bound > 0):
            raise ConfigError("lr and param_bound must be positive")
        if not 0 < self.client_fraction <= 1:
            raise ConfigError(f"client_fraction must lie in (0, 1], got {self.client_fraction}")
        if self.mu < 0:
            raise ConfigError(f"mu must be ≥ 0, got {self.mu}")


# model name → (job, classes) → the initialised module, for models other than the heads that train through this
# client and server; registered by their own module (algorithms/convnet.py), so this one names none of them
MODELS: dict[str, Callable[[FedAvgConfig, int], nn.Module]] = {}
# model name → RunConfig → the model's own public options (JSON values), for a registered model whose architecture
# is set by options of its own (algorithms/fedacnnl.py: the --acnn-* network); recorded with every round
MODEL_OPTIONS: dict[str, Callable[[object], dict]] = {}


def build_head(config: FedAvgConfig, dim: int, num_classes: int) -> nn.Module:
    """The model every client trains, initialised identically from the public seed (PyTorch's default
    U(±1/√fan_in) initialisation, drawn from a private generator rather than the global one; a registered
    model initialises itself)."""
    if config.head in MODELS:
        return MODELS[config.head](config, num_classes)
    if config.head == "linear":
        module = nn.Linear(dim, num_classes)
    else:
        module = nn.Sequential(nn.Linear(dim, config.hidden), nn.ReLU(), nn.Linear(config.hidden, num_classes))
    generator = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return module


def parameter_vector(module: nn.Module) -> np.ndarray:
    return nn.utils.parameters_to_vector(module.parameters()).detach().to(torch.float64).cpu().numpy()


def load_vector(module: nn.Module, vector: np.ndarray) -> nn.Module:
    nn.utils.vector_to_parameters(torch.as_tensor(vector, dtype=torch.float32), module.parameters())
    return module


@dataclass
class HeadModel:
    """A trained head; ``predict`` takes the same mapped features the clients trained on."""

    config: FedAvgConfig
    dim: int
    num_classes: int
    weights: np.ndarray  # the flat parameter vector θ (what is broadcast)
    _module: nn.Module | None = field(default=None, repr=False)

    def predict(self, features) -> np.ndarray:
        if self._module is None:
            self._module = load_vector(build_head(self.config, self.dim, self.num_classes), self.weights).eval()
        with torch.no_grad():
            return self._module(torch.as_tensor(np.asarray(features), dtype=torch.float32)).argmax(dim=1).numpy()

    def accuracy(self, features, labels) -> float:
        if len(labels) == 0:
            return float("nan")
        return float(np.mean(self.predict(features) == np.asarray(labels)))

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The head's shape (its config less DP, which prediction does not need) and θ."""
        return ({"config": asdict(replace(self.config, dp=None)), "dim": self.dim, "num_classes": self.num_classes},
                {"weights": self.weights})

    @classmethod
    def from_state(cls, meta: dict, arrays: Mapping[str, np.ndarray]) -> HeadModel:
        return cls(FedAvgConfig(**meta["config"]), int(meta["dim"]), int(meta["num_classes"]),
                   np.asarray(arrays["weights"], dtype=np.float64))


class FedAvgClient(AlgorithmClient):
    def __init__(self, client_id: int, features, labels: np.ndarray, num_classes: int, config: FedAvgConfig,
                 planned_rounds: int):
        self.id = client_id
        self.config = config
        self._x = torch.as_tensor(features).float().cpu()
        self._y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self._dataset = torch.utils.data.TensorDataset(self._x, self._y)  # one object: Opacus accounts per dataset
        self._num_classes = num_classes
        self.clamped = 0  # parameter values projected onto the public box before sending
        self.sent = 0  # parameter values sent over the job
        self._engine = None
        self._noise = None
        if config.dp is not None and len(self._y):  # a client without rows trains nothing and sends zeros
            from opacus import PrivacyEngine

            with warnings.catch_warnings():  # about secure_mode; our noise generator is seeded from secrets
                warnings.filterwarnings("ignore", message="Secure RNG turned off")
                self._engine = PrivacyEngine(accountant=config.dp.accountant)
            self._noise = dp_noise_multiplier(config, len(self._y), planned_rounds)

    @property
    def noise_multiplier(self) -> float | None:
        return self._noise

    def epsilon(self) -> float | None:
        if self._engine is None:
            return None
        return float(self._engine.get_epsilon(self.config.dp.delta))

    def _batches(self, generator: torch.Generator):
        """Shuffled minibatches by slicing (a DataLoader's per-sample indexing cost more than the training)."""
        order = torch.randperm(len(self._y), generator=generator)
        size = len(order) if self.config.full_batch else self.config.batch_size
        for start in range(0, len(order), size):
            index = order[start : start + size]
            yield self._x[index], self._y[index]

    def contribute(self, spec: RoundSpec) -> np.ndarray:
        round_index = int(spec.name.rpartition("/")[2])
        global_vector = spec.broadcast["params"]
        model = load_vector(build_head(self.config, self._x.shape[1], self._num_classes), global_vector)
        anchor = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=self.config.lr)
        stream = np.random.SeedSequence([self.config.seed, self.id, round_index]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(stream))
        trained = model
        loader = None
        if self._engine is not None:
            # DP noise and Poisson sampling must be unpredictable: a generator derived from the public seed
            # would let anyone regenerate and subtract the noise. Opacus's secure_mode needs torchcsprng,
            # which is not available, so the generator is seeded from secrets (or a deployed site's secret key).
            # Opacus (1.6) samples with the data loader's generator (``noise_generator`` draws only the noise), and
            # with torch's global one when the loader has none: so the loader gets it too.
            secret = torch.Generator().manual_seed(noise_seed(self.config.dp.noise_key, spec.name, 63))
            loader = torch.utils.data.DataLoader(self._dataset, batch_size=self.config.batch_size, generator=secret)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Secure RNG turned off")
                trained, optimizer, loader = self._engine.make_private(
                    module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=self._noise,
                    max_grad_norm=self.config.dp.clip, noise_generator=secret,
                )
        loss_fn = nn.CrossEntropyLoss()
        trained.train()
        pull = self.config.lr * self.config.mu
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus on a first layer
            for _ in range(self.config.local_epochs):
                for xb, yb in (loader if self._engine is not None else self._batches(generator)):
                    if len(yb) == 0:  # Poisson sampling can draw an empty batch
                        continue
                    optimizer.zero_grad()
                    loss_fn(trained(xb), yb).backward()
                    optimizer.step()
                    if pull:  # FedProx: a proximal step toward θ_global, data-independent so DP-SGD's noise is untouched
                        with torch.no_grad():
                            for p, a in zip(model.parameters(), anchor):
                                p.sub_(pull * (p - a))
        theta = parameter_vector(model)
        bound = self.config.param_bound
        self.clamped += int(np.count_nonzero(np.abs(theta) > bound))
        self.sent += theta.size
        theta = np.clip(theta, -bound, bound)
        n = float(len(self._y))
        return np.concatenate([n * theta, [n]])


def dp_noise_multiplier(config: FedAvgConfig, rows: int, planned_rounds: int) -> float:
    """The noise multiplier z of DP-SGD on a client with ``rows`` rows: the job's, or the one Opacus calibrates to
    reach the target ε at δ over the planned local steps (Poisson sampling at rate batch / rows, ⌈1 / rate⌉ steps
    an epoch). Public: the job and the row count decide it, so a deployed job's operator states it for every site."""
    dp = config.dp
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    from opacus.accountants.utils import get_noise_multiplier

    sample_rate = min(1.0, config.batch_size / rows)
    steps = planned_rounds * config.local_epochs * math.ceil(1 / sample_rate)
    return get_noise_multiplier(target_epsilon=dp.epsilon, target_delta=dp.delta, sample_rate=sample_rate,
                                steps=steps, accountant=dp.accountant)


def clients_per_round(client_fraction: float, clients: int) -> int:
    """How many clients a round samples: ⌈client_fraction · K⌉, at least one (the job's public P, from which
    the secure protocols' minimum aggregation size defaults)."""
    return max(1, math.ceil(client_fraction * clients))


class FedAvgServer(AlgorithmServer):
    def __init__(self, dim: int, num_classes: int, config: FedAvgConfig, clients: list[int], max_samples: int):
        self.config = config
        self.dim, self.num_classes = dim, num_classes
        self.clients = sorted(clients)
        self.theta = parameter_vector(build_head(config, dim, num_classes))
        self.round = 0
        self.bound = max_samples * max(config.param_bound, 1.0) * BOUND_SLACK
        self._rng = np.random.default_rng(config.seed)  # client sampling is public, not secret

    def next_round(self) -> RoundSpec | None:
        if self.round == self.config.rounds:
            return None
        count = clients_per_round(self.config.client_fraction, len(self.clients))
        chosen = frozenset(int(c) for c in self._rng.choice(self.clients, size=count, replace=False))
        layout = {"kind": "weighted_parameters", "parameters": [0, self.theta.shape[0]], "weight": self.theta.shape[0],
                  "head": self.config.head, "local": self.local_training()}  # [n_k θ_k, n_k]
        return RoundSpec(f"fedavg/{self.round}", self.theta.shape[0] + 1, self.bound, {"params": self.theta}, chosen,
                         layout)

    def local_training(self) -> dict:
        """How every client trains locally (public: the job's configuration), recorded with each round."""
        c = self.config
        return {"model": c.head, "dim": self.dim, "classes": self.num_classes, "hidden": c.hidden, "width": c.width,
                "architecture": c.architecture, "lr": c.lr, "epochs": c.local_epochs, "batch": c.batch_size,
                "full_batch": c.full_batch, "mu": c.mu,
                "dp": c.dp is not None}

    def receive(self, spec: RoundSpec, total: np.ndarray) -> None:
        self.theta = total[:-1] / total[-1]
        self.round += 1

    def model(self) -> HeadModel:
        return HeadModel(self.config, self.dim, self.num_classes, self.theta.copy())


def configure(config, mu: float = 0.0) -> FedAvgConfig:
    dp = None
    if config.dp_noise is not None or config.dp_epsilon is not None:
        dp = DPConfig(config.dp_clip, config.dp_noise, config.dp_epsilon, config.dp_delta, config.dp_accountant)
    return FedAvgConfig(config.rounds, config.local_epochs, config.lr, config.local_batch, config.client_fraction,
                        mu, config.head, config.hidden, config.param_bound, config.seed, dp)


def build(job: FedAvgConfig, data, max_samples: int, max_norm: float):
    """Every client is built (one without rows is simply never sampled into a useful round)."""
    server = FedAvgServer(data.train_x.shape[1], data.num_classes, job, list(range(len(data.client_indices))),
                          max_samples)
    clients = {k: FedAvgClient(k, data.train_x[idx], data.train_y[idx], data.num_classes, job, job.rounds)
               for k, idx in enumerate(data.client_indices)}
    return server, clients


def report(job: FedAvgConfig, server: FedAvgServer, clients: dict | None, features) -> dict:
    """The learning rate used (a default resolves per model), parameter clamps and, under DP-SGD, the guarantee and
    how loud its noise is; warns when clamps or noise dominate. ``clients`` None: a deployed job, whose sites keep
    their clamp counts and their accountants' ε (None here); each site's z follows from the job and its row count."""
    clamped = None if clients is None else sum(c.clamped for c in clients.values())
    sent = None if clients is None else sum(c.sent for c in clients.values())
    report = {"lr": job.lr, "parameters_clamped": clamped, "parameter_values_sent": sent}
    if sent and clamped > CLAMP_WARNING * sent:
        warnings.warn(f"{clamped} of the {sent} parameter values sent ({clamped / sent:.1%}) were clamped to the public "
                      f"box ±{job.param_bound:g} (--param-bound): the sum is of clamped models; raise the bound or "
                      "lower --lr", TrainingWarning, stacklevel=2)
    if job.dp is not None:
        if clients is None:
            sizes = {len(rows) for rows in features.data.client_indices if len(rows)}
            z, epsilon = max(dp_noise_multiplier(job, size, job.rounds) for size in sizes), None
        else:
            private = [c for c in clients.values() if c.noise_multiplier is not None]  # clients with rows
            z, epsilon = max(c.noise_multiplier for c in private), max(c.epsilon() for c in private)
        parameters = server.theta.size
        noise_to_signal = z * math.sqrt(parameters) / job.batch_size  # ‖noise‖ / (largest clipped mean gradient)
        report["dp"] = {
            "epsilon": epsilon,
            "target_epsilon": job.dp.epsilon,
            "delta": job.dp.delta,
            "noise_multiplier": z,
            "sigma": z * job.dp.clip,
            "clip": job.dp.clip,
            "noise_to_signal_per_step": noise_to_signal,
            "accountant": job.dp.accountant,
            "guarantee": _dp_sgd_guarantee(job, deployed=clients is None),
            "noise_rng": "torch generator seeded from secrets per client and round (Opacus secure_mode unavailable)",
        }
        if noise_to_signal > 1:
            warnings.warn(f"DP-SGD noise dominates every step: σ = {z * job.dp.clip:.3g} on each of {parameters} "
                          f"parameters against a clipped batch sum ≤ {job.dp.clip:g} × {job.batch_size} "
                          f"(noise/signal ≈ {noise_to_signal:.1f}); raise --local-batch or --dp-epsilon, or use a "
                          "smaller head", TrainingWarning, stacklevel=2)
    return report


def _dp_sgd_guarantee(job: FedAvgConfig, deployed: bool) -> str:
    """What ε means: each client's rows are protected by its own DP-SGD, counted by its own accountant."""
    counted = ("each site's accountant counts its ε over the rounds it answered and keeps it (epsilon null)" if deployed
               else "epsilon: the largest of the clients' accountants over the rounds each answered")
    if job.dp.epsilon is not None:
        return (f"{counted}; every client calibrated z to its row count to reach target_epsilon at delta over the "
                f"job's {job.rounds} planned rounds, and answers each round at most once, so none exceeds it")
    return f"{counted}; z is the job's, so ε grows with the rounds a client answered (at most the job's {job.rounds})"


GRADIENT_OPTIONS = ("rounds", "local_epochs", "lr", "local_batch", "client_fraction", "head", "hidden", "param_bound",
                    "dp_clip", "dp_accountant", "dp_noise", "dp_epsilon", "dp_delta")
FEDAVG = Algorithm("fedavg", configure, build, options=GRADIENT_OPTIONS, rounds=lambda config: config.rounds,
                   clients_per_round=lambda config: clients_per_round(config.client_fraction, config.clients),
                   report=report, history=True, model_type=HeadModel)
FEDPROX = replace(FEDAVG, name="fedprox", configure=lambda config: configure(config, config.mu),
                  options=(*GRADIENT_OPTIONS, "mu"))
