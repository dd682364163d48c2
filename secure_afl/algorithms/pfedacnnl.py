"""pFedACnnL: FedACnnL's network with a head each client personalizes in closed form (spec §6).

This toolkit's closed-form reading of the paper's personalization (papers/001_*.txt: "a client-specific model
by analytically solving a local objective that reconciles the global solution with the client's data"); the
method section is not available, so the objectives and every choice below are parameters.

1. The convolutions and a global head are trained exactly as FedACnnL (L + 1 rounds, any protocol): the
   global head W is FedACnnL's model.
2. Optional grouping (``groups`` > 0, plaintext only). The server clusters clients by their label
   histograms, which a separate declared round ``pfedacnnl/histograms`` discloses (client k writes its class
   counts into slot k of a K × C vector, so the sum holds every client's histogram: its layout says so). Under
   a secure protocol that round would defeat the protocol, so grouping is refused there and is off by default.
   Groups smaller than the public ``min_group`` are merged into the nearest group; a round over fewer
   clients is refused. Each group's head statistics are then summed in its own round (exact AFL within the
   group) and solved into W_g. Without grouping W_g is the global head W.
3. Each client, on its own data only, solves for its head
   - proximal:    W_k = (G_k + λI)⁻¹ (H_k + λ W_g), or
   - re-weighted: W_k = (G_g + (α − 1) G_k + γI)⁻¹ (H_g + (α − 1) H_k),
   with (G_k, H_k) its own head statistics, choosing λ or α on a validation split of its own training images
   (the candidates include W_g itself: λ = ∞, α = 1; ties go to the more global candidate), then refitting on
   all its images. What a client receives for it: the convolutions and W_g (proximal), or its group's summed
   head statistics (G_g, H_g) (re-weighted: the aggregate the server solved, not any one client's). Nothing
   more is sent. The convolutions stay shared: only the head is personalized.

``personalized_accuracy`` is the runner's, as for APFL: the mean over clients of each client's accuracy on its
own held-out split with the model it uses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from secure_afl.algorithms import fedacnnl, patches
from secure_afl.algorithms.afl import ridge_solve
from secure_afl.algorithms.base import Algorithm, RoundSpec
from secure_afl.algorithms.fedacnnl import FedACnnLClient, FedACnnLConfig, FedACnnLModel, FedACnnLServer, round_layout
from secure_afl.errors import ConfigError
from secure_afl.linalg import solve_spd
from secure_afl.statistics import Statistics

OBJECTIVES = ("proximal", "reweighted")
HISTOGRAM_ROUND = "pfedacnnl/histograms"
LAMBDAS = (1000.0, 100.0, 10.0, 1.0, 0.1)  # proximal λ candidates after W_g itself (λ = ∞), most global first
ALPHAS = (2.0, 4.0, 8.0, 16.0, 64.0)  # re-weighted α candidates after W_g itself (α = 1)
KMEANS_STEPS = 50


@dataclass(frozen=True)
class PFedACnnLConfig:
    base: FedACnnLConfig = FedACnnLConfig()
    objective: str = "proximal"
    groups: int = 0  # 0: no grouping (every client personalizes from the global head)
    min_group: int = 2  # public: the fewest clients a group's round may hold
    validation: float = 0.2  # fraction of a client's training images it validates λ / α on
    seed: int = 0  # public seed of the clustering and of each client's validation split
    candidates: tuple[float, ...] | None = None  # λ (proximal) or α (re-weighted) grid; None: LAMBDAS / ALPHAS

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown --pfed-objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.groups < 0 or self.min_group < 2:
            raise ConfigError(f"--pfed-groups must be ≥ 0 and --pfed-min-group ≥ 2 (a group of one is that client's "
                              f"statistics), got {self.groups}, {self.min_group}")
        if not 0 < self.validation < 1:
            raise ConfigError(f"--pfed-validation must lie in (0, 1), got {self.validation}")

    @property
    def grid(self) -> tuple[float, ...]:
        return self.candidates or (LAMBDAS if self.objective == "proximal" else ALPHAS)


def group_clients(histograms: dict[int, np.ndarray], groups: int, min_group: int, seed: int) -> list[list[int]]:
    """k-means (seeded) on the clients' label distributions, then every group smaller than ``min_group`` merged,
    smallest first, into the group with the nearest centre. Refuses when the clients cannot fill one group."""
    ids = sorted(histograms)
    if len(ids) < min_group:
        raise ConfigError(f"{len(ids)} clients cannot form a group of --pfed-min-group {min_group}")
    counts = np.stack([np.asarray(histograms[k], dtype=np.float64) for k in ids])
    p = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    rng = np.random.default_rng(seed)
    centres = p[rng.choice(len(ids), min(groups, len(ids)), replace=False)]
    for _ in range(KMEANS_STEPS):
        assign = np.argmin(((p[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
        centres = np.stack([p[assign == g].mean(axis=0) if np.any(assign == g) else centres[g]
                            for g in range(len(centres))])
    members = {g: list(np.flatnonzero(assign == g)) for g in range(len(centres)) if np.any(assign == g)}
    while len(members) > 1 and (small := min(members, key=lambda g: (len(members[g]), g))) is not None \
            and len(members[small]) < min_group:
        target = min((g for g in members if g != small),
                     key=lambda g: (float(((centres[g] - centres[small]) ** 2).sum()), g))
        members[target] += members.pop(small)
        centres[target] = p[members[target]].mean(axis=0)
    return sorted(sorted(int(ids[i]) for i in rows) for rows in members.values())


class PFedACnnLClient(FedACnnLClient):
    """A FedACnnL client that also answers the histogram round and personalizes its head locally."""

    def __init__(self, pixels, labels, num_classes: int, config: FedACnnLConfig, client: int, clients: int):
        super().__init__(pixels, labels, num_classes, config)
        self.client, self.clients = client, clients

    def contribute(self, spec: RoundSpec) -> np.ndarray:
        if spec.name != HISTOGRAM_ROUND:
            return super().contribute(spec)
        if spec.length != self.clients * self.num_classes:
            raise ConfigError(f"a pFedACnnL client cannot answer round {spec.name!r} of length {spec.length}")
        vector = np.zeros((self.clients, self.num_classes))
        vector[self.client] = np.bincount(self.labels, minlength=self.num_classes)
        return vector.ravel()

    def split(self, job: PFedACnnLConfig) -> tuple[np.ndarray, np.ndarray]:
        """(training rows, validation rows) of this client's images, from the public seed and its id; a client
        with too few images to hold one out validates nothing (and keeps W_g)."""
        order = np.random.default_rng([job.seed, self.client]).permutation(len(self.labels))
        held = int(round(job.validation * len(order))) if len(order) >= 2 else 0
        return np.sort(order[held:]), np.sort(order[:held])

    def head_statistics(self, layers: list[np.ndarray], rows: np.ndarray) -> Statistics:
        layout = round_layout(self.config, self.config.layers + 1, self.num_classes)
        return layout.unpack(self.statistics(self.config.layers + 1, layers, list(rows)))

    def personalize(self, job: PFedACnnLConfig, layers: list[np.ndarray], group_head: np.ndarray,
                    group_sum: Statistics | None) -> tuple[FedACnnLModel, float]:
        """(this client's model, the λ or α it chose; inf / 1 for W_g itself)."""
        train, held = self.split(job)
        own = self.head_statistics(layers, np.arange(len(self.labels)))
        if len(held) == 0 or len(train) == 0:
            return FedACnnLModel(self.config.slope, layers, group_head), _global_choice(job)
        fit = self.head_statistics(layers, train)
        validation_rows = FedACnnLModel(self.config.slope, layers, group_head).head_inputs(self.pixels[list(held)])
        outside = None if group_sum is None else group_sum - (own - fit)  # the group's sum less its own held-out rows
        best, best_accuracy = _global_choice(job), -1.0
        for candidate in (_global_choice(job), *job.grid):
            head = self.solve(job, candidate, fit, group_head, outside)
            predicted = np.argmax(patches.affine(validation_rows, head).numpy(), axis=1)
            accuracy = float(np.mean(predicted == self.labels[held]))
            if accuracy > best_accuracy:
                best, best_accuracy = candidate, accuracy
        return FedACnnLModel(self.config.slope, layers, self.solve(job, best, own, group_head, group_sum)), best

    def solve(self, job: PFedACnnLConfig, candidate: float, own: Statistics, group_head: np.ndarray,
              group_sum: Statistics | None) -> np.ndarray:
        """The head of one λ (proximal) or α (re-weighted); λ = ∞ and α = 1 give W_g."""
        if candidate == _global_choice(job):
            return group_head
        eye = np.eye(own.dim)
        if job.objective == "proximal":
            return solve_spd(own.gram + candidate * eye, own.cross + candidate * group_head,
                             what="the proximal objective's G_k + λI")
        gamma = self.config.head.gamma
        return solve_spd(group_sum.gram + (candidate - 1.0) * own.gram + gamma * eye,
                         group_sum.cross + (candidate - 1.0) * own.cross,
                         what="the re-weighted objective's G_g + (α − 1)G_k + γI")


def _global_choice(job: PFedACnnLConfig) -> float:
    return float("inf") if job.objective == "proximal" else 1.0


class PFedACnnLServer(FedACnnLServer):
    """FedACnnL's rounds, then (with grouping) the histogram round and one head round per group."""

    def __init__(self, job: PFedACnnLConfig, num_classes: int, max_samples: int, clients: int):
        super().__init__(job.base, num_classes, max_samples)
        self.job, self.clients = job, clients
        self.groups: list[list[int]] | None = None
        self.group_heads: list[np.ndarray] = []
        self.group_sums: list[Statistics] = []
        self.choices: dict[int, float] = {}  # client → the λ or α it chose (set by ``personalize``)

    def next_round(self) -> RoundSpec | None:
        if (spec := super().next_round()) is not None or self.job.groups == 0:
            return spec
        if self.groups is None:
            layout = {"kind": "histograms", "clients": self.clients, "classes": self.num_classes,
                      "discloses": "every client's label histogram: slot k of the sum is client k's class counts"}
            return RoundSpec(HISTOGRAM_ROUND, self.clients * self.num_classes, float(self.max_samples), layout=layout)
        if len(self.group_heads) < len(self.groups):
            return self.group_spec(len(self.group_heads))
        return None

    def group_spec(self, group: int) -> RoundSpec:
        """Group ``group``'s head round over its members only; refused below the public minimum group size."""
        members = self.groups[group]
        if len(members) < self.job.min_group:
            raise ConfigError(f"group {group} holds {len(members)} clients, fewer than --pfed-min-group "
                              f"{self.job.min_group}: its sum would expose too few clients")
        spec = self.spec(self.config.layers + 1, frozenset(members), f"pfedacnnl/group-{group}")
        return replace(spec, layout={**spec.layout, "group": group, "members": members})

    def receive(self, spec: RoundSpec, total: np.ndarray) -> None:
        if spec.name == HISTOGRAM_ROUND:
            counts = np.asarray(total).reshape(self.clients, self.num_classes)
            present = {k: counts[k] for k in range(self.clients) if counts[k].sum() > 0}
            self.groups = group_clients(present, self.job.groups, self.job.min_group, self.job.seed)
        elif "group" in spec.layout:
            stats = round_layout(self.config, self.config.layers + 1, self.num_classes).unpack(total)
            self.group_sums.append(stats)
            self.group_heads.append(ridge_solve(stats, self.config.head))
        else:
            super().receive(spec, total)

    def group_of(self, client: int) -> tuple[np.ndarray, Statistics]:
        """(W_g, (G_g, H_g)) of the client's group; the global head and sums without grouping."""
        head_layer = self.config.layers + 1
        if self.groups is None:
            return self.head, self.sums[head_layer]
        group = next(g for g, members in enumerate(self.groups) if client in members)
        return self.group_heads[group], self.group_sums[group]


def configure(config) -> PFedACnnLConfig:
    return PFedACnnLConfig(fedacnnl.configure(config), config.pfed_objective, config.pfed_groups, config.pfed_min_group,
                           config.pfed_validation, config.acnn_seed)


def validate(config) -> None:
    """Grouping discloses every client's histogram: refused under a secure protocol, and it needs enough clients."""
    if config.pfed_groups and config.protocol != "plaintext":
        raise ConfigError(f"--pfed-groups needs --protocol plaintext: grouping discloses every client's label "
                          f"histogram to the server, which {config.protocol} exists to prevent; use --pfed-groups 0")
    if config.pfed_groups and config.pfed_groups * config.pfed_min_group > config.clients:
        raise ConfigError(f"--pfed-groups {config.pfed_groups} of at least --pfed-min-group {config.pfed_min_group} "
                          f"clients need {config.pfed_groups * config.pfed_min_group} clients; --clients is "
                          f"{config.clients}")


def build(job: PFedACnnLConfig, data, max_samples: int, max_norm: float):
    clients = len(data.client_indices)
    server = PFedACnnLServer(job, data.num_classes, max_samples, clients)
    built = {k: PFedACnnLClient(data.train_x[idx], data.train_y[idx], data.num_classes, job.base, k, clients)
             for k, idx in enumerate(data.client_indices) if len(idx)}
    return server, built


def personalize(job: PFedACnnLConfig, server: PFedACnnLServer, clients: dict) -> dict[int, FedACnnLModel]:
    models = {}
    for k, client in clients.items():
        head, stats = server.group_of(k)
        models[k], server.choices[k] = client.personalize(job, server.layers, head,
                                                          stats if job.objective == "reweighted" else None)
    return models


def report(job: PFedACnnLConfig, server: PFedACnnLServer, clients: dict, features) -> dict:
    """FedACnnL's report, the groups, each client's chosen λ / α (null: λ = ∞, W_g itself) and what each client
    received to personalize."""
    base = fedacnnl.report(job.base, server, clients, features)
    head_layer = job.base.layers + 1
    received = server.head.nbytes if job.objective == "proximal" else (
        server.sums[head_layer].gram.nbytes + server.sums[head_layer].cross.nbytes)
    base["acnn"].update(objective=job.objective, groups=server.groups,
                        choices={str(k): None if np.isinf(v) else v for k, v in sorted(server.choices.items())},
                        personalization_download_bytes=int(received))
    return base


PFED_OPTIONS = ("pfed_objective", "pfed_groups", "pfed_min_group", "pfed_validation")
ALGORITHM = Algorithm(
    "pfedacnnl", configure, build, options=(*fedacnnl.ACNN_OPTIONS, *PFED_OPTIONS),
    rounds=lambda config: config.acnn_layers + 1 + (1 + config.pfed_groups if config.pfed_groups else 0),
    validate=validate, reference=lambda job, x, y, classes, max_norm: fedacnnl.reference(job.base, x, y, classes,
                                                                                          max_norm),
    personalize=personalize, report=report, model_type=FedACnnLModel, sample_rows=fedacnnl.sample_rows, inputs="pixels")
