"""The pictures people look at, written as PNG files."""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

DPI = 80
ZOOM = 2  # screen pixels per image pixel: a whole number, so that every pixel stays a square
LABEL_FONT, TITLE_FONT = 8, 9


@functools.cache  # once per process: a sweep's later runs find matplotlib ready
def warm_up() -> None:
    """Draw a small figure into memory and drop it: matplotlib's first figure loads its fonts and
    sets up the canvas (about half a second), which run.py has done beside the training."""
    _text_inches("warm-up", LABEL_FONT)  # image_rows measures its labels with the same font
    fig, ax = plt.subplots(figsize=(1.5, 1))
    ax.imshow(np.zeros((2, 2)), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([0.5], ["warm-up"], fontsize=LABEL_FONT)
    ax.set_title("warm-up", fontsize=TITLE_FONT)
    fig.tight_layout()
    fig.savefig(io.BytesIO(), format="png", dpi=DPI)
    plt.close(fig)


def _save(fig: plt.Figure, path: str | Path, tight: bool = True) -> Path:
    """Write the figure as PNG. `tight=False`: its layout is set already (tight_layout measures
    every label by drawing the figure once more: a third of a picture's time)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _text_inches(text: str, size: float) -> float:
    """The width of `text` in inches at font size `size` in matplotlib's default font."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    return text_to_path.get_text_width_height_descent(text, FontProperties(size=size), ismath=False)[0] / 72


def image_rows(rows: list[tuple[str, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """A grid: one labelled row per (label, images [N, H, W, C] in [0, 1]), drawn as one mosaic,
    each image pixel ZOOM x ZOOM screen pixels (no resampling: crisp, and small PNG files)."""
    n = max(len(images) for _, images in rows)
    h, w, c = np.asarray(rows[0][1]).shape[1:]
    pad = 2
    mosaic = np.ones((len(rows) * (h + pad) - pad, n * (w + pad) - pad, c), np.float32)
    for r, (_, images) in enumerate(rows):
        for i, image in enumerate(np.asarray(images, np.float32)):
            mosaic[r * (h + pad):r * (h + pad) + h, i * (w + pad):i * (w + pad) + w] = np.clip(image, 0, 1)
    # the layout in inches, set here: the mosaic at ZOOM, the labels' width measured on the left
    inch = ZOOM / DPI
    width, height = mosaic.shape[1] * inch, mosaic.shape[0] * inch
    margin = 0.08
    labels = max((_text_inches(label, LABEL_FONT) for label, _ in rows), default=0)
    left = margin + (1.1 * labels + 0.1 if labels else 0)  # the tick labels' pad and glyph hinting
    top = margin + (TITLE_FONT * 1.6 / 72 if title else 0)
    size = (left + width + margin, top + height + margin)
    fig = plt.figure(figsize=size, dpi=DPI)
    ax = fig.add_axes((left / size[0], margin / size[1], width / size[0], height / size[1]))
    ax.imshow(mosaic[..., 0] if c == 1 else mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest",
              aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([r * (h + pad) + h / 2 - 0.5 for r in range(len(rows))], [label for label, _ in rows],
                  fontsize=LABEL_FONT)
    ax.tick_params(length=0, pad=3)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=TITLE_FONT, pad=4)
    return _save(fig, path, tight=False)


def image_grid(images: np.ndarray, path: str | Path, title: str = "", cols: int = 8) -> Path:
    """Images [N, H, W, C] in [0, 1] in rows of `cols` (generated samples)."""
    rows = [("", images[i:i + cols]) for i in range(0, len(images), cols)]
    return image_rows(rows, path, title)


def pca_2d(codes: np.ndarray) -> np.ndarray:
    """The codes projected on their first two principal axes (SVD of the centred codes).

    numpy rather than scikit-learn's PCA: the same projection up to each axis' sign, without
    the 1.1 s import of scikit-learn at the end of every run that draws figures. On one BLAS
    thread: beside JAX's threads (the figures are drawn while the evaluation computes), two
    made it 25x slower on 2 cores; the values are the same.
    """
    codes = np.asarray(codes, np.float64)
    with threadpool_limits(1):
        centred = codes - codes.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return centred @ vt[:2].T


def code_map(codes: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """Codes [N, D] in 2-D coloured by label: the codes themselves when D = 2, else their PCA."""
    if codes.shape[1] == 2:
        xy, axis = codes, ("z1", "z2")
    else:
        xy, axis = pca_2d(codes), ("PC 1", "PC 2")
    fig, ax = plt.subplots(figsize=(6.5, 5))
    cmap = plt.get_cmap("tab10")
    for c in np.unique(labels):
        keep = labels == c
        name = class_names[c] if c < len(class_names) else str(c)
        ax.scatter(xy[keep, 0], xy[keep, 1], s=4, alpha=0.6, color=cmap(int(c) % 10), label=name)
    ax.set_xlabel(axis[0])
    ax.set_ylabel(axis[1])
    ax.set_title("test codes" + ("" if codes.shape[1] == 2 else f" (PCA of {codes.shape[1]} dims)"))
    ax.legend(markerscale=3, fontsize=7, loc="best")
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.1, top=0.93)  # tick labels of a few digits
    return _save(fig, path, tight=False)


def bars(values: np.ndarray, path: str | Path, xlabel: str, ylabel: str) -> Path:
    """One bar per entry (e.g. KL per latent dimension)."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.18 * len(values)), 3))
    ax.bar(np.arange(len(values)), values)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _save(fig, path)


def score_histogram(scores: np.ndarray, is_anomaly: np.ndarray, path: str | Path, title: str) -> Path:
    """Anomaly scores of normal and anomalous test images, overlaid."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.histogram_bin_edges(scores, bins=50)
    ax.hist(scores[~is_anomaly], bins=bins, alpha=0.6, density=True, label="normal")
    ax.hist(scores[is_anomaly], bins=bins, alpha=0.6, density=True, label="anomalous")
    ax.set_xlabel("score")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)
