"""Noise floors: the value a metric takes for a perfect model, against which every reported metric stands.

* `vector_floor`: `vector_report` (SW2, MMD) of fresh exact draws against the same reference, mean and spread
  over repeated draws;
* `fd_floor`: the Frechet distance of `n` real held-out points against reference statistics, from a pool of
  real features; above the pool size, the `1/n` extrapolation of Chong & Forsyth 2020;
* `class_count_weights`: frequency weights that turn a stratified labelled pool into a draw with i.i.d. class
  counts, the floor of an unconditional sampler.
"""
from __future__ import annotations

import numpy as np
import torch

from ..utils import check_positive_int
from .distances import frechet_distance_from_stats, gaussian_stats, vector_report

__all__ = ["vector_floor", "fd_floor", "class_count_weights", "FLOOR_FIT_COUNTS"]

FLOOR_FIT_COUNTS = (120, 180, 240, 300, 360)  # sub-counts of the test split for the 1/n fit of the FD floor


def vector_floor(sampler, reference, n: int, generator: torch.Generator | None = None, n_projections: int = 256,
                 kernel: str = "rbf", repeats: int = 5) -> dict:
    """The noise floor of `vector_report`: the same metrics for `n` fresh exact draws against `reference`, the
    mean over `repeats` independent draws (`sw2_std`, `mmd_std`: their spread; one draw's SW2 on a mixture
    fluctuates by 20-40%, as the mixture weights of a finite draw do).

    `sampler` is an oracle with `.sample(n, generator=...)` (e.g. `GaussianMixture`) or a callable
    `sampler(n, generator) -> [n, d]`; the draws must be independent of `reference`.
    Returns `{"n", "sw2", "sw2_std", "mmd", "mmd_std", "bandwidth", "repeats"}`.
    """
    check_positive_int(n, "n")
    check_positive_int(repeats, "repeats")
    reps = []
    for _ in range(repeats):
        draw = sampler.sample(n, generator=generator) if hasattr(sampler, "sample") else sampler(n, generator)
        reps.append(vector_report(draw, reference, generator, n_projections, kernel))
    out = {k: float(np.mean([r[k] for r in reps])) for k in ("sw2", "mmd")}
    out.update({f"{k}_std": float(np.std([r[k] for r in reps])) for k in ("sw2", "mmd")})
    return {"n": n, **out, "bandwidth": reps[0]["bandwidth"], "repeats": repeats}


def class_count_weights(labels: torch.Tensor, class_probs: torch.Tensor, n: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Frequency weights `[P]` (summing to `n`) over a labelled pool that turn it into a draw of `n` points with
    i.i.d. class counts, `c ~ Multinomial(n, class_probs)`, as an unconditional sampler's `n` samples have.

    A class with `c_k` at most its pool count `P_k` contributes `c_k` of its points drawn without replacement
    (weight 1); a class with more contributes all its points, each with weight `c_k / P_k` (weighting rather than
    duplicating, which would add covariance noise). A stratified pool (the digits test split) has the expected
    counts exactly and so lacks the class-count noise every sample of an unconditional model has.
    """
    check_positive_int(n, "n")
    probs = torch.as_tensor(class_probs, dtype=torch.float64)
    if probs.ndim != 1 or not bool((probs >= 0).all()) or abs(float(probs.sum()) - 1) > 1e-6:
        raise ValueError(f"class_probs must be a 1-D vector of probabilities summing to 1, got {probs.tolist()}")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or not bool(((labels >= 0) & (labels < probs.numel())).all()):
        raise ValueError(f"labels must be a 1-D integer vector of classes 0..{probs.numel() - 1}")
    missing = [k for k in range(probs.numel()) if probs[k] > 0 and not bool((labels == k).any())]
    if missing:
        raise ValueError(f"classes {missing} have probability > 0 but no points in the pool")
    counts = torch.bincount(torch.multinomial(probs, n, replacement=True, generator=generator),
                            minlength=probs.numel())
    w = torch.zeros(labels.shape[0], dtype=torch.float64)
    for k, c in enumerate(counts.tolist()):
        idx = (labels == k).nonzero().flatten()
        if c <= idx.numel():
            w[idx[torch.randperm(idx.numel(), generator=generator)[:c]]] = 1.0
        else:
            w[idx] = c / idx.numel()
    return w


def fd_floor(pool_feats: torch.Tensor, ref_stats, n: int, repeats: int = 10,
             generator: torch.Generator | None = None, labels: torch.Tensor | None = None,
             class_probs: torch.Tensor | None = None) -> tuple[float, float]:
    """`(mean, std)` of the FD between `n` real points and the reference, from a pool of `P` held-out real features.

    `n <= P`: the mean over `repeats` subsets of `n` pool points drawn without replacement (an exact draw of `n`
    real points when the pool is an i.i.d. sample; for a stratified pool, one with the pool's class proportions).
    With the pool's `labels` `[P]` and `class_probs` `[K]`, each draw instead has i.i.d. class counts
    (`class_count_weights`), the floor of an unconditional sampler.
    `n > P`: FD grows with `1/n` at small counts (the finite-sample bias of the covariance estimate; Chong &
    Forsyth 2020, "Effectively Unbiased FID", fit `FID_N = a + b/N`), so
    `a + b/m` is fitted to subsets of `m = FLOOR_FIT_COUNTS` (scaled to `P`) points and evaluated at `m = n`;
    the std is that of the per-repeat fits, and the mean is clamped at 0. The fit is an estimate: when `P` is
    small its std can be as large as the value (digits: about 1 at n = 2000), which is why `digits_fd` is taken
    at the pool size instead. (Resampling `n` points with replacement would inflate the floor instead:
    the duplicates add covariance noise; docs/metrics.md has the check.)
    """
    P = pool_feats.shape[0]
    if (labels is None) != (class_probs is None):
        raise ValueError("fd_floor takes labels and class_probs together (both or neither)")

    def fd_of(m: int) -> float:
        """The FD of one draw of `m` pool points."""
        if labels is None:
            stats = gaussian_stats(pool_feats[torch.randperm(P, generator=generator)[:m]])
        else:
            stats = gaussian_stats(pool_feats, class_count_weights(labels, class_probs, m, generator))
        return frechet_distance_from_stats(*stats, *ref_stats)

    if n <= P:
        vals = [fd_of(n) for _ in range(repeats)]
        return float(np.mean(vals)), float(np.std(vals))
    ms = sorted({max(2, round(m * P / FLOOR_FIT_COUNTS[-1])) for m in FLOOR_FIT_COUNTS})
    table = np.array([[fd_of(m) for m in ms] for _ in range(repeats)])
    fits = [np.polyval(np.polyfit(1.0 / np.array(ms), row, 1), 1.0 / n) for row in table]
    b, a = np.polyfit(1.0 / np.array(ms), table.mean(0), 1)
    return max(0.0, float(a + b / n)), float(np.std(fits))

