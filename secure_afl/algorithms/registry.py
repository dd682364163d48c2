"""The algorithms a run can name, each declared in its own module (``Algorithm`` in algorithms/base.py).

Adding an algorithm is its module plus one line in ``_BUILT_IN``; the runner, the configuration's option
scopes and the CLI's choices all read this registry, never an algorithm's name.
"""

from __future__ import annotations

from secure_afl.algorithms import afl, apfl, convnet, deepafl, fedacnnl, fedavg, pfedacnnl
from secure_afl.algorithms.base import Algorithm
from secure_afl.errors import ConfigError

ALGORITHMS: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    """Make ``algorithm`` selectable by its name (refused if the name is taken)."""
    if algorithm.name in ALGORITHMS:
        raise ConfigError(f"an algorithm named {algorithm.name!r} is already registered")
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def algorithm_scopes() -> dict[str, tuple[str, ...]]:
    """Option → the algorithms it applies to, for every option some algorithm declares."""
    scopes: dict[str, tuple[str, ...]] = {}
    for entry in ALGORITHMS.values():
        for option in entry.options:
            scopes[option] = (*scopes.get(option, ()), entry.name)
    return scopes


_BUILT_IN = (afl.ALGORITHM, apfl.ALGORITHM, deepafl.ALGORITHM, fedavg.FEDAVG, fedavg.FEDPROX,
             convnet.FEDSGD_CNN, convnet.FEDAVG_CNN, fedacnnl.ALGORITHM,
             pfedacnnl.ALGORITHM)
for _entry in _BUILT_IN:
    register(_entry)
