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
can draw it, the attacker holds no training image). Their figures are computed the same way. A data set
no job runs on (no test split, so no public image) is scored only for the ORACLE optimisation
(``evaluate_oracle_images``), against the mean of the other training images, a random other one, and a
random same-class one where the class has another image (how many have none is stated).
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
from attacks.inversion.attack import ORACLE, ORACLE_MODEL, InvertAttack
from attacks.inversion.knowledge import Encoder, Knowledge, PublicImages, unit
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
    scorer = _ImageScorer(truth, knowledge.encoder.to(knowledge.device), knowledge.public.size[0])
    targets = scorer.targets(attack.targets, getattr(attack, "settings", None))
    stages: dict[str, list] = defaultdict(list)
    for item in output.items:
        stages[item.space.partition("/")[2]].append(item)
    by_method = {stage: scorer.score(targets, items) for stage, items in stages.items()}
    final = list(by_method)[-1] if by_method else None
    baselines = scorer.baselines(targets, knowledge.public)
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


NO_JOB_ORACLE = (ORACLE_MODEL + "; here no AFL job runs at all (the data set leaves no test split), so no transcript "
                 "is involved: the true feature of every image, extracted through the feature cache, is inverted by "
                 "optimisation through the frozen public backbone. An upper bound for the image stage of any "
                 "attack on this data set, not an attack")


def evaluate_oracle_images(truth: GroundTruth, encoder: Encoder, images: np.ndarray,
                           seconds: float) -> tuple[dict, dict]:
    """(report, picture) for optimised ``images`` (N, 3, H, W) in [0, 1], of the first N training images in order,
    scored against every training image with the baselines of a data set without public images
    (``sample_baselines``)."""
    scorer = _ImageScorer(truth, encoder, images.shape[-1])
    targets = np.arange(len(images))
    result = scorer.scored(targets, dict(zip(targets.tolist(), images)))
    baselines = scorer.sample_baselines(targets)
    metrics = {**result["metrics"], "method": "optimisation", "baselines": baselines,
               "baseline_psnr_mean": baselines["dataset_mean"]["psnr_mean"],
               "by_method": {"optimisation": result["metrics"]}}
    report = {"attack": "invert", "applicable": True, "reason": "", "threat_model": NO_JOB_ORACLE, "oracle": True,
              "source": ORACLE, "method": "optimise", "metric": InvertAttack.metric,
              "threshold": InvertAttack.threshold, "rounds": {},
              "targets": f"the first {len(images)} of the data set's {len(truth.labels)} training images "
                         "(no partition: one owner)",
              "seconds": seconds, "public_images": None, "decoder": None, "scored": True, "metrics": metrics,
              "identification": {"rule": IDENTIFICATION.format(pool=len(truth.labels)), "top": TOP},
              "per_target": result["rows"]}
    picture = {"truth": truth, "rows": result["rows"], "images": {"optimisation": result["images"]},
               "score_format": "PSNR {:.1f} dB",
               "title": f"{truth.dataset.name}: ORACLE (true features → optimisation)"}
    return report, picture


class _ImageScorer:
    """Scores images of side ``size`` against every training image: pixels, and features re-encoded by ``encoder``."""

    def __init__(self, truth: GroundTruth, encoder: Encoder, size: int):
        self.truth, self.encoder = truth, encoder
        self.owner = truth.client_of()
        self.cell_size = truth.cell_sizes()
        every = np.arange(len(truth.labels))
        self.train = torch.from_numpy(truth.images(every, size)).permute(0, 3, 1, 2).contiguous()  # uint8
        self.train_pixels = pixels(self.train)
        self.train_features = unit(torch.from_numpy(truth.backbone)).double().numpy()

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
        return self.scored(targets, self.match(targets, items))

    def scored(self, targets: np.ndarray, matched: dict[int, np.ndarray]) -> dict:
        """Metrics, per-target rows and uint8 pictures of the reconstructions ``matched`` (target sample → image)."""
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

    def baselines(self, targets: np.ndarray, public: PublicImages) -> dict:
        """The class-mean public image and a random same-class training image, scored like a reconstruction."""
        labels = self.truth.labels[targets]
        means = torch.stack([public.images[torch.from_numpy(public.labels == c)].float().mean(dim=0) / 255.0
                             if np.any(public.labels == c) else torch.zeros(public.images.shape[1:])
                             for c in range(self.truth.num_classes)]).numpy()
        return {"class_mean": self._guess(means[labels], targets, "the mean image of the target's class over the "
                                                                  "public images, given the true label"),
                "random_same_class": self._random_other(targets, same_class=True)}

    def sample_baselines(self, targets: np.ndarray) -> dict:
        """Baselines where the attacker holds no public image (the ORACLE on a data set no job runs on): the mean of
        the other training images, a random other training image of any class, and a random one of the target's
        class for the targets whose class has another image."""
        images = self.train.float().numpy() / 255.0
        others_mean = (images.sum(axis=0)[None] - images[targets]) / max(len(images) - 1, 1)
        return {"dataset_mean": self._guess(others_mean, targets, "the mean of every other training image (the "
                                                                  "target left out; no public image exists)"),
                "random_other": self._random_other(targets, same_class=False),
                "random_same_class": self._random_other(targets, same_class=True)}

    def _random_other(self, targets: np.ndarray, same_class: bool) -> dict:
        """A random training image other than the target (of its class when ``same_class``), drawn by the evaluator;
        a target with no such image is left out and counted."""
        rng = np.random.default_rng(BASELINE_SEED)
        every = np.arange(len(self.truth.labels))
        drawn, scored = [], []
        for sample in targets:
            same = self.truth.labels == self.truth.labels[sample]
            pool = np.flatnonzero((every != sample) & (same | (not same_class)))
            if len(pool):
                drawn.append(rng.choice(pool))
                scored.append(sample)
        kind = "of the target's class " if same_class else "of any class "
        description = (f"a random training image {kind}other than the target (drawn by the evaluator: the attacker "
                       "holds no training image)")
        missing = len(targets) - len(scored)
        if missing:
            description += f"; {missing} of the {len(targets)} targets have no other image of their class: left out"
        result = self._guess(self.train[np.array(drawn, dtype=np.int64)].float().numpy() / 255.0,
                             np.array(scored, dtype=np.int64), description)
        result["without_guess"] = missing
        return result

    def _guess(self, images: np.ndarray, targets: np.ndarray, description: str) -> dict:
        """A baseline's guesses (one image per target) scored like reconstructions."""
        if len(targets) == 0:
            return {"description": description, **self.empty(targets)}
        return {"description": description, **self.summarise(self.figures(images, targets), len(targets))}

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
