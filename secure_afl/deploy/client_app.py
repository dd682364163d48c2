"""The ClientApp: a site's side of every stage, each run by its SuperNode in a fresh process.

Message types: ``query.hello`` (which client is this node), ``query.plaintext`` (the vector in the
clear), one per masking stage, ``query.<stage>``, homomorphic aggregation's ``query.open`` and
``query.decrypt`` (the key holder) and ``query.encrypt`` (every client), and a personalizing algorithm's
last stage, ``query.personalize`` (``_personal_evaluation``: APFL's personalized model stays at the site). The masking client's state
machine lives in the node's ``Context.state`` between stages as its own snapshot
(``MaskingClient.snapshot``, our wire format; it never leaves the node), and so does the key holder's
secret context and open rounds (``HEKeyHolder.snapshot``). A multi-round algorithm's client is rebuilt
for every round from the job, the site's rows and the calls of the rounds it answered (``_vector``).
A refusal raises: Flower returns it to the server as an error reply, which the server counts as a
dropout at that stage, and the aborted state is kept so the client answers nothing more in the round.

``crash-at=STAGE`` in a node's ``--node-config`` is a drill: when that stage's message arrives the
node's processes die mid-round: the SuperNode is terminated (it signs off from the SuperLink as it
exits, as a site shut down mid-round) and its whole process group (its SuperExec, this ClientApp) is
then killed. The server sees the node leave the federation and counts it out of the stage at once.
"""

from __future__ import annotations

import os
import secrets
import signal
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from protocols.errors import ProtocolAbort
from protocols.he.roles import HEClient, HEKeyHolder
from protocols.he.session import PublicSession
from protocols.masking.client import MaskingClient
from protocols.plaintext import PlaintextInput
from protocols.terms import broadcast_digest
from secure_afl.algorithms.base import RoundSpec
from secure_afl.deploy.messages import ModelBroadcast, NodeHello, PersonalEvaluation, RoundCall, round_terms
from secure_afl.deploy.site import Site, SiteData
from secure_afl.deploy.transport import content, parts

STATE = "secure_afl"  # the node's Context.state record holding the masking client's snapshot
MASKING = "masking"
KEY_HOLDER = "secure_afl_key_holder"  # the key holder's snapshot (its secret key): an array record, it is large
DATA, FACTS = "secure_afl_rows", "secure_afl_facts"  # the site's mapped rows, and its public facts
ROUNDS = "secure_afl_rounds"  # the call of every round this node answered, in order (``_vector``)
NOISE_KEY = "secure_afl_noise_key"  # the site's secret key for DP noise (``_noise_key``), 256 bits
NOISE_KEY_BYTES = 32
PERSONALIZED = "secure_afl_personalized"  # set once the site answered the personalization (once per job)
CRASH_GRACE_SECONDS = 3.0  # the drill's SuperNode signs off within this, then the rest of its group is killed

app = ClientApp()


def _site(msg: Message, ctx: Context) -> Site:
    stage = msg.metadata.message_type.partition(".")[2]
    if ctx.node_config.get("crash-at") == stage:
        group = os.getpgrp()  # the SuperNode's: it was started in a session of its own
        os.kill(group, signal.SIGTERM)
        time.sleep(CRASH_GRACE_SECONDS)
        os.killpg(group, signal.SIGKILL)
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
        local = {} if data.refine_x is None else {"refine_x": Array(data.refine_x)}
        ctx.state[DATA] = ArrayRecord({"x": Array(data.x), "y": Array(data.y), **local})
        ctx.state[FACTS] = ConfigRecord({"num_classes": data.num_classes, "train_size": data.train_size,
                                         "backbone_dim": data.backbone_dim})
        return data
    rows, facts = ctx.state.array_records[DATA], ctx.state.config_records[FACTS]
    return SiteData(rows["x"].numpy(), rows["y"].numpy(), int(facts["num_classes"]), int(facts["train_size"]),
                    int(facts["backbone_dim"]), rows["refine_x"].numpy() if "refine_x" in rows else None)


def _vector(site: Site, ctx: Context, data: bytes) -> tuple[RoundSpec, np.ndarray]:
    """The round the server calls, as this site accepts it, and the site's vector for it.

    A SuperNode answers every message in a fresh process, and an algorithm's client keeps state between rounds
    (DeepAFL's Φ_t and F_t). The one mechanism for every algorithm: the node keeps the call of every round it
    answered, in order (``ROUNDS``: each ``RoundCall`` in our wire format, never pickle; it never leaves the node),
    and rebuilds its client from the job and its rows, then replays those calls through ``contribute`` before it
    answers the new one. The algorithms stay untouched and the vector is exactly the in-process client's: that
    client saw the same specs in the same order. The cost is one more ``contribute`` per earlier round (quadratic
    in the rounds a site answers).

    What the site checks (protocols/terms.py): the job's first round it derives completely, name, length, bound and
    broadcast, and refuses any other call for it. A later round's bound and broadcast follow from sums only the
    server received, so the site takes them from the call as an in-process client takes them from its server
    (DeepAFL clips to a later round's bound instead of refusing); it refuses a round it already answered, more
    rounds than the job has, a round its client cannot answer (out of order), and a vector of another length.
    A repeat of the round answered last (the key holder's ``open`` and ``encrypt``) gets the same vector again."""
    call = RoundCall.from_bytes(data)
    answered = _answered(ctx)
    repeat = bool(answered) and answered[-1] == data
    earlier = answered[:-1] if repeat else answered
    server, client = site.algorithm(_rows(site, ctx), _noise_key(ctx))
    if not repeat:
        _check_call(site, server.next_round(), call, [RoundCall.from_bytes(d).name for d in earlier])
    for previous in earlier:
        client.contribute(RoundCall.from_bytes(previous).spec())
    spec = call.spec()
    vector = client.contribute(spec)
    if vector.shape != (call.length,):
        raise ProtocolAbort(f"client {site.client}: round {call.name!r} calls for {call.length} values, this site's "
                            f"client answers {vector.shape[0]}")
    if not repeat:
        ctx.state[ROUNDS] = ArrayRecord({str(i): Array(np.frombuffer(d, dtype=np.uint8))
                                         for i, d in enumerate([*earlier, data])})
    return spec, vector


def _noise_key(ctx: Context) -> bytes:
    """The site's secret key for DP noise (secure_afl/privacy.py): drawn from ``secrets`` on first use and kept in the
    node for the job, never sent. Every process of the site then draws the same noise for a round, so a repeated call
    gets the same release, not a second one, as from the in-process client. Drawn for every job, used only under DP."""
    record = ctx.state.config_records.get(NOISE_KEY)
    if record is None:
        ctx.state[NOISE_KEY] = record = ConfigRecord({"key": secrets.token_bytes(NOISE_KEY_BYTES)})
    return bytes(record["key"])


def _answered(ctx: Context) -> list[bytes]:
    """The calls of the rounds this node answered, in order."""
    record = ctx.state.array_records.get(ROUNDS)
    return [] if record is None else [record[str(i)].numpy().tobytes() for i in range(len(record))]


def _check_call(site: Site, first: RoundSpec | None, call: RoundCall, earlier: list[str]) -> None:
    """Refuse a call this site cannot accept as its next round (``_vector`` says which)."""
    if not earlier and first is not None and (first.participants is None or site.client in first.participants):
        if (first.name, first.length, first.bound, broadcast_digest(first.broadcast)) != (
                call.name, call.length, call.bound, broadcast_digest(call.broadcast)):
            raise ProtocolAbort(f"client {site.client}: the server called round {call.name!r} ({call.length} values, "
                                f"bound {call.bound!r}), not the round this site derives from the job")
        return
    rounds = site.rounds()
    if call.name in earlier or len(earlier) >= rounds:
        raise ProtocolAbort(f"client {site.client}: the server called round {call.name!r} after rounds {earlier}; the "
                            f"job has {rounds} rounds and this site answers each once")


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
    masking = MaskingClient(site.member(), vector, round_terms(spec), site.ledger())
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


@app.query("open")
def open_round(msg: Message, ctx: Context) -> Message:
    """The key holder opens a round it derived itself: its signed public context (its keys are made on the job's
    first round and kept in the node) and a fresh nonce for that round."""
    site = _site(msg, ctx)
    (call,) = parts(msg)
    spec, _ = _vector(site, ctx, call)
    member = site.member()
    snapshot = ctx.state.array_records.get(KEY_HOLDER)
    holder = HEKeyHolder(member) if snapshot is None else HEKeyHolder.restore(_bytes(snapshot), member)
    opening = holder.open_round(round_terms(spec))
    _keep_key_holder(ctx, holder)
    return _reply(msg, holder.public_context, opening)


@app.query("encrypt")
def encrypt(msg: Message, ctx: Context) -> Message:
    """A client checks the key holder's signed public context and the setup against its own round, then encrypts."""
    site = _site(msg, ctx)
    call, context, setup = parts(msg)
    spec, vector = _vector(site, ctx, call)
    member = site.member()
    client = HEClient(member, vector, round_terms(spec), PublicSession.load(context, member.roster), site.ledger())
    return _reply(msg, client.encrypt(setup))


@app.query("decrypt")
def decrypt(msg: Message, ctx: Context) -> Message:
    """The key holder sums the verified inputs itself and decrypts that sum once (the setup's nonce is spent)."""
    site = _site(msg, ctx)
    setup, *inputs = parts(msg)
    snapshot = ctx.state.array_records.get(KEY_HOLDER)
    if snapshot is None:
        raise ProtocolAbort(f"client {site.client}: asked to decrypt, but it opened no round (is it the key holder?)")
    holder = HEKeyHolder.restore(_bytes(snapshot), site.member())
    try:
        holder.begin(setup)
        for data in inputs:
            holder.add(data)
        return _reply(msg, holder.finish())
    finally:
        _keep_key_holder(ctx, holder)


@app.query("personalize")
def personalize(msg: Message, ctx: Context) -> Message:
    site = _site(msg, ctx)
    (data,) = parts(msg)
    return _reply(msg, _personal_evaluation(site, ctx, ModelBroadcast.from_bytes(data)).to_bytes())


def _personal_evaluation(site: Site, ctx: Context, broadcast: ModelBroadcast) -> PersonalEvaluation:
    """After the job's rounds: the site builds its personalized model from the global model and its own rows (APFL:
    the refinement stream on its local-map features, ``Algorithm.personalize_client``), evaluates it on its own
    held-out rows, and answers with that accuracy and the number of rows, exactly what the in-process results hold
    per client. The personalized model, its weights and the site's statistics never leave the site.

    What the site reveals, and the limits it keeps: two numbers that depend on its data, so it answers once per job
    (a server that sent crafted "global" models again and again could otherwise read its held-out rows through the
    accuracies), only after it answered every round of the job (the server cannot skip the protocol to probe) and
    only for a model of the job's shape. The accuracy still depends on whatever model the server sent: one number
    per job, not covered by secure aggregation. Under DP on the statistics the noise covers the rounds, not these
    numbers: the site then withholds both (``PersonalEvaluation.withheld``)."""
    from secure_afl.algorithms.registry import algorithm
    from secure_afl.deploy.site import statistics_dp

    if ctx.state.config_records.get(PERSONALIZED) is not None:
        raise ProtocolAbort(f"client {site.client}: the server asked for a second personalization; a site answers once")
    ctx.state[PERSONALIZED] = ConfigRecord({"done": True})
    config = site.job()
    entry = algorithm(config.algorithm)
    answered = [RoundCall.from_bytes(d).name for d in _answered(ctx)]
    if entry.personalize_client is None or len(answered) != entry.rounds(config):
        raise ProtocolAbort(f"client {site.client}: asked to personalize after rounds {answered} of a {config.algorithm} "
                            "job; a site personalizes once, after all its rounds, and only for an algorithm that does")
    if statistics_dp(config):
        return PersonalEvaluation(site.client, True, 0, float("nan"))
    data = _rows(site, ctx)
    _, client = site.algorithm(data, _noise_key(ctx))
    model = entry.model_type.from_state(broadcast.meta, broadcast.arrays)
    weights = getattr(model, "weights", None)
    if weights is None or weights.shape != (data.x.shape[1], data.num_classes) or not np.all(np.isfinite(weights)):
        raise ProtocolAbort(f"client {site.client}: the server's global model is not a finite "
                            f"{data.x.shape[1]} × {data.num_classes} model of this job")
    personal = entry.personalize_client(entry.configure(config), client, model)
    x, refine_x, labels = site.held_out()
    inputs = (x,) if refine_x is None else (x, refine_x)
    accuracy = personal.accuracy(*inputs, labels) if len(labels) else float("nan")
    return PersonalEvaluation(site.client, False, len(labels), accuracy)


def _keep_key_holder(ctx: Context, holder: HEKeyHolder) -> None:
    ctx.state[KEY_HOLDER] = ArrayRecord({"snapshot": Array(np.frombuffer(holder.snapshot(), dtype=np.uint8))})


def _bytes(record: ArrayRecord) -> bytes:
    return record["snapshot"].numpy().tobytes()
