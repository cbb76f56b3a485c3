"""The PNG that `unifusion sample` writes next to its `.npz`: an image grid for images, a scatter plot for vectors
(drawn by `unifusion.plots`, the project's one home for figures)."""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["save_picture", "as_images"]


def as_images(samples: torch.Tensor, data_shape) -> torch.Tensor | None:
    """`[N, C, H, W]` images if the data are images (or 64-d digits vectors), else None."""
    shape = tuple(data_shape)
    if len(shape) == 3:
        return samples.reshape(-1, *shape)
    if shape == (64,):
        return samples.reshape(-1, 1, 8, 8)
    return None


def save_picture(samples: torch.Tensor, path, data_shape, title: str = "", max_images: int = 100) -> Path:
    """Write `path` (PNG): a grid of up to `max_images` images, or a scatter of the first two coordinates."""
    from ..plots import save_image_grid, save_scatter

    imgs = as_images(samples, data_shape)
    if imgs is not None:
        return save_image_grid(imgs[:max_images], path, title=title or None)
    x = samples.reshape(samples.shape[0], -1)
    points = x[:, :2] if x.shape[1] >= 2 else torch.cat([x, torch.zeros_like(x)], 1)
    return save_scatter(points, path, title=title or None)
