"""Scoring gradient inversion: reconstructed images against the private ones, with baselines beside.

Targets come from the ground truth and the transcript, not from what the attack returned: every
training sample of the clients the attack's scope covers (``attack.clients``: the first so many by
id, or those named, included in the first round that carries parameters, readable or not). An attack that was not applicable scores
nothing on the same targets.

A client's reconstructions are an unordered batch: they are matched to its true images by the
Hungarian assignment on pixel MSE (attacks/images.py), then scored on [0, 1] 32 px images (what the
model saw): PSNR, SSIM (torchmetrics' Gaussian window, not breaching's complex-wavelet SSIM), label
accuracy (the label the attack returned against the true one) and pixel identifiability (the
target is the reconstruction's nearest neighbour, Euclidean, among all training images). For a batch the
pairing of labels with images rests on the pixel matching, which is arbitrary when the images are noise;
the batch's labels as a multiset do not depend on it, so ``label_count_accuracy`` (true labels whose class
count the attack's labels cover, over all targets) scores label inference on its own.

Baselines guess without the transcript, given the true label: the mean image of the class over
public images (the test split), and a random training image of the same class (another one than
the target, seeded).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict

import numpy as np

from attacks.base import AttackOutput, ServerView
from attacks.case import GroundTruth
from attacks.gradient.inversion import GradientInversion
from attacks.gradient.updates import chosen
from attacks.images import identify, match, pixels, psnr, ssim
from secure_afl.algorithms.convnet import to_unit

TARGETS = "every training sample of the attacked clients of the first round that carries parameters"
BASELINE_SEED = 0


def target_clients(attack: GradientInversion, view: ServerView) -> tuple[str | None, list[int]]:
    """(round name, clients) the attack's scope covers."""
    for entry in view.rounds():
        if entry.spec.get("layout", {}).get("kind") == "weighted_parameters":
            return entry.name, chosen(entry.included, attack.clients)
    return None, []


def evaluate_inversion(attack: GradientInversion, output: AttackOutput, view: ServerView,
                       truth: GroundTruth | None) -> tuple[dict, dict]:
    """(the attack's report: applicability, threat model, targets, metrics beside two baselines, per target;
    the matched reconstructions as [0, 1] images by (client, sample), for pictures)."""
    report = {"attack": attack.name, "applicable": output.applicable, "reason": output.reason,
              "threat_model": attack.threat_model, "metric": attack.metric, "threshold": attack.threshold,
              "targets": TARGETS, "rounds": output.rounds, "seconds": output.seconds,
              "settings": {"steps": attack.steps, "clients": attack.clients, "seed": attack.seed,
                           "recipe": {**asdict(attack.recipe), "steps": attack.steps}},
              "reconstructions": {"images": len(output.items)}}
    round_name, clients = target_clients(attack, view)
    if truth is None or round_name is None:  # no ground truth, or no parameter round (e.g. AFL's statistics): no images
        report["scored"] = False
        report["metrics"] = {"targets": None, "recovered_fraction": None, "identified_fraction": None}
        return report, {}
    dataset = view.config["dataset"]
    train = to_unit(truth.x, dataset)  # the 32 px images the clients trained on
    used = truth.sent_indices if truth.sent_indices is not None else truth.client_indices
    samples = np.concatenate([used[k] for k in clients]).astype(np.int64) if clients else np.zeros(0, np.int64)
    by_client = defaultdict(list)
    for item in output.items:
        by_client[item.client].append(item)
    rows, labels_counted = [], 0
    for client in clients:
        truth_rows = used[client]
        items = by_client.get(client, [])
        if len(items) != len(truth_rows):
            rows += [_row(attack, client, int(s), int(truth.labels[s])) for s in truth_rows]
            continue
        guesses = to_unit(np.stack([item.value for item in items]), dataset)
        order = match(guesses, train[truth_rows])
        guesses = guesses[order]
        labels = np.array([items[i].label for i in order])
        labels_counted += count_overlap(labels, truth.labels[truth_rows], truth.num_classes)
        found = identify(pixels(guesses), pixels(train), truth_rows)
        for i, sample in enumerate(truth_rows):
            rows.append(_row(attack, client, int(sample), int(truth.labels[sample]),
                             psnr(guesses[i : i + 1], train[[sample]])[0], ssim(guesses[i : i + 1], train[[sample]])[0],
                             bool(found.identified[i]), int(found.nearest[i]), int(labels[i]) == int(truth.labels[sample]),
                             guesses[i]))
    report["scored"] = True
    report["metrics"] = _summary(rows, attack.threshold)
    report["metrics"]["label_count_accuracy"] = labels_counted / len(rows) if rows else 0.0
    report["metrics"]["seconds_per_image"] = output.seconds / len(output.items) if output.items else None
    report["metrics"]["baselines"] = _baselines(truth, train, samples, dataset)
    report["identification"] = {"rule": f"nearest neighbour (Euclidean, [0, 1] pixels at 32 px) among all {len(train)} "
                                        "training images"}
    report["per_target"] = [{k: v for k, v in row.items() if k != "image"} for row in rows]
    return report, {(row["client"], row["sample"]): row["image"] for row in rows if row["image"] is not None}


def inversion_picture(report: dict, images: dict, truth: GroundTruth) -> dict:
    """What attacks/grid.py draws: each target's original, the training image its reconstruction identifies, and
    the reconstruction itself (the grid's ``gradient inversion`` column)."""
    rows = []
    for row in report["per_target"]:
        image = images.get((row["client"], row["sample"]))
        pixels8 = None if image is None else (image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        rows.append({**row, "inversion": pixels8})
    return {"truth": truth, "rows": rows, "title": f"{report['attack']}: {report['targets']}",
            "score_format": "PSNR {:.1f} dB"}


def count_overlap(guessed: np.ndarray, true: np.ndarray, classes: int) -> int:
    """How many of ``true``'s labels ``guessed`` covers as a multiset (Σ_c min of the two class counts)."""
    return int(np.minimum(np.bincount(guessed, minlength=classes), np.bincount(true, minlength=classes)).sum())


def _row(attack: GradientInversion, client: int, sample: int, label: int, score=None, similarity=None, identified=None, nearest=None,
         label_correct=None, image=None) -> dict:
    return {"client": client, "sample": sample, "label": label,
            "score": None if score is None else float(score), "ssim": None if similarity is None else float(similarity),
            "recovered": False if score is None else bool(score >= attack.threshold), "identified": identified,
            "nearest": nearest, "label_correct": label_correct, "image": image}


def _summary(rows: list[dict], threshold: float) -> dict:
    scored = [row for row in rows if row["score"] is not None]
    values = np.array([row["score"] for row in scored], dtype=np.float64)
    count = len(rows)
    return {
        "targets": count,
        "matched": len(scored),
        "recovered_fraction": float(np.sum(values >= threshold)) / count if count else 0.0,
        "identified_fraction": sum(bool(row["identified"]) for row in scored) / count if count else 0.0,
        "label_accuracy": sum(bool(row["label_correct"]) for row in scored) / count if count else 0.0,
        "psnr_mean": float(values.mean()) if len(values) else None,
        "psnr_quantiles": {q: float(np.quantile(values, float(q))) for q in ("0.1", "0.5", "0.9")} if len(values) else None,
        "ssim_mean": float(np.mean([row["ssim"] for row in scored])) if scored else None,
    }


def _baselines(truth: GroundTruth, train, samples: np.ndarray, dataset: str) -> dict:
    """Class-mean image over public images and a random training image of the same class, given the true label."""
    if len(samples) == 0:
        return {}
    public = to_unit(truth.test_x, dataset)
    labels = truth.labels[samples]
    means = np.stack([public[truth.test_labels == c].mean(dim=0).numpy() if np.any(truth.test_labels == c)
                      else np.full(public.shape[1:], 0.5, dtype=np.float32) for c in range(truth.num_classes)])
    rng = np.random.default_rng(BASELINE_SEED)
    others = np.array([rng.choice(np.setdiff1d(np.flatnonzero(truth.labels == c), [s]) if np.sum(truth.labels == c) > 1
                                  else [s]) for s, c in zip(samples, labels)])
    guesses = {"class_mean": ("the mean image of the target's class over public images (the test split)", means[labels]),
               "random_same_class": ("a random training image of the target's class (not the target)",
                                     train[others].numpy())}
    result = {}
    for name, (description, images) in guesses.items():
        values = psnr(images, train[samples])
        found = identify(pixels(images), pixels(train), samples)
        result[name] = {"description": description, "psnr_mean": float(values.mean()),
                        "ssim_mean": float(ssim(images, train[samples]).mean()),
                        "identified_fraction": float(found.identified.mean())}
    return result
