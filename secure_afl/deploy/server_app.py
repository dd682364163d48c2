"""The ServerApp: the job's server over Flower, the in-process runner's rounds on the network.

Run config (``[tool.flwr.app.config]`` of the app, set by ``flwr run --run-config``): ``job`` (the job
file), ``roster`` (the operator's roster, for a secure protocol), ``out`` (a directory the server writes
``server.json``, ``model.npz`` (a model file, secure_afl/model.py), ``transcript/`` and, for an iterative
algorithm, ``history/`` to), ``stage-timeout`` and ``connect-timeout`` in seconds. The server waits for the job's clients to connect, asks each node which roster client it is,
then runs ``secure_afl.runner.run_rounds`` with an exchange that carries each round over the network
(``rounds.py``), streaming the same transcript the in-process run writes. A personalizing algorithm (APFL)
ends with one more stage, ``personalize``: the global model out, each site's held-out evaluation back. It holds no client data: the
feature dimensions come from the nodes (public), the bounds from the job's public configuration.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from protocols import MalformedMessageError, ProtocolError, Roster, RoundResult
from protocols.files import write_atomically
from protocols.transcript import TranscriptWriter
from secure_afl.algorithms.base import RoundSpec
from secure_afl.algorithms.registry import algorithm
from secure_afl.deploy.messages import ModelBroadcast, NodeHello, PersonalEvaluation
from secure_afl.deploy.rounds import Stages, he_round, masked_round, plaintext_round
from secure_afl.deploy.site import check_deployable, read_job
from secure_afl.errors import ConfigError
from secure_afl.model import Model
from secure_afl.runner import Timer, plan_run, public_knowledge, run_rounds, site_algorithm, training_seconds

log = logging.getLogger(__name__)
REPORT, MODEL, TRANSCRIPT, HISTORY = "server.json", "model.npz", "transcript", "history"
ROUNDS = {"plaintext": plaintext_round, "mask": masked_round, "he-bfv": he_round, "he-ckks": he_round}  # every protocol
# without a leak (protocols/base.py; tests/test_deploy_parts.py holds them equal)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = context.run_config
    out = Path(str(settings["out"]))
    report: dict = {"status": "running"}
    try:
        run_job(grid, settings, out, report)
    except Exception as exc:
        report.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        raise
    finally:
        write_atomically(out / REPORT, lambda f: json.dump(report, f, indent=1))


def run_job(grid: Grid, settings, out: Path, report: dict) -> None:
    config = read_job(str(settings["job"]))
    check_deployable(config)
    roster = None if config.protocol == "plaintext" else Roster.load(str(settings["roster"]))
    plan = plan_run(config, record=True, roster=roster)
    timer = Timer()
    stage_timeout = float(settings["stage-timeout"])
    nodes, dims, hello = introductions(grid, config.clients, float(settings["connect-timeout"]))
    report.update(nodes={str(c): node for c, node in sorted(nodes.items())}, hello=hello.summary(),
                  stage_timeout_s=stage_timeout)
    stages = Stages(grid, nodes, stage_timeout)
    ids = sorted(nodes)
    server, _ = site_algorithm(config, config.clients, dims["feature_dim"], plan.dataset.num_classes, len(plan.train_y))
    round_over_network = ROUNDS[config.protocol]

    def exchange(spec: RoundSpec, asked: list[int]) -> RoundResult:
        with timer.phase("aggregation"):
            return round_over_network(stages, plan.protocol, spec, asked)

    def model(predictor) -> Model:
        return Model(predictor, config, dims["backbone_dim"], plan.dataset.num_classes)

    history = History(out / HISTORY, model, timer) if algorithm(config.algorithm).history else None
    writer = TranscriptWriter(out / TRANSCRIPT, public_knowledge(plan, dims["backbone_dim"], dims["feature_dim"]))
    try:
        with timer.phase("rounds"):
            report["bytes"] = run_rounds(server, ids, exchange, plan.protocol.name, timer, history, writer)
        if algorithm(config.algorithm).personalize is not None:
            with timer.phase("personalization"):
                report["personalized"] = personalize(stages, server.model(), ids, writer)
    except BaseException:
        report["stages"] = [r.summary() | {"stage": r.stage} for r in stages.reports]
        writer.abort()
        raise
    writer.close()
    report["stages"] = [r.summary() | {"stage": r.stage} for r in stages.reports]
    model(server.model()).save(out / MODEL)
    if history is not None:
        report["history"] = history.rows
    report.update(status="done", timings_s=timer.seconds)


class History:
    """An iterative algorithm's model after every round, saved for the operator to evaluate (the server holds no test
    data), with the round's clients and the training time so far (``runner.History`` in one process)."""

    def __init__(self, directory: Path, model, timer: Timer):
        self.directory, self.model, self.timer = directory, model, timer
        self.rows: list[dict] = []
        directory.mkdir()

    def __call__(self, spec: RoundSpec, server) -> None:
        round_ = len(self.rows) + 1
        self.model(server.model()).save(self.directory / f"{round_}.npz")
        self.rows.append({"round": round_, "clients": len(spec.participants or ()),
                          "train_seconds": training_seconds(self.timer.seconds)})


def personalize(stages: Stages, model, clients: list[int], writer: TranscriptWriter) -> dict[str, dict]:
    """The personalization stage of an algorithm whose clients keep a model of their own (APFL): the global model to
    every client of the job (in one process every client personalizes, also one that dropped out of a round), and
    back from each only what the in-process results hold per client: its held-out accuracy and row count, or that it
    withholds them (under DP). A site that does not answer, or answers with anything but its own evaluation, has no
    personalized accuracy in the results; the job (its model is final) does not fail for it. The server saw every
    reply, so the transcript keeps them (a disclosure: an in-process server receives none)."""
    meta, arrays = model.state()
    broadcast = ModelBroadcast(meta, arrays).to_bytes()
    replies = stages.exchange("personalize", dict.fromkeys(clients, (broadcast,)), "personalize")
    writer.write_disclosure("personalize", "each site's evaluation of its personalized model on its own held-out rows "
                            "(secure_afl.deploy.messages.PersonalEvaluation), sent once after the rounds", replies)
    evaluations = {}
    for c, data in sorted(replies.items()):
        try:
            evaluation = PersonalEvaluation.from_bytes(data)
        except MalformedMessageError as exc:
            log.warning("personalize: client %d's evaluation is refused: %s", c, exc)
            continue
        if evaluation.client != c:
            log.warning("personalize: client %d answered as client %d; refused", c, evaluation.client)
            continue
        evaluations[str(c)] = {"withheld": evaluation.withheld, "held_out": evaluation.held_out,
                               "accuracy": None if np.isnan(evaluation.accuracy) else evaluation.accuracy}
    return evaluations


def introductions(grid: Grid, clients: int, connect_timeout: float):
    """Wait for the job's nodes, then ask each which roster client it is: (client → node id, dims, the stage report).
    A node loads its rows now (the hello's deadline is the connect timeout: a cache miss extracts features).
    Refuses a federation whose nodes claim the same client twice or disagree on the public feature dimensions."""
    deadline = time.monotonic() + connect_timeout
    while len(node_ids := sorted(grid.get_node_ids())) < clients:
        if time.monotonic() > deadline:
            raise ConfigError(f"only {len(node_ids)} of the job's {clients} SuperNodes connected within "
                              f"{connect_timeout:.0f} s; start the missing sites or raise connect-timeout")
        time.sleep(0.2)
    stages = Stages(grid, {node: node for node in node_ids}, connect_timeout)
    replies = stages.exchange("hello", dict.fromkeys(node_ids, ()), "hello")
    nodes, dims = {}, set()
    for node, data in replies.items():
        hello = NodeHello.from_bytes(data)
        if hello.client in nodes:
            raise ProtocolError(f"nodes {nodes[hello.client]} and {node} both claim to be client {hello.client}")
        nodes[hello.client] = node
        dims.add((hello.backbone_dim, hello.feature_dim))
    if sorted(nodes) != list(range(clients)) or len(dims) != 1:
        raise ProtocolError(f"the nodes that answered are clients {sorted(nodes)} with feature dimensions {sorted(dims)}; "
                            f"the job needs clients 0..{clients - 1} with one feature dimension")
    backbone_dim, feature_dim = dims.pop()
    return nodes, {"backbone_dim": backbone_dim, "feature_dim": feature_dim}, stages.reports[0]
