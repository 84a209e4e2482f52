"""The pictures: image mosaics drawn pixel for pixel (each image pixel a ZOOM x ZOOM square, no
resampling), their labels inside the picture."""

import matplotlib.pyplot as plt
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from aeflax import figures


def find(picture: np.ndarray, block: np.ndarray) -> list[tuple[int, int]]:
    """Where `block` occurs exactly in `picture` (both 2-D)."""
    h, w = block.shape
    rows = sliding_window_view(picture, w, axis=1)  # [H, W - w + 1, w]
    candidates = np.argwhere(np.all(rows == block[0], axis=-1))
    return [(r, c) for r, c in candidates if np.array_equal(picture[r:r + h, c:c + w], block)]


def test_image_rows_draws_every_pixel_as_a_square_and_keeps_the_labels_inside(tmp_path):
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 6, (3, 28, 28, 1)) * 51  # grey levels the gray colour map keeps exactly
    rows = [("T-shirt/top -> Ankle boot", levels / 255), ("second", levels[::-1] / 255)]
    path = figures.image_rows(rows, tmp_path / "rows.png", "a title")
    picture = np.round(plt.imread(path)[..., 0] * 255).astype(int)
    z = figures.ZOOM
    for image in levels:
        block = np.kron(image[..., 0], np.ones((z, z), int))
        assert len(find(picture, block)) == 2, "each image drawn once per row, pixel for pixel"
    ink = np.argwhere(picture < 128)
    assert ink[:, 1].min() >= 2 and ink[:, 0].min() >= 2, "a label or the title touches the edge"
    assert ink[:, 1].max() < picture.shape[1] - 2 and ink[:, 0].max() < picture.shape[0] - 2


def test_image_grid_keeps_rows_of_cols(tmp_path):
    images = np.zeros((12, 8, 8, 1))
    picture = np.round(plt.imread(figures.image_grid(images, tmp_path / "grid.png", cols=5))[..., 0] * 255)
    z = figures.ZOOM
    blocks = find(picture, np.zeros((8 * z, 8 * z)))
    assert len({r for r, _ in blocks}) == 3 and len({c for _, c in blocks}) == 5
