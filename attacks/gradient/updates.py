"""Reading each client's model update out of a transcript, as a server that sees plaintext messages can.

A gradient baseline's round (layout ``weighted_parameters``) carries [n_k θ_k, n_k] from every
client: the weight n_k (how many samples the client trained on) is in the clear beside the
parameters, so θ_k = v[:-1] / n_k. The server broadcast θ itself (recorded with the round) and
recorded how every client trains (``local``: model, learning rate, local epochs and batch size,
all the job's public configuration). So the client's update gives its gradient:

- FedSGD (one full-batch step): g_k = (θ − θ_k) / lr, the gradient of the mean loss over the
  client's n_k samples, exactly (to float32 rounding);
- FedAvg (E epochs of minibatch steps): (θ − θ_k) / (lr · steps) is the mean of the steps'
  gradients, which the attacks treat as one gradient at θ over all n_k samples — the usual
  single-step approximation (the parameters move during local training, so it is not exact).

Under masking every message is uniformly random words and under HE a ciphertext: no update is
readable, only the sum, and the round is skipped with that reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from attacks.base import ServerView
from attacks.statistics.rounds import round_key, unreadable
from protocols.transcript import TranscriptRound
from secure_afl.algorithms import convnet, fedacnnl  # noqa: F401  (register the CNNs a layout may name)
from secure_afl.algorithms.fedavg import FedAvgConfig, build_head, load_vector


@dataclass(frozen=True)
class ClientUpdate:
    """One client's update in one round, turned into the gradient the attacks match."""

    entry: TranscriptRound
    client: int
    samples: int  # n_k, read off the message
    model: nn.Module  # the broadcast model the client started from (float32, eval mode)
    gradient: list[torch.Tensor]  # per parameter of ``model``, float32
    exact: bool  # True for one full-batch step (FedSGD); False when local steps are approximated by one
    local: dict  # the round's public description of local training


def local_steps(local: dict, samples: int) -> int:
    """SGD steps a client of ``samples`` samples took in one round (public: its configuration and n_k)."""
    per_epoch = 1 if local["full_batch"] else math.ceil(samples / local["batch"])
    return int(local["epochs"]) * per_epoch


def parameter_rounds(view: ServerView, rounds: dict[str, str], first_only: bool = True) -> Iterator[TranscriptRound]:
    """Rounds that carry weighted parameters and whose messages the server can read; every other round is
    noted in ``rounds`` with the reason it is skipped. ``first_only``: the first such round only (the one
    started from the public initialisation), later rounds noted as not attacked."""
    found = False
    for entry in view.rounds():
        layout = entry.spec.get("layout", {})
        if layout.get("kind") != "weighted_parameters" or "local" not in layout:
            rounds[round_key(entry)] = "carries no model parameters [n_k θ_k, n_k]"
            continue
        if entry.secure:
            rounds[round_key(entry)] = unreadable(entry, "update")
            continue
        if found and first_only:
            rounds[round_key(entry)] = "not attacked: only the first readable round is (the attack's scope)"
            continue
        found = True
        yield entry


def broadcast_model(local: dict, parameters: np.ndarray) -> nn.Module:
    """The model a round started from: the public architecture loaded with the broadcast parameters."""
    config = FedAvgConfig(head=local["model"], hidden=int(local["hidden"]), width=int(local["width"]),
                          architecture=local.get("architecture", {}))
    model = build_head(config, int(local["dim"]), int(local["classes"]))
    return load_vector(model, parameters).eval()


def chosen(ids, clients: int | tuple[int, ...] | None) -> list[int]:
    """The attack's scope among a round's client ids: all (None), the first ``clients`` by id, or those named."""
    ids = sorted(ids)
    if isinstance(clients, tuple):
        return [k for k in ids if k in clients]
    return ids[:clients]


def client_updates(entry: TranscriptRound, clients: int | tuple[int, ...] | None = None) -> Iterator[ClientUpdate]:
    """Every readable client's update of a round in the scope ``clients`` (see ``chosen``)."""
    local = entry.spec["layout"]["local"]
    theta = np.asarray(entry.broadcast["params"], dtype=np.float64)
    inputs = entry.inputs()
    for client in chosen(inputs, clients):
        vector = inputs[client]
        samples = float(vector[-1])
        if samples <= 0:
            continue
        model = broadcast_model(local, theta)
        steps = local_steps(local, int(round(samples)))
        flat = (theta - vector[:-1] / samples) / (float(local["lr"]) * steps)
        gradient = _split(model, flat)
        yield ClientUpdate(entry, client, int(round(samples)), model, gradient,
                           exact=steps == 1 and not local["dp"] and not local["mu"], local=local)


def _split(model: nn.Module, flat: np.ndarray) -> list[torch.Tensor]:
    """A flat vector in ``parameters_to_vector`` order as one tensor per parameter."""
    pieces, start = [], 0
    for parameter in model.parameters():
        count = parameter.numel()
        pieces.append(torch.as_tensor(flat[start : start + count], dtype=torch.float32).view_as(parameter))
        start += count
    return pieces


def last_linear(model: nn.Module) -> int:
    """Index (in ``parameters()`` order) of the bias of the model's last linear layer, whose gradient is
    mean(softmax − one-hot) over the batch."""
    names = [name for name, _ in model.named_parameters()]
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names.index(f"{linears[-1]}.bias" if linears[-1] else "bias")  # a bare nn.Linear is its own root
