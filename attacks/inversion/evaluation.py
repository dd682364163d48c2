"""The inversion evaluator: reconstructed images against the private ones, with two baselines beside every figure.

Targets are the ground truth's (the singleton samples, or every sample for ``gram`` rows), so a
target nothing was reconstructed for counts as missed. A reconstruction names its client and class;
a singleton's is its target, and ``gram`` images are matched within their (client, class) cell by
the Hungarian assignment on pixel MSE (attacks/images.py).

Figures per method (decoder, optimisation), on [0, 1] pixels at the data set's native resolution:
PSNR, SSIM (torchmetrics' Gaussian-window SSIM), identifiability (the target is the nearest
neighbour of the reconstruction among all the training images, in pixel space; and in backbone
feature space, by cosine after re-encoding the image), the fraction with the target in the top 5,
and the cosine between the re-encoded image's feature and the target's.

Baselines guess without the transcript, given the target's true label: the mean image of the class
over the public images (what the attacker could draw without any attack), and a random training
image of the same class other than the target (a plausible-looking wrong answer; only the evaluator
can draw it, the attacker holds no training image). Their figures are computed the same way.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from attacks.base import AttackOutput, ServerView
from attacks.case import GroundTruth
from attacks.evaluation import TARGETS
from attacks.images import identify, pixels, psnr, ssim
from attacks.inversion.attack import ORACLE, InvertAttack
from attacks.inversion.knowledge import Knowledge, unit
from attacks.inversion.statistics_matching import SMALL_CLIENTS, MatchSettings, MatchStatistics

BASELINE_SEED = 0  # which same-class training image the random baseline draws: fixed, not secret
TOP = 5
DESCRIPTIONS = {**TARGETS, SMALL_CLIENTS: "every training sample of the attacked clients (the first by id of those "
                                          "holding at most the attack's bound of samples)"}
IDENTIFICATION = ("the target is the nearest neighbour of the reconstruction among all {pool} training images: in "
                  "pixel space (Euclidean, [0, 1] pixels at native resolution) and in backbone feature space (cosine, "
                  "the reconstruction re-encoded by the public backbone)")


def evaluate_inversion(attack: InvertAttack | MatchStatistics, output: AttackOutput, view: ServerView, truth: GroundTruth | None,
                       knowledge: Knowledge | None) -> tuple[dict, dict | None]:
    """(report, picture or None): the attack's report with metrics per method and the baselines."""
    report = {
        "attack": attack.name, "applicable": output.applicable, "reason": output.reason,
        "threat_model": attack.threat_model, "oracle": attack.source == ORACLE, "source": attack.source,
        "method": attack.method, "metric": attack.metric, "threshold": attack.threshold,
        "targets": DESCRIPTIONS[attack.targets], "rounds": output.rounds, "seconds": output.seconds,
        "public_images": None if knowledge is None else knowledge.public.description,
        "decoder": None if attack.decoder is None else attack.decoder.describe(),
    }
    if truth is None or knowledge is None:
        report["scored"] = False
        report["metrics"] = {"targets": None, "recovered_fraction": None, "identified_fraction": None}
        return report, None
    scorer = _ImageScorer(truth, knowledge)
    targets = scorer.targets(attack.targets, getattr(attack, "settings", None))
    stages: dict[str, list] = defaultdict(list)
    for item in output.items:
        stages[item.space.partition("/")[2]].append(item)
    by_method = {stage: scorer.score(targets, items) for stage, items in stages.items()}
    final = list(by_method)[-1] if by_method else None
    baselines = scorer.baselines(targets)
    metrics = dict(by_method[final]["metrics"]) if final else scorer.empty(targets)
    metrics["method"] = final
    metrics["recovered_fraction"] = metrics["identified_fraction"]
    metrics["baseline_psnr_mean"] = baselines["class_mean"]["psnr_mean"]
    metrics["baseline"] = {**baselines["class_mean"], "recovered_fraction": baselines["class_mean"]["identified_fraction"]}
    metrics["baselines"] = baselines
    metrics["by_method"] = {stage: result["metrics"] for stage, result in by_method.items()}
    report["scored"] = True
    report["metrics"] = metrics
    report["identification"] = {"rule": IDENTIFICATION.format(pool=len(truth.labels)), "top": TOP}
    rows = by_method[final]["rows"] if final else []
    report["per_target"] = rows
    picture = None
    if rows and output.applicable:
        images = {stage: result["images"] for stage, result in by_method.items()}
        picture = {"truth": truth, "rows": rows, "images": images, "score_format": "PSNR {:.1f} dB",
                   "title": f"invert ({attack.source} → {attack.method}): {report['targets']}"}
    return report, picture


class _ImageScorer:
    def __init__(self, truth: GroundTruth, knowledge: Knowledge):
        self.truth, self.knowledge = truth, knowledge
        self.owner = truth.client_of()
        self.cell_size = truth.cell_sizes()
        size = knowledge.public.size[0]
        every = np.arange(len(truth.labels))
        self.train = torch.from_numpy(truth.images(every, size)).permute(0, 3, 1, 2).contiguous()  # uint8
        self.train_pixels = pixels(self.train)
        self.train_features = unit(torch.from_numpy(truth.backbone)).double().numpy()
        self.encoder = knowledge.encoder.to(knowledge.device)

    def targets(self, kind: str, matching: MatchSettings | None = None) -> np.ndarray:
        if kind == SMALL_CLIENTS:
            return small_client_samples(self.truth, matching)
        return self.truth.singletons() if kind == "singletons" else np.arange(len(self.truth.labels))

    def match(self, targets: np.ndarray, items) -> dict[int, np.ndarray]:
        """Target sample → the reconstruction (float (3, H, W)) matched to it, within its (client, class) cell."""
        wanted = set(targets.tolist())
        cells: dict[tuple, list] = defaultdict(list)
        for item in items:
            cells[(item.client, item.label)].append(item.value)
        matched = {}
        for (client, label), images in cells.items():
            members = self.truth.client_indices[client]
            members = np.array([s for s in members if self.truth.labels[s] == label and s in wanted])
            if len(members) == 0:
                continue
            stack = np.stack(images)
            cost = torch.cdist(torch.from_numpy(pixels(stack)), torch.from_numpy(self.train_pixels[members])).numpy()
            rows, columns = linear_sum_assignment(cost)
            for r, c in zip(rows, columns):
                matched[int(members[c])] = stack[r]
        return matched

    def score(self, targets: np.ndarray, items) -> dict:
        matched = self.match(targets, items)
        samples = np.array(sorted(matched), dtype=np.int64)
        if len(samples) == 0:
            return {"metrics": self.empty(targets), "rows": [], "images": {}}
        images = np.stack([matched[s] for s in samples])
        figures = self.figures(images, samples)
        metrics = self.summarise(figures, len(targets))
        metrics["matched"] = len(samples)
        metrics["by_class_size"] = self._by_class_size(targets, samples, figures["identified"])
        rows = []
        for i, sample in enumerate(samples):
            rows.append({"client": int(self.owner[sample]), "sample": int(sample), "label": int(self.truth.labels[sample]),
                         "cell_size": int(self.cell_size[self.owner[sample], self.truth.labels[sample]]),
                         "score": float(figures["psnr"][i]), "ssim": float(figures["ssim"][i]),
                         "recovered": bool(figures["identified"][i]), "identified": bool(figures["identified"][i]),
                         "rank": int(figures["rank"][i]), "nearest": int(figures["nearest"][i]),
                         "feature_identified": bool(figures["feature_identified"][i]),
                         "feature_cosine": float(figures["feature_cosine"][i])})
        as_uint8 = np.clip(np.rint(images * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        return {"metrics": metrics, "rows": rows, "images": dict(zip(samples.tolist(), as_uint8))}

    def figures(self, images: np.ndarray, samples: np.ndarray, encode: bool = True) -> dict:
        """Per-image PSNR, SSIM, pixel-space rank and nearest, and (``encode``) feature-space identification."""
        truth = self.train[samples]
        found = identify(pixels(images), self.train_pixels, samples)
        out = {"psnr": psnr(images, truth), "ssim": ssim(images, truth), "rank": found.ranks, "nearest": found.nearest,
               "identified": found.identified, "top": found.top(TOP)}
        if encode:
            features = self.encoder.features(torch.from_numpy(np.ascontiguousarray(images)).float()).double().numpy()
            similarity = features @ self.train_features.T
            out["feature_identified"] = similarity.argmax(axis=1) == samples
            out["feature_cosine"] = similarity[np.arange(len(samples)), samples]
        return out

    @staticmethod
    def summarise(figures: dict, targets: int) -> dict:
        """Means over the matched reconstructions; fractions over every target (a missed target is not identified)."""
        def fraction(flags) -> float:
            return float(np.sum(flags) / targets) if targets else 0.0

        metrics = {"targets": targets, "psnr_mean": float(np.mean(figures["psnr"])),
                   "psnr_median": float(np.median(figures["psnr"])), "ssim_mean": float(np.mean(figures["ssim"])),
                   "identified_fraction": fraction(figures["identified"]), f"top{TOP}_fraction": fraction(figures["top"])}
        if "feature_identified" in figures:
            metrics["feature_identified_fraction"] = fraction(figures["feature_identified"])
            metrics["feature_cosine_mean"] = float(np.mean(figures["feature_cosine"]))
        return metrics

    def empty(self, targets: np.ndarray) -> dict:
        return {"targets": len(targets), "matched": 0, "psnr_mean": None, "ssim_mean": None, "identified_fraction": 0.0,
                f"top{TOP}_fraction": 0.0}

    def baselines(self, targets: np.ndarray) -> dict:
        """The class-mean public image and a random same-class training image, scored like a reconstruction."""
        labels = self.truth.labels[targets]
        public = self.knowledge.public
        means = torch.stack([public.images[torch.from_numpy(public.labels == c)].float().mean(dim=0) / 255.0
                             if np.any(public.labels == c) else torch.zeros(public.images.shape[1:])
                             for c in range(self.truth.num_classes)]).numpy()
        rng = np.random.default_rng(BASELINE_SEED)
        others = []
        for sample, label in zip(targets, labels):
            pool = np.flatnonzero((self.truth.labels == label) & (np.arange(len(self.truth.labels)) != sample))
            others.append(rng.choice(pool) if len(pool) else sample)
        guesses = {"class_mean": (means[labels], "the mean image of the target's class over the public images, given "
                                                 "the true label"),
                   "random_same_class": (self.train[np.array(others, dtype=np.int64)].float().numpy() / 255.0,
                                         "a random training image of the target's class other than the target (drawn by "
                                         "the evaluator: the attacker holds no training image)")}
        result = {}
        for name, (images, description) in guesses.items():
            if len(targets) == 0:
                result[name] = {"description": description, **self.empty(targets)}
                continue
            result[name] = {"description": description, **self.summarise(self.figures(images, targets), len(targets))}
        return result

    def _by_class_size(self, targets, samples, identified) -> dict:
        sizes = self.cell_size[self.owner[targets], self.truth.labels[targets]]
        hit = dict(zip(samples.tolist(), identified.tolist()))
        table = {}
        for size in np.unique(sizes):
            members = targets[sizes == size]
            table[str(int(size))] = {"targets": len(members), "identified": int(sum(hit.get(int(s), False) for s in members))}
        return table


def small_client_samples(truth: GroundTruth, settings: MatchSettings) -> np.ndarray:
    """Every sample of the clients statistics matching attacks: those holding 1 … max_samples samples, lowest ids
    first, up to ``settings.clients`` of them."""
    used = truth.sent_indices if truth.sent_indices is not None else truth.client_indices
    small = [rows for rows in used if 1 <= len(rows) <= settings.max_samples]
    chosen = small if settings.clients is None else small[:settings.clients]
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, dtype=np.int64)
