"""Digits at 32x32: scikit-learn's 8x8 digits upsampled 4x (bicubic), and the exact way back to 8x8.

Owns the `digits32` data set (the project's digits split, `data/digits.py`, each image upsampled by
`torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`; no download) and `digits32_to_digits`,
the downsampling under which the digits metrics score 32x32 images: the least-squares inverse of that upsampling.
Bicubic upsampling is separable and linear, `X32 = A X8 A^T` with `A` 32x8 of full column rank, so
`A^+ X32 A^+T` with the pseudo-inverse `A^+ = (A^T A)^-1 A^T` gives back `X8` exactly (to rounding): the FD floor
of real digits along the 32x32 path is the 8x8 floor. The images are not clipped: bicubic overshoot at the
digits' sharp edges puts pixels in about [-1.5, 1.5], and clipping them at +-1 would break the round trip
(docs/latent.md measures both). `residual_rms` is what the 8x8 view cannot see: the part of a 32x32 image
outside the span of upsampled digits (0 for real digits32).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from .digits import load_digits

__all__ = ["SCALE", "upsample_digits", "digits32_to_digits", "residual_rms", "load_digits32"]

SCALE = 4   # 8x8 -> 32x32


@lru_cache(maxsize=1)
def _operators() -> tuple[torch.Tensor, torch.Tensor]:
    """`(A, A^+)`: the 1-D bicubic upsampling matrix `[32, 8]` and its pseudo-inverse `[8, 32]` (float64)."""
    eye = torch.eye(8, dtype=torch.float64).reshape(8, 1, 8, 1)      # unit impulses along one axis
    cols = F.interpolate(eye.expand(8, 1, 8, 1).contiguous(), size=(8 * SCALE, 1), mode="bicubic",
                         align_corners=False)
    a = cols.reshape(8, 8 * SCALE).T.contiguous()
    return a, torch.linalg.pinv(a)


def upsample_digits(x: torch.Tensor) -> torch.Tensor:
    """8x8 digits (`[N, 64]` or `[N, 1, 8, 8]`) upsampled bicubically to `[N, 1, 32, 32]` (`A X A^T`)."""
    return F.interpolate(x.reshape(-1, 1, 8, 8), scale_factor=SCALE, mode="bicubic", align_corners=False)


def digits32_to_digits(x: torch.Tensor) -> torch.Tensor:
    """32x32 images `[N, 1, 32, 32]` (or `[N, 1024]`) as 8x8 digits `[N, 64]`: `A^+ X A^+T`, the least-squares
    inverse of `upsample_digits` (differentiable; in `x`'s dtype)."""
    if x.ndim < 2 or x[0].numel() != (8 * SCALE) ** 2:
        raise ValueError(f"digits32 images must have shape [N, 1, 32, 32] or [N, 1024], got {tuple(x.shape)}")
    _, pinv = _operators()
    p = pinv.to(x.device, x.dtype)
    return (p @ x.reshape(-1, 8 * SCALE, 8 * SCALE) @ p.T).reshape(-1, 64)


def residual_rms(x: torch.Tensor) -> float:
    """Root-mean-square of `x - upsample(digits32_to_digits(x))` over all pixels: the part of 32x32 images that
    the 8x8 metrics project away (0 up to rounding for real digits32)."""
    x = x.reshape(-1, 1, 8 * SCALE, 8 * SCALE).double()
    return float((x - upsample_digits(digits32_to_digits(x))).pow(2).mean().sqrt())


def load_digits32(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """`(x [N, 1, 32, 32] float32, labels [N])` of one split of the project's digits split."""
    x, y = load_digits(split)
    return upsample_digits(x), y
