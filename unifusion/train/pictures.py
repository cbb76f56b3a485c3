"""The PNG that `unifusion sample` writes next to its `.npz`: an image grid for images (one row per class for
class-conditional samples), a scatter plot for vectors (drawn by `unifusion.plots`, the project's one home for
figures)."""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["save_picture", "as_images", "class_rows"]


def as_images(samples: torch.Tensor, data_shape) -> torch.Tensor | None:
    """`[N, C, H, W]` images if the data are images (or 64-d digits vectors), else None."""
    shape = tuple(data_shape)
    if len(shape) == 3:
        return samples.reshape(-1, *shape)
    if shape == (64,):
        return samples.reshape(-1, 1, 8, 8)
    return None


def class_rows(images: torch.Tensor, labels: torch.Tensor, per_row: int = 10) -> torch.Tensor:
    """Images `[N, C, H, W]` rearranged for a grid of `per_row` columns with one row per class (classes in
    increasing order, the first `per_row` images of each; short rows are filled with blank images of value -1)."""
    rows = []
    for c in torch.unique(labels).tolist():
        imgs = images[labels == c][:per_row]
        rows += [imgs, torch.full((per_row - imgs.shape[0], *images.shape[1:]), -1.0, dtype=images.dtype)]
    return torch.cat(rows)


def save_picture(samples: torch.Tensor, path, data_shape, title: str = "", max_images: int = 100,
                 labels: torch.Tensor | None = None) -> Path:
    """Write `path` (PNG): a grid of up to `max_images` images (with `labels`: up to 10 per class, one row per
    class), or a scatter of the first two coordinates."""
    from ..plots import save_image_grid, save_scatter

    imgs = as_images(samples, data_shape)
    if imgs is not None and labels is not None:
        return save_image_grid(class_rows(imgs, labels), path, nrow=10, title=title or None)
    if imgs is not None:
        return save_image_grid(imgs[:max_images], path, title=title or None)
    x = samples.reshape(samples.shape[0], -1)
    points = x[:, :2] if x.shape[1] >= 2 else torch.cat([x, torch.zeros_like(x)], 1)
    return save_scatter(points, path, title=title or None)
