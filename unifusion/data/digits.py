"""scikit-learn's bundled 8x8 digits (1797 real images, no download) with the project's fixed split.

Owns the one definition of the digits train/test split that training, metrics and the shipped
classifier all share: a stratified 80/20 split with a fixed seed (`sklearn.model_selection.train_test_split`,
`test_size=0.2`, `random_state=0`, `stratify=labels`): 1437 training and 360 test images.
Pixels (0..16) are scaled to [-1, 1] as `x / 8 - 1`.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..utils import check_choice

__all__ = ["digits_split", "load_digits"]

SPLIT_SEED = 0
TEST_FRACTION = 0.2


@lru_cache(maxsize=1)
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`(x_train, y_train, x_test, y_test)`: float32 pixels in [-1, 1], shape `[N, 64]`, and int64 labels."""
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    d = _sk_digits()
    x = (d.data.astype(np.float32) / 8.0 - 1.0)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    for a in (x_tr, x_te, y_tr, y_te):
        a.setflags(write=False)
    return x_tr, y_tr, x_te, y_te


def load_digits(split: str = "train", as_images: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits of one split as tensors: `x` `[N, 64]` (or `[N, 1, 8, 8]` with `as_images=True`) in [-1, 1], labels
    `[N]`."""
    check_choice(split, "split", ("train", "test"))
    x_tr, y_tr, x_te, y_te = digits_split()
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    x = torch.from_numpy(x.copy())
    if as_images:
        x = x.reshape(-1, 1, 8, 8)
    return x, torch.from_numpy(y.copy())
