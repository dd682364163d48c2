"""The picture of a membership report: every test's ROC curve on log axes (LiRA's convention, where the
low-FPR region that matters is visible), per level, with the random guess as the diagonal."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import numpy as np  # noqa: E402

from attacks.grid import picture_format  # noqa: E402
from protocols.files import write_atomically  # noqa: E402


def save_roc(path: str | Path, report: dict, title: str) -> Path:
    levels = sorted({level for figures in report["tests"].values() for level, f in figures.items() if "roc" in f})
    figure, axes = plt.subplots(1, max(len(levels), 1), squeeze=False, figsize=(4.6 * max(len(levels), 1), 4.2))
    for axis, level in zip(axes[0], levels):
        floor = 1.0
        for test, figures in report["tests"].items():
            if "roc" not in figures[level]:
                continue
            points = np.array(figures[level]["roc"])
            floor = min(floor, 0.5 / figures[level]["non_members"])
            axis.plot(np.maximum(points[:, 0], floor), np.maximum(points[:, 1], floor), drawstyle="steps-post",
                      label=f"{test}: AUC {figures[level]['auc']:.3f}, TPR@1% {figures[level]['tpr_at_1pct_fpr']:.3f}")
        axis.plot([floor, 1], [floor, 1], color="grey", linestyle=":", label="random guess")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("false positive rate")
        axis.set_ylabel("true positive rate")
        axis.set_title(f"members of {'each client' if level == 'clients' else 'the union of clients'}", fontsize=9)
        axis.legend(fontsize=6, loc="lower right")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomically(path, lambda out: figure.savefig(out, dpi=110, format=picture_format(path)), binary=True)
    finally:
        plt.close(figure)
    return Path(path)
