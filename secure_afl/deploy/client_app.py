"""The ClientApp: a site's side of every stage, each run by its SuperNode in a fresh process.

Message types: ``query.hello`` (which client is this node), ``query.plaintext`` (the vector in the
clear), and one per masking stage, ``query.<stage>``. The masking client's state machine lives in
the node's ``Context.state`` between stages as its own snapshot (``MaskingClient.snapshot``, our wire
format; it never leaves the node). A refusal raises: Flower returns it to the server as an error reply,
which the server counts as a dropout at that stage, and the aborted state is kept so the client
answers nothing more in the round.

``crash-at=STAGE`` in a node's ``--node-config`` is a drill: when that stage's message arrives the
node's whole process group (SuperNode, its SuperExec, this ClientApp) is killed, as a machine that
fails mid-round.
"""

from __future__ import annotations

import os
import signal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from protocols.errors import ProtocolAbort
from protocols.masking.client import MaskingClient
from protocols.plaintext import PlaintextInput
from protocols.terms import RoundTerms, broadcast_digest
from secure_afl.algorithms.base import RoundSpec
from secure_afl.deploy.messages import NodeHello, RoundCall
from secure_afl.deploy.site import Site, SiteData
from secure_afl.deploy.transport import content, parts

STATE = "secure_afl"  # the node's Context.state record holding the masking client's snapshot
MASKING = "masking"
DATA, FACTS = "secure_afl_rows", "secure_afl_facts"  # the site's mapped rows, and its public facts

app = ClientApp()


def _site(msg: Message, ctx: Context) -> Site:
    stage = msg.metadata.message_type.partition(".")[2]
    if ctx.node_config.get("crash-at") == stage:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    return Site.from_node_config(ctx.node_config)


def _reply(msg: Message, *wire: bytes) -> Message:
    return Message(content(*wire), reply_to=msg)


@app.query("hello")
def hello(msg: Message, ctx: Context) -> Message:
    """The node's first message of a job: its rows are loaded and mapped once, kept in the node's state."""
    site = _site(msg, ctx)
    data = _rows(site, ctx)
    return _reply(msg, NodeHello(site.client, data.backbone_dim, data.x.shape[1]).to_bytes())


def _rows(site: Site, ctx: Context) -> SiteData:
    """The site's rows from the node's state, loaded (``Site.features``) and kept there the first time."""
    if DATA not in ctx.state:
        data = site.features()
        ctx.state[DATA] = ArrayRecord({"x": Array(data.x), "y": Array(data.y)})
        ctx.state[FACTS] = ConfigRecord({"num_classes": data.num_classes, "train_size": data.train_size,
                                         "backbone_dim": data.backbone_dim})
        return data
    rows, facts = ctx.state.array_records[DATA], ctx.state.config_records[FACTS]
    return SiteData(rows["x"].numpy(), rows["y"].numpy(), int(facts["num_classes"]), int(facts["train_size"]),
                    int(facts["backbone_dim"]))


def _vector(site: Site, ctx: Context, call: bytes) -> tuple[RoundSpec, np.ndarray]:
    """The round as this site derives it from the job, refused unless the server's call names exactly that round
    (protocols/terms.py: a client never takes a round's name, bound or broadcast from the server alone), and the
    site's vector for it. An AFL site derives its one round completely."""
    call = RoundCall.from_bytes(call)
    server, client = site.algorithm(_rows(site, ctx))
    own = server.next_round()
    if own is None or (own.name, own.length, own.bound, broadcast_digest(own.broadcast)) != (
            call.name, call.length, call.bound, broadcast_digest(call.broadcast)):
        raise ProtocolAbort(f"client {site.client}: the server called round {call.name!r} ({call.length} values, bound "
                            f"{call.bound!r}), not the round this site derives from the job")
    return own, client.contribute(own)


@app.query("plaintext")
def plaintext(msg: Message, ctx: Context) -> Message:
    site = _site(msg, ctx)
    (call,) = parts(msg)
    spec, vector = _vector(site, ctx, call)
    return _reply(msg, PlaintextInput(spec.name, site.client, vector).to_bytes())


@app.query("advertise")
def advertise(msg: Message, ctx: Context) -> Message:
    """The round opens: the client checks the call against the round it derives, then answers the setup."""
    site = _site(msg, ctx)
    call, setup = parts(msg)
    spec, vector = _vector(site, ctx, call)
    terms = RoundTerms(spec.name, spec.bound, broadcast_digest(spec.broadcast))
    masking = MaskingClient(site.member(), vector, terms, site.ledger())
    return _step(msg, ctx, masking, masking.advertise, setup)


def _stage(method):
    def handle(msg: Message, ctx: Context) -> Message:
        site = _site(msg, ctx)
        (request,) = parts(msg)
        snapshot = ctx.state.config_records.get(STATE)
        if snapshot is None:
            raise RuntimeError(f"client {site.client}: a {msg.metadata.message_type} request before any round opened")
        masking = MaskingClient.restore(snapshot[MASKING], site.member(), site.ledger())
        return _step(msg, ctx, masking, getattr(masking, method), request)

    return handle


def _step(msg: Message, ctx: Context, masking: MaskingClient, step, request: bytes) -> Message:
    """One stage; the client's state (aborted, after a refusal) is kept in the node either way."""
    try:
        reply = step(request)
    finally:
        ctx.state[STATE] = ConfigRecord({MASKING: masking.snapshot()})
    return _reply(msg, reply)


for _name, _method in (("share", "share_keys"), ("input", "masked_input"), ("consistency", "sign_consistency"),
                       ("unmask", "unmask")):
    app.query(_name)(_stage(_method))
