"""Sample tensors to one picture for the page: a grid of the batch, scaled up without smoothing."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ..pipelines.sampling import postprocess_images

__all__ = ["to_grid_image"]


def to_grid_image(samples: torch.Tensor, display_size: int = 128, padding: int = 2) -> Image.Image:
    """A batch of samples in [-1, 1] (NCHW) as one RGB grid, each tile scaled up to about ``display_size`` pixels.

    Nearest-neighbour scaling keeps small models' pixels (8 to 32 px) visible as pixels instead of blur.

    Args:
        samples: the batch, NCHW in [-1, 1] (values outside are clamped); 1 or 3 channels.
        display_size: the least tile size in pixels (tiles are scaled by a whole factor).
        padding: white pixels between tiles.
    """
    if samples.ndim != 4 or samples.shape[1] not in (1, 3):
        raise ValueError(f"expected samples as NCHW with 1 or 3 channels, got shape {tuple(samples.shape)}")
    array = (postprocess_images(samples.detach(), "np") * 255).round().astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    count, height, width, _ = array.shape
    factor = max(1, math.ceil(display_size / max(height, width)))
    columns = count if count <= 4 else math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    tile_h, tile_w = height * factor, width * factor
    grid = np.full((rows * tile_h + (rows - 1) * padding, columns * tile_w + (columns - 1) * padding, 3), 255, np.uint8)
    for index, image in enumerate(array):
        row, column = divmod(index, columns)
        top, left = row * (tile_h + padding), column * (tile_w + padding)
        grid[top : top + tile_h, left : left + tile_w] = image.repeat(factor, axis=0).repeat(factor, axis=1)
    return Image.fromarray(grid)
