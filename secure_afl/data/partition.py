"""Who holds which sample: train/test hold-out, client partitions, and per-client held-out splits.

Everything here is seeded and deterministic (numpy generators: these draws are public
experimental design, not secrets), and every sample ends up in exactly one place.
"""

from __future__ import annotations

import numpy as np

from secure_afl.errors import ConfigError

PARTITIONS = ("dirichlet", "iid", "shards")


def stratified_holdout(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, test), keeping class proportions where a class has ≥ 2 samples."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(members) * test_fraction)) if len(members) >= 2 else 0
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def partition(
    labels: np.ndarray,
    num_clients: int,
    scheme: str = "dirichlet",
    *,
    alpha: float = 0.1,
    shards_per_client: int = 2,
    min_size: int = 1,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split sample indices among clients; returns one sorted index array per client.

    ``dirichlet``: per class, proportions drawn from Dir(α); clients left below ``min_size`` are
    then topped up with random samples taken from the largest clients, which always terminates
    (unlike redrawing until lucky, which never does for α = 0.01 and many clients).
    ``iid``: a uniform random split. ``shards``: sort by label, cut into
    ``num_clients · shards_per_client`` shards and deal each client that many.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if num_clients < 1:
        raise ConfigError(f"the number of clients must be at least 1, got {num_clients}")
    if min_size < 1:
        raise ConfigError(f"min_size must be at least 1, got {min_size}")
    if num_clients * min_size > n:
        raise ConfigError(
            f"{n} samples cannot give {num_clients} clients at least {min_size} each; use fewer clients"
        )
    rng = np.random.default_rng(seed)
    if scheme == "dirichlet":
        if not alpha > 0:
            raise ConfigError(f"alpha must be positive, got {alpha}")
        parts = _dirichlet(labels, num_clients, alpha, rng)
    elif scheme == "iid":
        parts = [list(chunk) for chunk in np.array_split(rng.permutation(n), num_clients)]
    elif scheme == "shards":
        if shards_per_client < 1 or num_clients * shards_per_client > n:
            raise ConfigError(
                f"shards_per_client must be ≥ 1 with clients × shards ≤ {n} samples, got {shards_per_client}"
            )
        parts = _shards(labels, num_clients, shards_per_client, rng)
    else:
        raise ConfigError(f"unknown partition {scheme!r}; choose one of {', '.join(PARTITIONS)}")
    _top_up(parts, min_size, rng)
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def _dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator) -> list[list[int]]:
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
        for client, chunk in enumerate(np.split(members, cuts)):
            parts[client].extend(chunk.tolist())
    return parts


def _shards(labels: np.ndarray, num_clients: int, per_client: int, rng: np.random.Generator) -> list[list[int]]:
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, num_clients * per_client)
    dealt = rng.permutation(len(shards))
    return [
        np.concatenate([shards[s] for s in dealt[k * per_client : (k + 1) * per_client]]).tolist()
        for k in range(num_clients)
    ]


def _top_up(parts: list[list[int]], min_size: int, rng: np.random.Generator) -> None:
    """Move random samples from the largest clients to clients below ``min_size``, in place."""
    for needy in range(len(parts)):
        while len(parts[needy]) < min_size:
            donor = max(range(len(parts)), key=lambda k: len(parts[k]))
            taken = parts[donor].pop(int(rng.integers(len(parts[donor]))))
            parts[needy].append(taken)


def allocate_held_out(
    client_parts: list[np.ndarray],
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    seed: int = 0,
) -> list[np.ndarray]:
    """Give each client a disjoint held-out split of the test set with its own label distribution.

    For every class, the test samples of that class are dealt to clients in proportion to how many
    training samples of the class each client holds (largest-remainder rounding), so a client's
    held-out split mirrors its training split. Test samples of a class that no client trains on
    are left unassigned (no client would evaluate on them under its own distribution).
    """
    rng = np.random.default_rng(seed)
    held: list[list[int]] = [[] for _ in client_parts]
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    counts = np.stack([np.bincount(train_labels[p], minlength=num_classes) for p in client_parts])
    for cls in np.unique(test_labels):
        weights = counts[:, cls].astype(np.float64)
        if weights.sum() == 0:
            continue
        members = rng.permutation(np.flatnonzero(test_labels == cls))
        quota = weights / weights.sum() * len(members)
        sizes = np.floor(quota).astype(np.int64)
        remainder = len(members) - sizes.sum()
        sizes[np.argsort(-(quota - sizes), kind="stable")[:remainder]] += 1
        for client, chunk in enumerate(np.split(members, np.cumsum(sizes)[:-1])):
            held[client].extend(chunk.tolist())
    return [np.sort(np.asarray(h, dtype=np.int64)) for h in held]
