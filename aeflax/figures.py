"""The pictures people look at, written as PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _show(ax, image):
    image = np.asarray(image, dtype=np.float32)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.clip(image, 0, 1))
    ax.set_xticks([])
    ax.set_yticks([])


def image_rows(rows: list[tuple[str, np.ndarray]], path, title: str = "") -> Path:
    """A grid: one titled row per (label, images [N, H, W, C] in [0, 1])."""
    n = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.8 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            if c < len(images):
                _show(ax, images[c])
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(label, fontsize=10)
            ax.set_title(label if c == 0 else "", fontsize=9, loc="left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def reconstructions(originals, recons, path, title: str = "originals (top) and reconstructions (bottom)"):
    """The Keras tutorial's picture: originals on top, reconstructions below."""
    return image_rows([("original", originals), ("reconstructed", recons)], path, title)
