"""The server's side of a deployed round: one push / pull of Flower messages per protocol stage.

``Stages.exchange`` pushes one message per client, then pulls replies until every client answered or the
stage's own deadline passed (Flower's ``send_and_receive`` sleeps 3 s between polls; we poll every 0.2 s:
each poll is a request the SuperLink serves while the nodes' processes wait for the CPU, and a stage lasts
seconds, since a SuperNode looks for new messages only every 3 s). A client that does not answer in time,
or whose ClientApp refused or crashed (an error reply), is a dropout at that stage, whatever the cause: a
dead machine, a hung process, a refusal. A node that left the federation (no longer among the SuperLink's
connected nodes: it signed off, or its heartbeats stopped) is counted out at once rather than at the
deadline. Replies are matched to clients by the message id we sent (an error made by the SuperLink comes
from node 1). The protocols' own server state machines then run unchanged: the masking server gets exactly the messages
that arrived, and its threshold decides whether the round completes (exactly) or fails cleanly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from protocols import RoundResult, broadcast_digest
from protocols.errors import ProtocolAbort, ProtocolError
from protocols.he.roles import HEServer
from protocols.he.session import HEOptions
from protocols.he.simulation import round_details
from protocols.masking.server import MaskingServer
from protocols.masking.session import STAGES, MaskingOptions
from protocols.minimum import require_min_clients
from protocols.plaintext import PlaintextInput
from secure_afl.algorithms.base import RoundSpec
from secure_afl.deploy.messages import RoundCall, round_terms
from secure_afl.deploy.transport import content, parts

log = logging.getLogger(__name__)
POLL_SECONDS = 0.2
PRESENCE_SECONDS = 1.0  # how often a stage asks the SuperLink which of its pending nodes are still connected


@dataclass
class StageReport:
    """What one stage of one round cost on the network: payload bytes each way per client, and its wall time."""

    stage: str
    round: str  # the round's name (the Flower messages' group id)
    sent: dict[int, int] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)  # client → why its ClientApp answered with an error
    seconds: float = 0.0

    def summary(self) -> dict:
        def stats(values):
            values = list(values)
            return {"max": max(values), "mean": float(np.mean(values))} if values else {"max": 0, "mean": 0.0}

        return {"round": self.round, "upload_bytes": stats(self.received.values()), "download_bytes": stats(self.sent.values()),
                "seconds": self.seconds, "answered": sorted(self.received),
                "errors": {str(c): reason for c, reason in sorted(self.errors.items())}}


class Stages:
    """Flower messages to and from the job's clients (roster id → Flower node id), with a deadline per stage."""

    def __init__(self, grid: Grid, nodes: dict[int, int], timeout: float):
        self.grid = grid
        self.nodes = nodes
        self.timeout = timeout
        self.reports: list[StageReport] = []

    def exchange(self, stage: str, requests: dict[int, tuple[bytes, ...]], group: str) -> dict[int, bytes]:
        """Each client's one reply to its request, for the clients that answered in time."""
        return {c: one for c, (one,) in self.exchange_parts(stage, requests, group).items()}

    def exchange_parts(self, stage: str, requests: dict[int, tuple[bytes, ...]], group: str) -> dict[int, list[bytes]]:
        """Each client's reply (its wire messages, in order) to its request, for the clients that answered in time."""
        report = StageReport(stage, group)
        self.reports.append(report)
        start = time.monotonic()
        clients = sorted(requests)
        messages = [Message(content(*requests[c]), dst_node_id=self.nodes[c], message_type=f"query.{stage}",
                            group_id=group) for c in clients]
        for c in clients:
            report.sent[c] = sum(len(part) for part in requests[c])
        ids = list(self.grid.push_messages(messages))
        pending = {message_id: c for message_id, c in zip(ids, clients) if message_id}
        replies: dict[int, list[bytes]] = {}
        deadline = start + self.timeout
        presence, gone = start + PRESENCE_SECONDS, set()
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                c = pending.pop(reply.metadata.reply_to_message_id, None)
                if c is None:
                    continue
                if reply.has_error():
                    report.errors[c] = reply.error.reason
                    log.warning("stage %s: client %d answered with an error: %s", stage, c, reply.error.reason)
                    continue
                replies[c] = parts(reply)
                report.received[c] = sum(len(part) for part in replies[c])
            for message_id, c in list(pending.items()):  # gone at the last check, and no reply since: a dropout
                if c in gone:
                    del pending[message_id]
                    report.errors[c] = "the node left the federation"
                    log.warning("stage %s: client %d's node left the federation", stage, c)
            if pending and time.monotonic() >= presence:
                presence = time.monotonic() + PRESENCE_SECONDS
                connected = set(self.grid.get_node_ids())
                gone = {c for c in pending.values() if self.nodes[c] not in connected}
            if pending:
                time.sleep(POLL_SECONDS)
        report.seconds = time.monotonic() - start
        if pending:
            log.warning("stage %s: clients %s did not answer within %.0f s", stage, sorted(pending.values()), self.timeout)
        return replies

    def costs(self, first: int) -> tuple[dict[int, int], dict[int, int], dict[str, dict]]:
        """Per-client upload and download bytes, and per-stage summaries, of the reports from index ``first`` on."""
        upload: dict[int, int] = {}
        download: dict[int, int] = {}
        for report in self.reports[first:]:
            for c, size in report.received.items():
                upload[c] = upload.get(c, 0) + size
            for c, size in report.sent.items():
                download[c] = download.get(c, 0) + size
        return upload, download, {r.stage: r.summary() for r in self.reports[first:]}


def plaintext_round(stages: Stages, protocol, spec: RoundSpec, asked: list[int]) -> RoundResult:
    """Every client sends its vector in the clear; the in-process plaintext protocol adds what arrived."""
    first = len(stages.reports)
    call = RoundCall.of(spec).to_bytes()
    replies = stages.exchange("plaintext", dict.fromkeys(asked, (call,)), spec.name)
    vectors = {}
    for c, data in replies.items():
        message = PlaintextInput.from_bytes(data)
        if message.sender != c or message.round_id != spec.name:
            raise ProtocolError(f"client {c} answered for client {message.sender} / round {message.round_id!r}")
        vectors[c] = message.values.copy()
    result = protocol.aggregate(spec.name, vectors, spec.bound, broadcast_digest=broadcast_digest(spec.broadcast))
    upload, download, summaries = stages.costs(first)
    dropped = sorted(set(asked) - set(vectors))
    details = {**result.details, "dropped": {"plaintext": dropped}, "stages": summaries}
    return RoundResult(result.total, {c: upload.get(c, 0) for c in asked}, {c: download.get(c, 0) for c in asked},
                       included=frozenset(vectors), details=details, view=result.view)


def masked_round(stages: Stages, protocol, spec: RoundSpec, asked: list[int]) -> RoundResult:
    """The masking protocol's five stages over the network; its server state machine decides everything else."""
    first = len(stages.reports)
    roster = protocol.roster
    minimum = MaskingOptions.from_roster(roster).min_clients
    require_min_clients(len(asked), minimum, "the round the server was asked to run")
    encoding, parameters = protocol.plan(len(asked), spec.bound)
    terms = round_terms(spec)
    server = MaskingServer(roster, terms, asked, spec.length, encoding, parameters)
    call = RoundCall.of(spec).to_bytes()
    missing: dict[str, set[int]] = {}  # stage → clients asked that did not answer

    def stage(name: str, requests: dict[int, tuple[bytes, ...]], receive) -> None:
        replies = stages.exchange(name, requests, spec.name)
        missing[name] = set(requests) - set(replies)
        for c in sorted(replies):
            receive(replies[c])

    stage("advertise", {c: (call, server.setup_message()) for c in asked}, server.receive_advert)
    key_list = server.key_list()
    stage("share", {c: (key_list,) for c in server.session.adverts}, server.receive_shares)
    stage("input", {c: (m,) for c, m in server.deliveries().items()}, server.receive_masked)
    stage("consistency", {c: (m,) for c, m in server.consistency_requests().items()}, server.receive_signature)
    stage("unmask", {c: (m,) for c, m in server.unmask_requests().items()}, server.receive_unmask)
    total = encoding.decode(server.finish())
    dropped = {name: frozenset(missing.get(name, ())) for name in STAGES}
    details, view = protocol.report(spec.name, asked, encoding, parameters, minimum, dropped, server, total)
    upload, download, details["stages"] = stages.costs(first)
    return RoundResult(total, {c: upload.get(c, 0) for c in asked}, {c: download.get(c, 0) for c in asked},
                       included=server.included, details=details, view=view)


def he_round(stages: Stages, protocol, spec: RoundSpec, asked: list[int]) -> RoundResult:
    """Homomorphic aggregation's three stages over the network: the key holder (a node: the server never holds the
    secret key) opens the round with its signed public context and a fresh nonce, every client encrypts under that
    context and signs, and the key holder sums the verified inputs itself and decrypts that sum once. The public
    context travels with every round: the server is the only channel from the key holder to the clients. A key
    holder that does not answer fails the round cleanly, before any sum exists."""
    first = len(stages.reports)
    roster = protocol.roster
    holder = roster.key_holder
    minimum = HEOptions.from_roster(roster).min_clients
    require_min_clients(len(asked), minimum, "the round the server was asked to run")
    encoding, plan = protocol.plan(len(asked), spec.bound)
    call = RoundCall.of(spec).to_bytes()

    def from_key_holder(stage: str, request: tuple[bytes, ...]) -> list[bytes]:
        reply = stages.exchange_parts(stage, {holder: request}, spec.name).get(holder)
        if reply is None:
            why = stages.reports[-1].errors.get(holder, "no answer within the stage's deadline")
            raise ProtocolAbort(f"round {spec.name!r}: the key holder {holder} dropped out at stage {stage} ({why}); "
                                "nobody else can decrypt, so the round fails and no client's vector is revealed")
        return reply

    server = HEServer(roster)
    context, opening = from_key_holder("open", (call,))
    server.receive_context(context)  # signed by the key holder, no secret key (refused otherwise)
    setup = server.setup(round_terms(spec), asked, spec.length,
                         server.receive_open(opening), encoding, plan)
    inputs = stages.exchange("encrypt", {c: (call, context, setup) for c in asked}, spec.name)
    for c in sorted(inputs):
        server.receive_input(inputs[c])
    (decrypted,) = from_key_holder("decrypt", (setup, *server.inputs()))
    words, included = server.receive_decrypted(decrypted)
    total = encoding.decode(words) if encoding else words.view(np.float64).copy()
    details = round_details(server, holder, minimum, encoding, plan, len(context))
    details["dropped"] = {"input": sorted(set(asked) - set(inputs))}
    view = protocol.view(spec.name, asked, included, set(asked) - set(inputs), server, total, details)
    upload, download, details["stages"] = stages.costs(first)
    return RoundResult(total, {c: upload.get(c, 0) for c in asked}, {c: download.get(c, 0) for c in asked},
                       included=included, details=details, view=view)
