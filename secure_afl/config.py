"""The full configuration of a run, validated before any data is read, sent or written.

Every field is recorded verbatim in the results JSON, so a run can be reproduced from its file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from protocols.graph import Targets
from protocols.minimum import default_min_clients
from secure_afl.algorithms.convnet import CNNS
from secure_afl.algorithms.registry import ALGORITHMS, algorithm, algorithm_scopes
from secure_afl.data.datasets import DATASETS
from secure_afl.data.partition import PARTITIONS
from secure_afl.errors import ConfigError
from secure_afl.features.backbone import DEFAULT_BACKBONE
from secure_afl.features.extract import check_precision

TARGET_OPTIONS = ("corrupt_fraction", "dropout_fraction", "security_bits", "failure_bits")  # masking's Targets
PROTOCOL_OPTIONS = {
    "mask": ("threshold", "neighbours", "fraction_bits", "dropout", "min_clients", *TARGET_OPTIONS),
    "he-bfv": ("limbs", "fraction_bits", "key_holder", "min_clients", "dropout"),
    "he-ckks": ("limbs", "fraction_bits", "key_holder", "min_clients", "dropout"),
    "he-ckks-approx": ("key_holder", "min_clients", "dropout"),
}
PARTITION_OPTIONS = {"alpha": ("dirichlet",), "shards_per_client": ("shards",)}


def option_scope() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Option → (the choice it belongs to, the values of that choice it applies to). An option changed from its
    default for any other value is refused, not ignored. Algorithms declare their own options (registry.py)."""
    return {
        **{name: ("algorithm", algorithms) for name, algorithms in algorithm_scopes().items()},
        **{name: ("protocol", tuple(p for p, names in PROTOCOL_OPTIONS.items() if name in names))
           for names in PROTOCOL_OPTIONS.values() for name in names},
        **{name: ("partition", partitions) for name, partitions in PARTITION_OPTIONS.items()},
    }


@dataclass(frozen=True)
class RunConfig:
    algorithm: str = "afl"
    protocol: str = "mask"  # secure by default; plaintext only when asked
    dataset: str = "mnist5k"
    data_dir: str | None = None
    download: bool = False
    clients: int = 20
    partition: str = "dirichlet"
    alpha: float = 0.1
    shards_per_client: int = 2
    min_client_size: int = 1
    min_class_count: int = 1  # a client withholds every class it holds fewer samples of (1: sends all; public)
    seed: int = 0
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    random_weights: bool = False
    resolution: int = 96
    batch_size: int = 128
    device: str = "auto"
    precision: str = "bf16"  # backbone autocast on CUDA: bf16, fp16 or fp32 (the CPU always runs fp32)
    cache_dir: str | None = None
    use_cache: bool = True
    buffer_width: int = 0  # 0: no random buffer
    buffer_activation: str = "relu"
    buffer_seed: int = 0
    buffer_bias: bool = False
    feature_norm: str = "l2"
    max_norm: float = 1.0
    gamma: float = 0.1
    restore: bool = False
    refine_width: int = 2048  # APFL: refinement-stream buffer width
    refine_activation: str = "tanh"  # APFL: refinement-stream activation
    refine_seed: int = 1  # APFL: refinement-stream buffer seed (public, distinct from buffer_seed)
    lam: float = 0.1  # APFL: refinement ridge λ (chosen on validation, benchmarks/accuracy_table.py)
    beta: float = 0.7  # APFL: weight β of the refinement stream (chosen on validation)
    depth: int = 9  # DeepAFL: T residual blocks (2T + 1 rounds); T, d_Φ, λ, γ chosen on validation (mnist5k)
    deep_width: int = 0  # DeepAFL: d_Φ of the random expansion; 0: Φ_0 is the scaled features themselves
    residual_width: int = 1024  # DeepAFL: d_F
    deep_lam: float = 100.0  # DeepAFL: λ of the classifier solves
    deep_gamma: float = 10.0  # DeepAFL: γ of the sandwiched solves
    deep_activation: str = "gelu"
    deep_seed: int = 0
    rounds: int = 100  # FedAvg/FedProx: communication rounds
    local_epochs: int = 1
    lr: float | None = None  # gradient methods: None: the model's default, chosen on validation (fedavg.DEFAULT_LR)
    local_batch: int = 32
    client_fraction: float = 1.0
    mu: float = 0.001  # FedProx proximal weight (chosen on validation)
    head: str = "linear"  # linear or mlp
    hidden: int = 256  # MLP head width
    cnn: str = "convnet"  # fedsgd-cnn / fedavg-cnn: breaching's ConvNet, DLG's LeNet or FedACnnL's network (acnn)
    cnn_width: int = 4  # fedsgd-cnn / fedavg-cnn: the ConvNet's width w (breaching's is 64; small for the CPU)
    param_bound: float = 100.0  # public box on every parameter a client sends
    acnn_layers: int = 2  # FedACnnL: L convolutions 3×3, each solved by ridge (L + 1 rounds with the head)
    acnn_channels: int = 16  # FedACnnL: channels c of every convolution
    acnn_slope: float = 0.1  # FedACnnL: negative slope of the (invertible) leaky ReLU
    acnn_clip: float = 1.0  # FedACnnL: encoded labels clipped to ±clip before the inverse activation
    acnn_encoding: str = "orthogonal"  # FedACnnL: label-encoding matrices E_l, orthogonal or gaussian
    acnn_seed: int = 0  # FedACnnL: public seed of the E_l
    acnn_gamma: float = 1.0  # FedACnnL: ridge γ_l of the convolutions (the head uses --gamma)
    acnn_batch: int = 64  # FedACnnL: images per mini-batch a client accumulates its statistics over
    pfed_objective: str = "proximal"  # pFedACnnL: the client's head objective, proximal or reweighted
    pfed_groups: int = 0  # pFedACnnL: clusters of clients by label histogram (plaintext only); 0: no grouping
    pfed_min_group: int = 2  # pFedACnnL: the fewest clients a group's round may hold (public)
    pfed_validation: float = 0.2  # pFedACnnL: fraction of a client's images it chooses λ / α on
    dp_noise: float | None = None  # noise multiplier z (DP-SGD or DP on the statistics); or dp_epsilon
    dp_epsilon: float | None = None  # target ε over the whole run: DP-SGD, or DP on the statistics (afl/apfl/deepafl)
    dp_delta: float = 1e-5
    dp_clip: float = 1.0  # DP-SGD per-sample gradient norm bound (the statistics' clip norm C is max_norm)
    dp_accountant: str = "rdp"
    dp_placement: str | None = None  # analytic DP: local (default under DP) or distributed (needs a secure protocol)
    dp_solve: str = "eig-clip"  # analytic DP: how the server solves a noisy Gram (eig-clip or adassp)
    dp_row_rms: float = 1.0  # DeepAFL under DP: Φ_t and F_t rows clipped to dp_row_rms·√width
    dp_residual_clip: float = 1.0  # DeepAFL under DP: residual target rows clipped to this norm
    threshold: int | None = None  # masking: shares needed to reconstruct (default from the neighbour count)
    neighbours: int | None = None  # masking: k neighbours per client (default from n and the targets)
    fraction_bits: int | None = None  # fixed-point precision (default: the largest the protocol's range allows)
    dropout: dict[str, float] = field(default_factory=dict)  # mask / he-*: simulated dropout fraction per stage
    corrupt_fraction: float = Targets.corrupt_fraction  # masking: assumed chance a client colludes with the server
    dropout_fraction: float = Targets.dropout_fraction  # masking: assumed chance a client drops during a round
    security_bits: int = Targets.security_bits  # masking: target P[a client's secrets are exposed] ≤ 2^-bits
    failure_bits: int = Targets.failure_bits  # masking: target P[a round cannot be unmasked] ≤ 2^-bits
    limbs: int | None = None  # he-bfv / he-ckks: limbs per value (default 1 for BFV, 2 for integer CKKS)
    key_holder: int | None = None  # he-*: the client that holds the secret key (default: the lowest id)
    centralized_reference: bool = True  # also train centrally on the pooled data, to measure the federated gap
    min_clients: int | None = None  # mask / he-*: the fewest clients a sum may hold (default ⌊2P/3⌋ + 1, P per round)

    def protocol_options(self) -> dict:
        """Options passed to the chosen protocol (the ones set; ``validate`` refuses the others). A secure
        protocol always gets its minimum aggregation size: the one given, or the default for this job's
        rounds (the protocol alone would take every enrolled client as a round's size)."""
        defaults = RunConfig()
        options = {name: getattr(self, name) for name in PROTOCOL_OPTIONS.get(self.protocol, ())
                   if getattr(self, name) != getattr(defaults, name) and name not in TARGET_OPTIONS}
        if "dropout" in PROTOCOL_OPTIONS.get(self.protocol, ()):
            options["dropout_seed"] = self.seed
        if self.protocol == "mask":
            options["targets"] = Targets(*(getattr(self, name) for name in TARGET_OPTIONS))
        if "min_clients" in PROTOCOL_OPTIONS.get(self.protocol, ()):
            options["min_clients"] = self.min_clients or default_min_clients(self.clients_per_round())
        return options

    def applicable(self) -> dict:
        """The configuration as a results document records it: every field less the options that do not apply
        to this run's algorithm, protocol or partition. ``validate`` has checked that those hold their
        defaults, so nothing is lost: ``RunConfig(**config.applicable()) == config``."""
        scope = option_scope()
        return {name: value for name, value in asdict(self).items()
                if name not in scope or getattr(self, scope[name][0]) in scope[name][1]}

    def clients_per_round(self) -> int:
        """P, the clients an honest server asks each round: all of them for AFL, APFL and DeepAFL, the sampled
        ⌈client_fraction · K⌉ for FedAvg / FedProx."""
        sampled = algorithm(self.algorithm).clients_per_round
        return self.clients if sampled is None else sampled(self)

    def validate(self) -> None:
        """Refuse values no run can use; names are checked against the registries they select from."""
        from protocols import PROTOCOLS

        choices = {
            "algorithm": tuple(ALGORITHMS),
            "protocol": tuple(PROTOCOLS),
            "dataset": DATASETS,
            "partition": PARTITIONS,
            "cnn": CNNS,
        }
        for name, accepted in choices.items():
            if getattr(self, name) not in accepted:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(accepted)}")
        positive = {"clients": self.clients, "resolution": self.resolution, "batch_size": self.batch_size,
                    "min_client_size": self.min_client_size, "shards_per_client": self.shards_per_client,
                    "min_class_count": self.min_class_count, "cnn_width": self.cnn_width}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        check_precision(self.precision)
        if self.buffer_width < 0:
            raise ConfigError(f"buffer_width must be ≥ 0 (0 disables the buffer), got {self.buffer_width}")
        if self.partition == "dirichlet" and not self.alpha > 0:
            raise ConfigError(f"alpha must be positive, got {self.alpha}")
        if (validate := algorithm(self.algorithm).validate) is not None:
            validate(self)
        defaults, scope = RunConfig(), option_scope()
        stray = [name for name, (choice, accepted) in scope.items()
                 if getattr(self, name) != getattr(defaults, name) and getattr(self, choice) not in accepted]
        if stray:
            choice, accepted = scope[stray[0]]
            names = [name for name in stray if scope[name] == (choice, accepted)]
            raise ConfigError(f"{', '.join(names)} only apply to --{choice} {' / '.join(accepted)}")
        if self.min_clients is not None and not 2 <= self.min_clients <= self.clients_per_round():
            raise ConfigError(f"--min-clients must be from 2 (a sum of one client is that client's vector) to the "
                              f"{self.clients_per_round()} clients a round asks, got {self.min_clients}")
