"""Denoiser transforms: a transform takes a VE-coordinate denoiser `D(x, sigma, **kw)` and returns another one,
`D'(x, sigma, **kw)`, that any sampler can use in its place.

* `clip_x0`           static thresholding, `D' = clamp(D, -bound, bound)`: DDPM's `clip_denoised` (Ho et al. 2020,
                      official code) and Imagen's static thresholding (Saharia et al. 2022, Sec. 2.3);
* `dynamic_threshold` Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3): per example,
                      `s = max(bound, quantile_p |D|)`, `D' = clamp(D, -s, s) * bound / s`.

For data within `[-bound, bound]` the exact denoiser (a posterior mean, inside the data's convex hull) already lies
in that range, so both transforms leave it unchanged. They act where a network's estimate leaves the data's range:
an eps-prediction network's `D = (x_t - sigma eps) / alpha` carries its error multiplied by `sigma / alpha`, which is
large at high noise and wherever the network extrapolates.

A transformed denoiser reads any attribute it does not have (`process`, `data_shape`, ...) from the one it wraps.
"""
from __future__ import annotations

from typing import Callable

import torch

from .utils import expand_like

__all__ = ["DenoiserTransform", "clip_x0", "dynamic_threshold"]


def _check_bound(bound) -> float:
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0 < bound < float("inf"):
        raise ValueError(f"bound must be a positive finite number, got {bound!r}")
    return float(bound)


class DenoiserTransform:
    """`D'(x, sigma, **kw) = self.transform(D(x, sigma, **kw))`; attributes it lacks are read from `D`."""

    def __init__(self, denoiser: Callable):
        if not callable(denoiser):
            raise ValueError(f"denoiser must be callable as D(x, sigma), got {type(denoiser).__name__}")
        self.denoiser = denoiser

    def __call__(self, x: torch.Tensor, sigma, **kw) -> torch.Tensor:
        return self.transform(self.denoiser(x, sigma, **kw))

    def transform(self, x0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __getattr__(self, name):
        if name == "denoiser":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.denoiser, name)


class _Clip(DenoiserTransform):
    def __init__(self, denoiser, bound):
        super().__init__(denoiser)
        self.bound = _check_bound(bound)

    def transform(self, x0):
        return x0.clamp(-self.bound, self.bound)

    def __repr__(self):
        return f"clip_x0({self.denoiser!r}, bound={self.bound:g})"


class _DynamicThreshold(DenoiserTransform):
    def __init__(self, denoiser, percentile, bound):
        super().__init__(denoiser)
        if not 0 < percentile <= 1:
            raise ValueError(f"percentile must lie in (0, 1], got {percentile!r}")
        self.percentile, self.bound = float(percentile), _check_bound(bound)

    def transform(self, x0):
        flat = x0.reshape(x0.shape[0], -1).abs().float()
        s = expand_like(torch.quantile(flat, self.percentile, dim=1).clamp_min(self.bound), x0).to(x0.dtype)
        return torch.maximum(torch.minimum(x0, s), -s) * (self.bound / s)

    def __repr__(self):
        return f"dynamic_threshold({self.denoiser!r}, percentile={self.percentile:g}, bound={self.bound:g})"


def clip_x0(denoiser: Callable, bound: float = 1.0) -> DenoiserTransform:
    """Static thresholding: `D'(x, sigma) = clamp(D(x, sigma), -bound, bound)`.

    Args:
        denoiser: any VE-coordinate denoiser `D(x, sigma, **kw)`.
        bound:    the data's range is `[-bound, bound]` (1 for images scaled to [-1, 1]).
    """
    return _Clip(denoiser, bound)


def dynamic_threshold(denoiser: Callable, percentile: float = 0.995, bound: float = 1.0) -> DenoiserTransform:
    """Dynamic thresholding (Saharia et al. 2022, Sec. 2.3): per example, `s = max(bound, quantile_p |D|)` over
    its entries, then `D' = clamp(D, -s, s) * bound / s`, so `D'` lies in `[-bound, bound]`. Where at most a
    fraction `1 - p` of an example's entries leave the range, `s = bound` and this is `clip_x0`; where more do, the
    example is shrunk towards 0 instead of flattened at the bound.

    Args:
        denoiser:   any VE-coordinate denoiser `D(x, sigma, **kw)`.
        percentile: `p` in (0, 1]; Imagen uses 0.995 (diffusers' `dynamic_thresholding_ratio`); 1 takes the max.
        bound:      the data's range is `[-bound, bound]` (Imagen: 1, images in [-1, 1]).
    """
    return _DynamicThreshold(denoiser, percentile, bound)
