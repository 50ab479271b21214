"""Image grids for looking at samples."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

__all__ = ["image_grid", "save_image_grid"]


def image_grid(images: torch.Tensor, data_range=(-1.0, 1.0), nrow: int | None = None, pad: int = 1,
               upscale: int = 1) -> np.ndarray:
    """Tile (N, C, H, W) images into one uint8 array (rows, cols[, C]), ``nrow`` images per row
    (default: a square), ``pad`` image pixels of white between them, every pixel (and the padding)
    repeated ``upscale`` times in both directions. Values are mapped from ``data_range`` to 0..255 and clipped."""
    if images.dim() != 4 or images.shape[1] not in (1, 3, 4):
        raise ValueError(f"image_grid: need images (N, C, H, W) with C in (1, 3, 4), got {tuple(images.shape)}")
    lo, hi = (float(v) for v in data_range)
    a = ((images.detach().cpu().double() - lo) / (hi - lo)).clamp(0, 1).numpy()
    a = np.round(a * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    if upscale > 1:
        a = a.repeat(upscale, axis=1).repeat(upscale, axis=2)
    n, h, w, c = a.shape
    pad = pad * upscale
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for k in range(n):
        i, j = divmod(k, nrow)
        grid[pad + i * (h + pad):pad + i * (h + pad) + h, pad + j * (w + pad):pad + j * (w + pad) + w] = a[k]
    return grid[:, :, 0] if c == 1 else grid


def save_image_grid(images: torch.Tensor, path, data_range=(-1.0, 1.0), nrow: int | None = None, pad: int = 1,
                    upscale: int = 1) -> Path:
    """Write :func:`image_grid` as a PNG (with Pillow, or matplotlib when Pillow is missing)."""
    path = Path(path)
    grid = image_grid(images, data_range, nrow, pad, upscale)
    try:
        from PIL import Image
        Image.fromarray(grid).save(path)
    except ImportError:
        import matplotlib.image as mpimg
        mpimg.imsave(path, grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255)
    return path
