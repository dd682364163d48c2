"""``secure-afl``: the command line. Every expected failure becomes one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from dataclasses import fields
from importlib import metadata
from pathlib import Path

import numpy as np
from protocols import PROTOCOLS, ProtocolError
from protocols.masking import STAGES
from secure_afl.algorithms.convnet import CNNS
from secure_afl.algorithms.fedacnnl import ENCODINGS
from secure_afl.algorithms.pfedacnnl import OBJECTIVES
from secure_afl.algorithms.fedavg import ACCOUNTANTS, DEFAULT_LR, HEADS
from secure_afl.algorithms.registry import ALGORITHMS
from secure_afl.config import RunConfig
from secure_afl.data.datasets import DATASETS
from secure_afl.data.partition import PARTITIONS
from secure_afl.errors import ConfigError, SecureAFLError
from secure_afl.features.buffer import ACTIVATIONS
from secure_afl.features.extract import PRECISIONS
from secure_afl.features.feature_map import ROW_NORMS
from secure_afl.privacy import PLACEMENTS, SOLVES

EXIT_USAGE = 2
PREDICTIONS_SCHEMA = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a job stopped by Ctrl-C
LOGGERS = ("secure_afl", "protocols", "attacks")


class _Parser(argparse.ArgumentParser):
    """A usage error is one line and a pointer to the help, not the whole usage text."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"secure-afl: error: {message}\n(see {self.prog} --help)\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults only where they say something: not for flags (``--no-cache`` is not "default: True"), not
    for options without a fixed default (None, empty) and not where the help already explains it."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if (action.nargs == 0 or action.default in (None, [], argparse.SUPPRESS) or "default" in help_text
                or not action.option_strings):
            return help_text
        return f"{help_text} (default: %(default)s)"


def _run_options(p: argparse.ArgumentParser) -> None:
    """Every option of a run; ``attack`` takes them too, to build the case it attacks."""
    defaults = RunConfig()
    p.add_argument("--algorithm", choices=tuple(ALGORITHMS), default=defaults.algorithm, help="the federated algorithm")
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default=defaults.protocol,
                   help="mask: pairwise masking (SecAgg/SecAgg+); he-bfv / he-ckks: exact homomorphic sums; "
                        "he-ckks-approx: approximate; plaintext: the server sees every client's statistics")
    secure = p.add_argument_group("secure protocols (mask, he-bfv, he-ckks, he-ckks-approx)")
    secure.add_argument("--min-clients", type=int, default=None, metavar="M",
                        help="the fewest clients whose inputs one sum may hold; every client and the HE key holder "
                             "refuse smaller rounds, so a server cannot isolate a client among a few colluders "
                             "(default ⌊2P/3⌋+1 of the P clients asked per round; at most P - M clients may drop out "
                             "over a whole job)")
    secure.add_argument("--dropout", action="append", type=_dropout, default=[], metavar="STAGE=FRACTION",
                        help=f"simulate clients dropping at a stage (mask: {', '.join(STAGES)}; he-*: input, where "
                             "the key holder dropping fails the round); repeatable")
    masking = p.add_argument_group("masking protocol")
    masking.add_argument("--threshold", type=int, default=None,
                         help="shares needed to unmask (default ⌊2(k+1)/3⌋+1 for k neighbours)")
    masking.add_argument("--neighbours", type=int, default=None,
                         help="neighbours per client: n-1 is the complete graph, an even k < n-1 a k-regular graph "
                              "(default: the smallest k meeting the security and failure targets under the assumed "
                              "corrupt and dropout fractions below; the complete graph, with a warning, when none does)")
    masking.add_argument("--corrupt-fraction", type=float, default=defaults.corrupt_fraction,
                         help="assumed chance that a client colludes with the server, for choosing k and t")
    masking.add_argument("--dropout-fraction", type=float, default=defaults.dropout_fraction,
                         help="assumed chance that a client drops during a round, for choosing k and t")
    masking.add_argument("--security-bits", type=int, default=defaults.security_bits,
                         help="target: P[some client's input is exposed] ≤ 2^-BITS under the assumptions")
    masking.add_argument("--failure-bits", type=int, default=defaults.failure_bits,
                         help="target: P[a round cannot be unmasked] ≤ 2^-BITS under the assumptions")
    masking.add_argument("--fraction-bits", type=int, default=None,
                         help="fixed-point precision, mask and he-bfv/he-ckks (default: the largest the protocol's range allows)")
    he = p.add_argument_group("homomorphic protocols (he-bfv, he-ckks exact; he-ckks-approx approximate)")
    he.add_argument("--limbs", type=int, default=None,
                    help="limbs per value (default 1 for he-bfv, 2 for he-ckks); more limbs carry more fraction bits")
    he.add_argument("--key-holder", type=int, default=None,
                    help="the client that creates and holds the secret key (default: the lowest id)")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=defaults.dataset, help=f"one of {', '.join(DATASETS)}")
    data.add_argument("--data-dir", default=None, help="root of an on-disk dataset (cifar10, cifar100, imagefolder)")
    data.add_argument("--download", action="store_true", help="let torchvision download CIFAR (needs internet)")
    data.add_argument("--clients", type=int, default=defaults.clients, help="K, the clients of the federation")
    data.add_argument("--partition", choices=PARTITIONS, default=defaults.partition, help="how samples go to clients")
    data.add_argument("--alpha", type=float, default=defaults.alpha, help="--partition dirichlet: concentration")
    data.add_argument("--shards-per-client", type=int, default=defaults.shards_per_client, help="--partition shards")
    data.add_argument("--min-client-size", type=int, default=defaults.min_client_size, help="fewest samples per client")
    data.add_argument("--min-class-count", type=int, default=defaults.min_class_count, metavar="M",
                      help="defence (afl, apfl, deepafl): each client withholds every class it holds fewer than M "
                           "samples of, so no class mean it sends averages fewer than M rows (1: send everything)")
    data.add_argument("--seed", type=int, default=defaults.seed, help="seed of the partition and the simulation")
    feats = p.add_argument_group("features")
    feats.add_argument("--backbone", default=defaults.backbone, help="efficientnet_lite0 (shipped weights) or a timm name")
    feats.add_argument("--weights", default=None, help="local weights file for the backbone")
    feats.add_argument("--random-weights", action="store_true", help="use an untrained backbone on purpose")
    feats.add_argument("--resolution", type=int, default=defaults.resolution, help="backbone input size in pixels")
    feats.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per backbone batch")
    feats.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    feats.add_argument("--precision", choices=tuple(PRECISIONS), default=defaults.precision,
                       help="backbone autocast on CUDA (the CPU always runs fp32)")
    feats.add_argument("--cache-dir", default=None, help="feature cache (default $SECURE_AFL_CACHE or ~/.cache/secure_afl)")
    feats.add_argument("--no-cache", dest="use_cache", action="store_false",
                       help="always extract features; neither read nor write the cache")
    feats.add_argument("--buffer-width", type=int, default=defaults.buffer_width, help="0 disables the random buffer")
    feats.add_argument("--buffer-activation", choices=tuple(ACTIVATIONS), default=defaults.buffer_activation,
                       help="activation of the random buffer")
    feats.add_argument("--buffer-seed", type=int, default=defaults.buffer_seed, help="public seed of the random buffer")
    feats.add_argument("--buffer-bias", action="store_true", help="give the random buffer a bias")
    feats.add_argument("--feature-norm", choices=ROW_NORMS, default=defaults.feature_norm,
                       help="public row normalisation of the features")
    feats.add_argument("--max-norm", type=float, default=defaults.max_norm, help="public bound on feature row norms")
    apfl = p.add_argument_group("APFL (--algorithm apfl)")
    apfl.add_argument("--refine-width", type=int, default=defaults.refine_width, help="refinement-stream buffer width")
    apfl.add_argument("--refine-activation", choices=tuple(ACTIVATIONS), default=defaults.refine_activation,
                      help="refinement-stream activation")
    apfl.add_argument("--refine-seed", type=int, default=defaults.refine_seed, help="public seed of the refinement buffer")
    apfl.add_argument("--lam", type=float, default=defaults.lam, help="ridge λ of the refinement stream")
    apfl.add_argument("--beta", type=float, default=defaults.beta, help="weight β of the refinement stream, in [0, 1]")
    deep = p.add_argument_group("DeepAFL (--algorithm deepafl)")
    deep.add_argument("--depth", type=int, default=defaults.depth, help="T residual blocks: 2T+1 aggregation rounds")
    deep.add_argument("--deep-width", type=int, default=defaults.deep_width,
                      help="d_Φ of the random expansion Φ_0 = σ(sXA); 0: Φ_0 = sX, the features themselves")
    deep.add_argument("--residual-width", type=int, default=defaults.residual_width, help="d_F")
    deep.add_argument("--deep-lam", type=float, default=defaults.deep_lam, help="λ of the classifier solves")
    deep.add_argument("--deep-gamma", type=float, default=defaults.deep_gamma, help="γ of the sandwiched solves")
    deep.add_argument("--deep-activation", choices=tuple(ACTIVATIONS), default=defaults.deep_activation,
                      help="activation σ of the expansion and the blocks")
    deep.add_argument("--deep-seed", type=int, default=defaults.deep_seed, help="public seed of A and the B_t")
    grad = p.add_argument_group("gradient baselines (--algorithm fedavg | fedprox on features; fedsgd-cnn | fedavg-cnn: "
                                "a CNN on 32 px pixels)")
    grad.add_argument("--rounds", type=int, default=defaults.rounds, help="communication rounds")
    grad.add_argument("--local-epochs", type=int, default=defaults.local_epochs, help="epochs per client and round")
    grad.add_argument("--lr", type=float, default=defaults.lr,
                      help="local learning rate (default per head, chosen on validation: "
                           + ", ".join(f"{head} {lr:g}" for head, lr in DEFAULT_LR.items()) + ")")
    grad.add_argument("--local-batch", type=int, default=defaults.local_batch, help="local minibatch size")
    grad.add_argument("--client-fraction", type=float, default=defaults.client_fraction, help="clients sampled per round")
    grad.add_argument("--mu", type=float, default=defaults.mu, help="FedProx proximal weight")
    grad.add_argument("--head", choices=HEADS, default=defaults.head, help="the model trained on the features")
    grad.add_argument("--hidden", type=int, default=defaults.hidden, help="MLP head width")
    grad.add_argument("--cnn", choices=CNNS, default=defaults.cnn,
                      help="fedsgd-cnn / fedavg-cnn: breaching's ConvNet (ReLU), the DLG paper's LeNet (sigmoid) or "
                           "FedACnnL's network trained end to end (acnn: --acnn-layers, --acnn-channels, --acnn-slope)")
    grad.add_argument("--cnn-width", type=int, default=defaults.cnn_width, help="the ConvNet's width (breaching's is 64)")
    grad.add_argument("--param-bound", type=float, default=defaults.param_bound,
                      help="public box |θ_i| ≤ bound on what a client sends (the protocols' declared bound)")
    acnn = p.add_argument_group("FedACnnL / pFedACnnL (--algorithm fedacnnl | pfedacnnl: a CNN on 32 px pixels, "
                                "trained layer by layer in closed form)")
    acnn.add_argument("--acnn-layers", type=int, default=defaults.acnn_layers, help="L convolutions (L + 1 rounds)")
    acnn.add_argument("--acnn-channels", type=int, default=defaults.acnn_channels, help="channels of every convolution")
    acnn.add_argument("--acnn-slope", type=float, default=defaults.acnn_slope, help="negative slope of the leaky ReLU")
    acnn.add_argument("--acnn-clip", type=float, default=defaults.acnn_clip,
                      help="encoded labels are clipped to ±CLIP before the inverse activation")
    acnn.add_argument("--acnn-encoding", choices=ENCODINGS, default=defaults.acnn_encoding,
                      help="the public label-encoding matrices E_l")
    acnn.add_argument("--acnn-seed", type=int, default=defaults.acnn_seed, help="public seed of the E_l")
    acnn.add_argument("--acnn-gamma", type=float, default=defaults.acnn_gamma,
                      help="ridge γ of the convolutions' solves (the head uses --gamma)")
    acnn.add_argument("--acnn-batch", type=int, default=defaults.acnn_batch,
                      help="images per mini-batch a client accumulates over (the result does not depend on it)")
    acnn.add_argument("--pfed-objective", choices=OBJECTIVES, default=defaults.pfed_objective,
                      help="pfedacnnl: each client's head, (G_k+λI)⁻¹(H_k+λW_g) or (G_g+(α−1)G_k+γI)⁻¹(H_g+(α−1)H_k), "
                           "λ / α chosen on its own validation split")
    acnn.add_argument("--pfed-groups", type=int, default=defaults.pfed_groups,
                      help="pfedacnnl: cluster clients by label histogram into this many groups (plaintext only: the "
                           "histograms are disclosed); 0: no grouping")
    acnn.add_argument("--pfed-min-group", type=int, default=defaults.pfed_min_group,
                      help="pfedacnnl: the fewest clients a group's round may hold")
    acnn.add_argument("--pfed-validation", type=float, default=defaults.pfed_validation,
                      help="pfedacnnl: fraction of a client's images it chooses λ / α on")
    dp = p.add_argument_group("differential privacy (DP-SGD for fedavg / fedprox; DP on the statistics for afl / apfl / deepafl)")
    dp.add_argument("--dp-epsilon", type=float, default=None, help="target ε for the whole run")
    dp.add_argument("--dp-noise", type=float, default=None, help="the noise multiplier z instead of a target ε")
    dp.add_argument("--dp-delta", type=float, default=defaults.dp_delta, help="δ of the (ε, δ) guarantee")
    dp.add_argument("--dp-placement", choices=PLACEMENTS, default=None,
                    help="afl / apfl / deepafl: local (each client adds the full σ: private even in plaintext) or distributed "
                         "(each adds σ/√t, t = --min-clients: any sum the secure protocol opens has σ) (default local)")
    dp.add_argument("--dp-solve", choices=SOLVES, default=defaults.dp_solve,
                    help="afl / apfl / deepafl: the server's solve of the noisy Gram: eigenvalues clipped to the noise floor, or "
                         "AdaSSP's ridge")
    dp.add_argument("--dp-row-rms", type=float, default=defaults.dp_row_rms,
                    help="deepafl: public clip of every layer's rows Φ_t, F_t, in RMS per coordinate (norm rms·√width)")
    dp.add_argument("--dp-residual-clip", type=float, default=defaults.dp_residual_clip,
                    help="deepafl: public clip norm of the residual targets Y − Φ_t W_t")
    dp.add_argument("--dp-clip", type=float, default=defaults.dp_clip,
                    help="DP-SGD per-sample gradient norm bound (the statistics' clip norm is --max-norm)")
    dp.add_argument("--dp-accountant", choices=ACCOUNTANTS, default=defaults.dp_accountant, help="DP-SGD's accountant")
    solve = p.add_argument_group("solve")
    solve.add_argument("--gamma", type=float, default=defaults.gamma, help="ridge regularisation, added once")
    solve.add_argument("--restore", action="store_true", help="plain least squares (the paper's restored result)")


def _run_parser(sub) -> None:
    p = sub.add_parser("run", help="simulate a federation and write its results JSON",
                       formatter_class=_HelpFormatter)
    _run_options(p)
    out = p.add_argument_group("output")
    out.add_argument("--out", default=None, help="results JSON path")
    out.add_argument("--overwrite", action="store_true", help="replace an existing results file (and transcript)")
    out.add_argument("--transcript", default=None, metavar="DIR",
                     help="write the server's view of every round to this directory (manifest.json + arrays; "
                          "the input of `secure-afl attack --transcript`)")
    out.add_argument("--save-model", default=None, metavar="PATH",
                     help="write the trained (global) model here: one .npz with a JSON manifest, no pickle; "
                          "the input of `secure-afl predict --model`")
    out.add_argument("--no-centralized-reference", dest="centralized_reference", action="store_false",
                     help="do not also train centrally on the pooled data (it doubles DeepAFL's time): the results "
                          "then carry no centralized accuracy and no gap to it")
    out.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    out.add_argument("-v", "--verbose", action="store_true", help="log each phase as it starts (INFO)")


def _deploy_parser(sub) -> None:
    p = sub.add_parser("deploy", help="run a job over Flower: a SuperLink and one SuperNode per client, as processes",
                       formatter_class=_HelpFormatter)
    where = p.add_subparsers(dest="where", required=True)
    local = where.add_parser("local", help="a SuperLink and --nodes SuperNodes on this machine (loopback)",
                             formatter_class=_HelpFormatter,
                             description="Starts a Flower SuperLink and one SuperNode per client as separate processes "
                                         "on 127.0.0.1, runs the job through them (needs `pip install "
                                         "'secure-afl[deploy]'`), writes the same results JSON as `secure-afl run` "
                                         "plus per-stage bytes and latencies, and stops every process it started.")
    issue = where.add_parser("issue", help="write a multi-machine job's files: job.json, the roster, one identity per site",
                             formatter_class=_HelpFormatter,
                             description="The operator's files of a job (see the README's Deployment section): give "
                                         "job.json to the server and every site, roster.json and sites/K/ to site K "
                                         "(its identity is private), out of band. Prints each site's --node-config.")
    issue.add_argument("--dir", required=True, help="an empty or new directory for the files")
    _run_options(issue)
    issue.add_argument("--quiet", action="store_true", help="print nothing")
    issue.add_argument("-v", "--verbose", action="store_true", help="log each phase as it starts (INFO)")
    local.add_argument("--nodes", type=int, required=True, help="SuperNodes, one per client (sets --clients)")
    _run_options(local)
    net = local.add_argument_group("deployment")
    net.add_argument("--stage-timeout", type=float, default=60.0,
                     help="seconds a protocol stage waits for replies; a node that has not answered has dropped out")
    net.add_argument("--connect-timeout", type=float, default=120.0, help="seconds to wait for the nodes to connect")
    net.add_argument("--crash", action="append", type=_crash, default=[], metavar="NODE=STAGE",
                     help="a drill: kill node NODE's processes when STAGE's message reaches it (hello, plaintext, "
                          f"{', '.join(STAGES)}); repeatable")
    net.add_argument("--tls", action="store_true",
                     help="HTTPS between every process and the SuperLink, with a certificate authority made for this run")
    net.add_argument("--auth", action="store_true",
                     help="SuperNode authentication (needs --tls): each node gets a key pair, registered before it starts")
    _federation_output(local, net)
    _simulate_parser(where)
    _rows_parser(where)


def _federation_output(parser, group) -> None:
    """The work directory and outputs every way of running a federation (``deploy local``, ``simulate``) takes."""
    group.add_argument("--workdir", default=None,
                       help="an empty directory for the job's files and every process's log, kept afterwards "
                            "(default: a temporary one, removed)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", default=None, help="results JSON path")
    out.add_argument("--transcript", default=None, metavar="DIR", help="write the server's view of every round here")
    _output_flags(out, "an existing results file (and transcript)")


def _simulate_parser(where) -> None:
    simulate = where.add_parser("simulate", help="the same Flower app on Flower's simulation engine (Ray): --nodes "
                                "virtual SuperNodes on this machine", formatter_class=_HelpFormatter,
                                description="Runs the ServerApp and ClientApp of `deploy local` unchanged on Flower's "
                                            "simulation engine (needs `pip install 'secure-afl[deploy]'`, which "
                                            "brings Ray): a SuperLink in simulation mode and --nodes virtual "
                                            "SuperNodes whose messages a few Ray workers answer, so thousands of "
                                            "clients fit one machine. Writes the same results JSON as `deploy local` "
                                            "(with the simulation's peak memory) and stops every process it started.")
    simulate.add_argument("--nodes", type=int, required=True, help="virtual SuperNodes, one per client (sets --clients)")
    _run_options(simulate)
    engine = simulate.add_argument_group("simulation")
    engine.add_argument("--stage-timeout", type=float, default=3600.0,
                        help="seconds a protocol stage waits for replies; the virtual nodes' messages queue for the "
                             "Ray workers, so a stage lasts about --nodes times one message")
    engine.add_argument("--connect-timeout", type=float, default=3600.0,
                        help="seconds the nodes' first message (each loads its rows) may take")
    engine.add_argument("--client-cpus", type=int, default=1,
                        help="CPUs Ray gives each ClientApp worker: cores / this many messages are answered at once")
    _federation_output(simulate, engine)


def _rows_parser(where) -> None:
    rows = where.add_parser("rows", help="a site's rows file (its SuperNode's dataset-path) from its own labelled images",
                            formatter_class=_HelpFormatter,
                            description="Run on a site's machine: turns DIR/<class index>/<image files> into the "
                                        "backbone features and labels its SuperNode reads (--node-config "
                                        "dataset-path=ROWS), with the job's backbone, weights, resolution and "
                                        "preprocessing, exactly as the in-process run extracts them, through the "
                                        "local feature cache. Weights come only from local files (never downloaded).")
    rows.add_argument("--job", required=True, help="the job file from `secure-afl deploy issue` (job.json)")
    rows.add_argument("--images", required=True, metavar="DIR",
                      help="one folder per class, named by its index 0 … C-1, holding only image files")
    rows.add_argument("--held-out-images", default=None, metavar="DIR",
                      help="the site's held-out images in the same layout, written beside its training rows: APFL's "
                           "sites evaluate their personalized models on them")
    site = rows.add_argument_group("this machine (replaces the job's settings)")
    site.add_argument("--device", default="auto", help="auto (a CUDA GPU when present), cpu, cuda or cuda:N")
    site.add_argument("--batch-size", type=int, default=None, help="images per backbone batch (default: the job's)")
    site.add_argument("--weights", default=None, metavar="FILE",
                      help="where this site keeps the job's backbone weights file (default: the job's path, or the "
                           "shipped / cached weights its backbone names)")
    site.add_argument("--cache-dir", default=None, help="feature cache (default $SECURE_AFL_CACHE or ~/.cache/secure_afl)")
    site.add_argument("--no-cache", dest="use_cache", action="store_false",
                      help="always extract features; neither read nor write the cache")
    out = rows.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="ROWS", help="the rows file to write (npz)")
    _output_flags(out, "an existing rows file")


def _predict_parser(sub) -> None:
    about = ("Loads a model written by `secure-afl run --save-model` and runs images through its backbone, feature "
             "map and predictor. On a data set it also reports the accuracy (metrics.accuracy): on the test split, "
             "the run's own figure.")
    p = sub.add_parser("predict", help="predict with a saved model on a data set's split or on image files",
                       formatter_class=_HelpFormatter, description=about)
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files to classify (instead of --dataset)")
    p.add_argument("--model", required=True, metavar="PATH", help="a model file from `secure-afl run --save-model`")
    p.add_argument("--dataset", default=None, help=f"one of {', '.join(DATASETS)} (instead of IMAGE files)")
    p.add_argument("--split", choices=("train", "test"), default="test", help="the data set's split")
    p.add_argument("--data-dir", default=None, help="root of an on-disk dataset (cifar10, cifar100, imagefolder)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--cache-dir", default=None, help="feature cache (default $SECURE_AFL_CACHE or ~/.cache/secure_afl)")
    p.add_argument("--no-cache", dest="use_cache", action="store_false",
                   help="always extract features; neither read nor write the cache")
    out = p.add_argument_group("output")
    out.add_argument("--out", default=None, help="predictions JSON path")
    _output_flags(out, "an existing predictions file")


def _plot_parser(sub) -> None:
    p = sub.add_parser("plot", help="draw a results JSON: per-client, per-layer and per-round accuracy, bytes per stage",
                       formatter_class=_HelpFormatter)
    p.add_argument("results", help="the JSON of `secure-afl run --out`")
    p.add_argument("--out", default=None, metavar="DIR", help="directory for the PNGs (default: RESULTS-plots beside it)")
    _output_flags(p, "existing pictures")


def _output_flags(group, replaced: str) -> None:
    """The flags every command that writes files shares."""
    group.add_argument("--overwrite", action="store_true", help=f"replace {replaced}")
    group.add_argument("--quiet", action="store_true", help="print nothing on success")
    group.add_argument("-v", "--verbose", action="store_true", help="log each phase as it starts (INFO)")


def _attack_parser(sub) -> None:
    p = sub.add_parser("attack", help="attack what a run's server saw and score it against the private data",
                       formatter_class=_HelpFormatter,
                       description="Runs the case described by the run options (or loads --transcript) and attacks it. "
                                   "Attacks see only the transcript and public knowledge; ground truth reaches only "
                                   "the evaluator.")
    p.add_argument("--attack", required=True, help="an attack name (counts, class-means, singleton, gram, difference, "
                                                   "buffer, membership, invert, match-statistics, dlg, idlg, "
                                                   "inverting-gradients, head-features) or all (every one but invert "
                                                   "and match-statistics)")
    p.add_argument("--transcript", default=None, metavar="DIR",
                   help="attack this saved transcript instead of running a case; the run options then only give the "
                        "partition (--seed, --alpha …) to score it against")
    p.add_argument("--victim", action="append", type=int, default=[], metavar="K",
                   help="difference attack: the client that drops out of the retried aggregation (repeatable; default 0)")
    p.add_argument("--source", default=None, choices=("singleton", "gram", "true"),
                   help="invert attack: the recovered features it turns into images (default singleton; true is the "
                        "oracle: the true features, to measure the image stage alone)")
    p.add_argument("--method", default=None, choices=("decoder", "optimise", "decoder+optimise"),
                   help="invert attack: learned decoder, optimisation through the backbone, or the decoder's output "
                        "refined by optimisation (default decoder)")
    _run_options(p)
    out = p.add_argument_group("output")
    out.add_argument("--out", default=None, help="attack report JSON path")
    out.add_argument("--grid", default=None, metavar="PNG",
                     help="picture of the targets beside what the attacker identified, or membership's ROC curves (with "
                          "--attack all: one file per attack that has one, named PNG's stem + -ATTACK)")
    out.add_argument("--overwrite", action="store_true", help="replace existing output files")
    out.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    out.add_argument("-v", "--verbose", action="store_true", help="log each phase as it starts (INFO)")


def _report_parser(sub) -> None:
    p = sub.add_parser("report", help="turn the privacy grid's measurements into the claim-by-claim report",
                       formatter_class=_HelpFormatter,
                       description="Reads the JSON of benchmarks/privacy_grid.py and writes a markdown report, claim by "
                                   "claim, with a picture per claim beside it.")
    p.add_argument("--grid", default="benchmarks/results/privacy_grid.json", help="the privacy grid's results JSON")
    p.add_argument("--out", default="benchmarks/results/privacy_report.md", help="the report (pictures go beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.add_argument("-v", "--verbose", action="store_true", help="log each phase as it starts (INFO)")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="secure-afl", description="Analytic federated learning with secure aggregation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    _attack_parser(sub)
    _deploy_parser(sub)
    _report_parser(sub)
    _predict_parser(sub)
    _plot_parser(sub)
    args = parser.parse_args(argv)
    config = None
    if args.command in ("run", "attack", "deploy") and getattr(args, "where", None) != "rows":  # rows: a job file
        names = {f.name for f in fields(RunConfig)}
        options = vars(args)
        options["dropout"] = dict(options["dropout"])
        config = RunConfig(**{k: v for k, v in options.items() if k in names})
    command = {"run": _run, "attack": _attack, "deploy": _deploy, "report": _report, "predict": _predict,
               "plot": _plot}[args.command]
    handler = _log_to_stderr() if args.verbose else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = _warn_line
            summary = command(args, config)
    except (SecureAFLError, ProtocolError) as exc:
        print(f"secure-afl: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # every writer is atomic: nothing partial is left behind
        print("secure-afl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if handler is not None:
            _stop_logging(handler)
    if not args.quiet:
        print(summary)
    return 0


def _version() -> str:
    try:
        return metadata.version("secure-afl")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        import secure_afl

        return secure_afl.__version__


def _log_to_stderr() -> logging.Handler:
    """--verbose: the package's INFO log lines on stderr, each prefixed like every other message."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("secure-afl: %(name)s: %(message)s"))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    return handler


def _stop_logging(handler: logging.Handler) -> None:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def _refuse_silent_run(args, *outputs) -> None:
    """--quiet with nowhere to write would run the whole job and show nothing: refuse it before any work."""
    if args.quiet and not any(outputs):
        raise ConfigError("--quiet without --out would run the whole job and show nothing; add --out FILE or drop "
                          "--quiet")


def _run(args, config: RunConfig) -> str:
    """``secure-afl run``: every output is checked before the run, written after it; returns the summary."""
    from protocols.transcript import check_destination
    from secure_afl.model import check_saveable, trained_model
    from secure_afl.results import check_output_path, format_summary, write_results
    from secure_afl.runner import complete_run

    _refuse_silent_run(args, args.out, args.transcript, args.save_model)
    check_output_path(args.out, args.overwrite)
    if args.save_model is not None:
        check_saveable(config.algorithm)
        check_output_path(args.save_model, args.overwrite)
    if args.transcript is not None:
        check_destination(args.transcript, args.overwrite)
    completed = complete_run(config, progress=not args.quiet, transcript=args.transcript, overwrite=args.overwrite)
    lines = [format_summary(completed.document)]
    if args.out:
        write_results(args.out, completed.document, overwrite=args.overwrite)
        lines.append(f"results written to {args.out}")
    if args.save_model is not None:
        trained_model(completed).save(args.save_model, overwrite=args.overwrite)
        lines.append(f"model written to {args.save_model}")
    return "\n".join(lines)


def _predict(args, config: None) -> str:
    """``secure-afl predict``: the model, the inputs and the output are checked before any image is read."""
    from secure_afl.model import Model
    from secure_afl.results import check_output_path, write_results

    if (args.dataset is None) == (not args.images):
        raise ConfigError("give either --dataset NAME or IMAGE files (not both)")
    _refuse_silent_run(args, args.out)
    check_output_path(args.out, args.overwrite)
    model = Model.load(args.model).with_options(device=args.device, cache_dir=args.cache_dir, use_cache=args.use_cache)
    document = {"schema_version": PREDICTIONS_SCHEMA, "model": {"path": args.model, **model.manifest()}}
    if args.dataset is not None:
        features, labels = model.dataset_features(args.dataset, args.split, args.data_dir)
        predicted = model.predict(features)
        accuracy = float(np.mean(predicted == labels)) if len(labels) else None
        document.update(dataset=args.dataset, split=args.split, n=len(labels), metrics={"accuracy": accuracy},
                        predictions=predicted.tolist(), labels=labels.tolist())
        summary = f"{args.dataset}/{args.split}: accuracy {accuracy:.4f} (n = {len(labels)})"
    else:
        predicted = model.predict(list(args.images))
        document.update(images=list(args.images), n=len(predicted), predictions=predicted.tolist())
        summary = "\n".join(f"{image}  {label}" for image, label in zip(args.images, predicted.tolist()))
    if args.out:
        write_results(args.out, document, overwrite=args.overwrite)
        summary += f"\npredictions written to {args.out}"
    return summary


def _attack(args, config: RunConfig) -> str:
    """``secure-afl attack``: outputs and options are checked before the case runs; returns the summary."""
    from attacks.base import ATTACKS
    from attacks.grid import picture_format
    from attacks.suite import PICTURED, InversionOptions, attack_names, attack_run, attack_transcript, save_picture
    from secure_afl.results import check_output_path, write_results

    _refuse_silent_run(args, args.out, args.grid)
    names = attack_names(args.attack)
    check_output_path(args.out, args.overwrite)
    grids = {}
    if args.grid is not None:
        grids = {n: _grid_path(args.grid, n, len(names)) for n in names if ATTACKS[n].targets in PICTURED}
        if not grids:
            raise ConfigError(f"--grid: attack {args.attack!r} reconstructs no single images to picture")
        for path in grids.values():
            picture_format(path)
            check_output_path(path, args.overwrite)
    if args.victim and "difference" not in names:
        raise ConfigError("--victim only applies to the difference attack")
    if (args.source or args.method) and "invert" not in names:
        raise ConfigError("--source and --method only apply to the invert attack")
    inversion = InversionOptions(args.source or InversionOptions.source, args.method or InversionOptions.method)
    config.validate()
    if args.transcript is not None:
        document, pictures = attack_transcript(names, args.transcript, config, progress=not args.quiet,
                                               inversion=inversion)
    else:
        document, pictures = attack_run(names, config, tuple(args.victim) or (0,), progress=not args.quiet,
                                        inversion=inversion)
    lines = [_attack_summary(document)]
    for name, path in grids.items():
        if name in pictures:
            save_picture(path, pictures[name])
            lines.append(f"picture written to {path}")
        else:
            lines.append(f"no picture for {name}: nothing to score")
    if args.out:
        write_results(args.out, document, overwrite=args.overwrite)
        lines.append(f"report written to {args.out}")
    return "\n".join(lines)


def _deploy(args, config: RunConfig) -> str:
    """``secure-afl deploy local`` / ``simulate`` / ``issue``: outputs and the job are checked before any process
    starts or any file is written."""
    from secure_afl.results import check_output_path, format_summary, write_results

    if args.where == "issue":
        return _issue(args, config)
    if args.where == "rows":
        return _rows(args)
    try:
        from secure_afl.deploy.local import LocalDeployment, run_local, stage_table
        from secure_afl.deploy.simulate import Simulation, run_simulation
    except ImportError as exc:
        raise ConfigError(f"deploying needs Flower: pip install 'secure-afl[deploy]' ({exc})") from exc
    _refuse_silent_run(args, args.out, args.transcript)
    check_output_path(args.out, args.overwrite)
    if args.where == "simulate":
        simulation = Simulation(args.nodes, args.stage_timeout, args.connect_timeout, client_cpus=args.client_cpus,
                                workdir=args.workdir)
        results = run_simulation(config, simulation, args.transcript, args.overwrite)
        how = f"simulated {args.nodes} SuperNodes (peak memory {results['deployment']['peak_memory_mib']:.0f} MiB)"
    else:
        deployment = LocalDeployment(args.nodes, args.stage_timeout, args.connect_timeout, crash=dict(args.crash),
                                     tls=args.tls, auth=args.auth, workdir=args.workdir)
        results = run_local(config, deployment, args.transcript, args.overwrite)
        how = f"deployed over {args.nodes} SuperNodes"
    if args.out:
        write_results(args.out, results, overwrite=args.overwrite)
    return "\n".join([format_summary(results), f"{how}; stages (every round's in the results JSON):",
                      *stage_table(results["deployment"])] + ([f"results written to {args.out}"] if args.out else []))


def _issue(args, config: RunConfig) -> str:
    from secure_afl.deploy.issue import issue_files, node_config
    from secure_afl.deploy.site import check_deployable
    from secure_afl.runner import plan_run

    directory = Path(args.dir)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigError(f"--dir {args.dir!r} exists and is not an empty directory; choose a new one")
    check_deployable(config)
    files = issue_files(plan_run(config), directory)
    lines = [f"job {files['job']}"] + ([f"roster {files['roster']}"] if "roster" in files else [])
    return "\n".join(lines + [f"site {k}: --node-config '{node_config(k, config.clients, files)}'"
                               for k in range(config.clients)])


def _rows(args) -> str:
    """``secure-afl deploy rows``: the job, the output and every image are checked before the backbone is loaded."""
    from secure_afl.deploy.rows import write_rows

    written = write_rows(args.job, args.images, args.out, held_out=args.held_out_images, overwrite=args.overwrite,
                         progress=not args.quiet, device=args.device, batch_size=args.batch_size,
                         weights=args.weights, cache_dir=args.cache_dir, use_cache=args.use_cache)
    counts = ", ".join(f"{k}: {n}" for k, n in written.class_counts.items())
    lines = [f"rows written to {written.path}: {written.rows} images ({counts}), {written.feature_dim} features each, "
             f"on {written.device}" + (" (from the feature cache)" if written.cache_hit else "")
             + (f", and {written.held_out} held-out images" if written.held_out else "")]
    if written.withheld:
        lines.append(f"the job's --min-class-count withholds classes {written.withheld} at this site: its node sends "
                     "none of their rows")
    hint = f"give the site's SuperNode --node-config '... dataset-path=\"{written.path.resolve()}\"'"
    return "\n".join([*lines, hint])


def _report(args, config: None) -> str:
    """``secure-afl report``: the grid is read and the output checked before anything is written."""
    from attacks.report import load_grid, write_report
    from secure_afl.results import check_output_path

    check_output_path(args.out, args.overwrite)
    paths = write_report(load_grid(args.grid), args.out)
    return "\n".join(f"written {path}" for path in paths)


def _plot(args, config: None) -> str:
    """``secure-afl plot``: the file is checked to be a results document before anything is drawn."""
    from secure_afl.plots import load_results, plot_results

    document = load_results(args.results)
    out = args.out or str(Path(args.results).with_suffix("")) + "-plots"
    return "\n".join(f"written {path}" for path in plot_results(document, out, args.overwrite))


def _grid_path(path: str, attack: str, count: int) -> str:
    if count == 1:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{attack}{p.suffix or '.png'}"))


def _attack_summary(document: dict) -> str:
    header = ("attack", "applicable", "targets", "recovered", "identified", "baseline", "threshold", "seconds")
    lines = [header]
    for row in document["summary"]:
        def fraction(value):
            return "—" if value is None else f"{value:.3f}"

        lines.append((row["attack"], "yes" if row["applicable"] else "no", "—" if row["targets"] is None
                      else str(row["targets"]), fraction(row["recovered_fraction"]), fraction(row["identified_fraction"]),
                      fraction(row["baseline_recovered_fraction"]), f"{row['threshold']:g}", f"{row['seconds']:.1f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in lines]
    for name, report in document["attacks"].items():
        if report["applicable"] and report["metrics"].get("auc") is not None:
            text.append(f"{name}: AUC {report['metrics']['auc']:.3f}, TPR at 1 % FPR "
                        f"{report['metrics']['tpr_at_1pct_fpr']:.3f} ({report['metrics']['best_test']})")
        if report["applicable"] and report["metrics"].get("psnr_mean") is not None:
            text.append(_inversion_line(name, report))
        if not report["applicable"]:
            text.append(f"{name}: not applicable: {report['reason']}")
    return "\n".join(text)


def _inversion_line(name: str, report: dict) -> str:
    metrics, baseline = report["metrics"], report["metrics"]["baseline"]
    oracle = " (ORACLE: true features)" if report.get("oracle") else ""
    return (f"{name}{oracle}: {report['source']} → {metrics['method']}: PSNR {metrics['psnr_mean']:.1f} dB "
            f"(class-mean image {metrics['baseline_psnr_mean']:.1f} dB), identified {metrics['identified_fraction']:.3f} "
            f"(class-mean image {baseline['identified_fraction']:.3f}), top-5 {metrics['top5_fraction']:.3f}, "
            f"feature-space identified {metrics['feature_identified_fraction']:.3f}")


def _dropout(text: str) -> tuple[str, float]:
    stage, sep, fraction = text.partition("=")
    if not sep or stage not in STAGES:
        raise argparse.ArgumentTypeError(f"expected STAGE=FRACTION with STAGE one of {', '.join(STAGES)}, got {text!r}")
    try:
        return stage, float(fraction)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the dropout fraction must be a number, got {fraction!r}") from None


def _crash(text: str) -> tuple[int, str]:
    node, sep, stage = text.partition("=")
    if not sep or not node.isdigit():
        raise argparse.ArgumentTypeError(f"expected NODE=STAGE, e.g. 2=input, got {text!r}")
    return int(node), stage


def _warn_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"secure-afl: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
