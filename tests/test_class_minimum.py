"""The minimum-count rule: what a client withholds, that training stays exact on what was sent, and the
closed-form attacks it stops."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from attacks.suite import attack_run
from secure_afl.class_minimum import withhold_rare_classes
from secure_afl.cli import main
from secure_afl.config import RunConfig
from secure_afl.errors import ConfigError
from secure_afl.runner import plan_run

SMALL = RunConfig(protocol="plaintext", buffer_width=128, buffer_activation="tanh")


def test_a_client_keeps_exactly_the_classes_it_holds_m_samples_of():
    labels = np.array([0, 0, 0, 1, 1, 2, 0, 1, 2, 2])
    held = [np.array([0, 1, 2, 3, 4, 5]), np.array([6, 7, 8, 9])]
    kept = withhold_rare_classes(held, labels, 2)
    assert kept[0].tolist() == [0, 1, 2, 3, 4] and kept[1].tolist() == [8, 9]
    assert [k.tolist() for k in withhold_rare_classes(held, labels, 1)] == [h.tolist() for h in held]
    assert withhold_rare_classes(held, labels, 4)[0].size == 0
    with pytest.raises(ConfigError, match="at least 1"):
        withhold_rare_classes(held, labels, 0)


def test_the_rule_is_refused_where_it_does_not_apply_or_leaves_too_few_senders():
    with pytest.raises(ConfigError, match="min_class_count only apply to --algorithm afl / apfl / deepafl"):
        RunConfig(algorithm="fedavg", min_class_count=2).validate()
    with pytest.raises(ConfigError, match="clients with rows to send"):
        plan_run(RunConfig(protocol="mask", min_class_count=150))
    assert main(["run", "--protocol", "plaintext", "--min-class-count", "0", "--quiet"]) == 2


@pytest.fixture(scope="module")
def attacked():
    return {m: attack_run(["class-means", "singleton"], replace(SMALL, min_class_count=m))[0] for m in (1, 5)}


def test_the_model_is_centralized_ridge_on_the_rows_that_were_sent(attacked):
    metrics = attacked[5]["cases"]["honest"]["metrics"]
    withheld = metrics["min_class_count"]
    assert withheld["rows_withheld"] > 0 and withheld["clients_withholding"] > 0
    # the reference pools what clients used: the federated model still equals it
    assert metrics["max_rel_diff_to_centralized"] < 1e-9
    # on the default partition the rule costs little accuracy (rare classes are a few rows of each client)
    assert metrics["accuracy"] > attacked[1]["cases"]["honest"]["metrics"]["accuracy"] - 0.02


def test_singletons_and_small_class_means_are_no_longer_sent(attacked):
    before, after = (attacked[m]["attacks"] for m in (1, 5))
    assert before["singleton"]["metrics"]["recovered_fraction"] == 1.0
    assert after["singleton"]["metrics"]["targets"] == before["singleton"]["metrics"]["targets"] > 0
    assert after["singleton"]["metrics"]["recovered_fraction"] == 0.0
    # every class mean still recovered averages at least m = 5 of the client's samples
    recovered = [row for row in after["class-means"]["per_target"] if row["recovered"]]
    assert recovered and all(row["cell_size"] >= 5 for row in recovered)
    assert after["class-means"]["metrics"]["recovered_fraction"] < before["class-means"]["metrics"]["recovered_fraction"]
