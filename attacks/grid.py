"""The picture of an attack: each target's private image beside what the attacker got.

One row per target, one column per view of it: ``COLUMNS`` (the original, the image the attacker
identified, i.e. the nearest training sample to the reconstruction in the attack's threat model, and
the batch a gradient inversion rebuilt), then the picture's own ``images`` (method → target sample →
uint8 image), one column each: feature inversion draws the decoder's and the optimisation's images.
A column no shown row has an image for is left out.
Rows show recovered targets first and then, so the picture does not flatter the attack, some that
were not recovered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import numpy as np  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402

from protocols.files import write_atomically  # noqa: E402
from secure_afl.errors import ConfigError  # noqa: E402

MAX_ROWS = 12
FAILURES_SHOWN = 4

# column title → (row of the per-target report, ground truth) → uint8 image or None
COLUMNS: dict[str, Callable] = {
    "original": lambda row, truth: truth.images([row["sample"]])[0],
    "identified": lambda row, truth: None if row["nearest"] is None else truth.images([row["nearest"]])[0],
    "gradient inversion": lambda row, truth: row.get("inversion"),  # uint8 (H, W, 3), attacks/gradient/evaluation.py
}


def _drawn(images: dict) -> Callable:
    return lambda row, truth: images.get(row["sample"])


def choose_rows(rows: list[dict]) -> list[dict]:
    """Up to MAX_ROWS targets spread evenly over the report (so classes and clients vary): recovered ones,
    then up to FAILURES_SHOWN that were not."""
    recovered = [r for r in rows if r["recovered"]]
    missed = [r for r in rows if not r["recovered"]]
    shown_missed = _spread(missed, min(FAILURES_SHOWN, len(missed), max(MAX_ROWS - len(recovered), FAILURES_SHOWN)))
    return _spread(recovered, MAX_ROWS - len(shown_missed)) + shown_missed


def _spread(rows: list[dict], count: int) -> list[dict]:
    if count >= len(rows):
        return rows
    return [rows[i] for i in np.linspace(0, len(rows) - 1, count).round().astype(int)]


def picture_format(path: str | Path) -> str:
    """The image format ``path``'s suffix names (PNG without one); refused before the attack runs, not after."""
    suffix = Path(path).suffix[1:].lower() or "png"
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix not in formats:
        raise ConfigError(f"--grid {str(path)!r}: cannot draw a {suffix!r} picture; use one of {', '.join(formats)}")
    return suffix


def save_grid(path: str | Path, picture: dict, blocks: int = 3) -> Path:
    """Targets fill ``blocks`` groups side by side; within a group each target is a row and each view a column."""
    truth, rows = picture["truth"], choose_rows(picture["rows"])
    columns = [(title, draw) for title, draw in COLUMNS.items() if any(draw(row, truth) is not None for row in rows)]
    columns += [(method, _drawn(images)) for method, images in picture.get("images", {}).items()]
    blocks = max(1, min(blocks, len(rows)))
    per_block = -(-len(rows) // blocks)
    figure, axes = plt.subplots(per_block, blocks * len(columns), squeeze=False,
                                figsize=(1.5 * blocks * len(columns) + 0.6 * blocks, 1.6 * per_block + 0.6))
    for axis in axes.flat:
        axis.set_axis_off()
    for index, row in enumerate(rows):
        i, block = index % per_block, index // per_block
        for j, (title, draw) in enumerate(columns):
            axis = axes[i, block * len(columns) + j]
            image = draw(row, truth)
            if image is not None:
                axis.imshow(image)
                axis.set_axis_on()
                axis.set_xticks([])
                axis.set_yticks([])
            if i == 0:
                axis.set_title(title, fontsize=8)
        score = "—" if row["score"] is None else picture.get("score_format", "cos {:.4f}").format(row["score"])
        mark = {True: "identified", False: "not identified", None: "not matched"}[row["identified"]]
        axes[i, block * len(columns)].set_ylabel(f"client {row['client']}\n{score}\n{mark}", fontsize=6)
    figure.suptitle(picture["title"], fontsize=8)
    figure.tight_layout()
    path = Path(path)
    try:  # atomically: an interrupted save leaves no half-drawn picture
        write_atomically(path, lambda out: figure.savefig(out, dpi=110, format=picture_format(path)), binary=True)
    finally:
        plt.close(figure)
    return path
