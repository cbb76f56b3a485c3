"""Distances between two sample sets `[N, d]`, in float64, each a python float.

* `sliced_wasserstein`: SW2 (Rabin et al. 2011, Bonneel et al. 2015); the 1-D W2 of each random projection is
  exact, from the two empirical quantile functions, for any two sample counts;
* `mmd`: the unbiased MMD^2 of Gretton et al. 2012, eq. 3, with a Gaussian kernel whose bandwidth is the median
  heuristic (`median_bandwidth`), or a multi-scale sum of Gaussian kernels;
* `frechet_distance`: the Frechet / 2-Wasserstein distance between the Gaussians fitted to two feature sets
  (Dowson & Landau 1982; the FID of Heusel et al. 2017, eq. 6, with an eigen-based matrix square root), also
  from statistics (`gaussian_stats`, `frechet_distance_from_stats`);
* `vector_report`: SW2 and MMD of samples against an exact reference draw (2-D toys, vector mixtures).

Every function checks its input and raises a one-line `ValueError` naming the bad argument.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..utils import check_choice, check_finite, check_positive_int

__all__ = ["sliced_wasserstein", "mmd", "median_bandwidth", "MMD_KERNELS", "frechet_distance",
           "frechet_distance_from_stats", "gaussian_stats", "vector_report"]


# ----------------------------------------------------------------------------------------------------------
# input checks

def _as_2d(x, name: str, min_rows: int = 1) -> torch.Tensor:
    """`x` (tensor or array) as a finite float64 `[N, d]` tensor, else a one-line `ValueError` naming `name`."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a tensor or array of shape [N, d], got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [N, d], got {tuple(x.shape)}")
    if x.shape[0] < min_rows or x.shape[1] < 1:
        raise ValueError(f"{name} needs at least {min_rows} row(s) and 1 column, got shape {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    return check_finite(x, name)


def _same_dim(x: torch.Tensor, y: torch.Tensor, names=("x", "y")) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same dimension, got {x.shape[1]} and {y.shape[1]}")


# ----------------------------------------------------------------------------------------------------------
# sliced Wasserstein-2

def _w2_squared_sorted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact squared W2 between the empirical measures of the rows' entries; `a` `[P, n]`, `b` `[P, m]`, sorted.

    `W2^2 = int_0^1 (F_a^-1(u) - F_b^-1(u))^2 du`, with both quantile functions piecewise constant and jumping at
    `i/n` and `j/m`. The breakpoints are merged in integer units of `1/lcm(n, m)`, so the integral is exact.
    """
    n, m = a.shape[1], b.shape[1]
    if n == m:
        return ((a - b) ** 2).mean(1)
    L = math.lcm(n, m)
    ka, kb = L // n, L // m
    k = torch.unique(torch.cat([torch.arange(1, n + 1) * ka, torch.arange(1, m + 1) * kb]))  # sorted, ends at L
    width = torch.diff(k, prepend=torch.zeros(1, dtype=k.dtype)).to(torch.float64) / L
    ia = (k + ka - 1) // ka - 1  # quantile index on (k_prev, k]: ceil(k n / L) - 1
    ib = (k + kb - 1) // kb - 1
    return ((a[:, ia] - b[:, ib]) ** 2 * width).sum(1)


def sliced_wasserstein(x, y, n_projections: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced Wasserstein-2 distance between two sample sets `x` `[N, d]` and `y` `[M, d]` (any N, M).

    `SW2 = (E_theta W2^2(theta . x, theta . y))^(1/2)` over directions `theta` uniform on the sphere
    (Rabin et al. 2011; Bonneel et al. 2015, eq. 5), estimated with `n_projections` directions drawn from
    `generator`. Each 1-D W2 is exact: the integral of the squared difference of the two empirical quantile
    functions. Computed in float64; returns a python float in the data's units.
    """
    x, y = _as_2d(x, "x"), _as_2d(y, "y")
    _same_dim(x, y)
    check_positive_int(n_projections, "n_projections")
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px = (x @ theta).T.sort(dim=1).values  # [P, N]
    py = (y @ theta).T.sort(dim=1).values  # [P, M]
    return float(_w2_squared_sorted(px, py).mean().sqrt())


# ----------------------------------------------------------------------------------------------------------
# MMD

MMD_KERNELS = ("rbf", "multiscale")
MULTISCALE_FACTORS = (0.2, 0.5, 1.0, 2.0, 5.0)  # bandwidths of the multi-scale kernel, times the base bandwidth


def median_bandwidth(x, max_points: int = 1000) -> float:
    """The median heuristic (Gretton et al. 2012, Sec. 8): the median pairwise Euclidean distance of `x` `[N, d]`,
    over at most `max_points` evenly spaced rows (deterministic)."""
    x = _as_2d(x, "x", min_rows=2)
    if x.shape[0] > max_points:
        x = x[torch.linspace(0, x.shape[0] - 1, max_points).round().long()]
    d = torch.cdist(x, x)
    iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    h = float(d[iu[0], iu[1]].median())
    if not h > 0:
        raise ValueError("the median pairwise distance is 0 (most points coincide); pass an explicit bandwidth")
    return h


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, block: int = 4_000_000) -> torch.Tensor:
    """`sum_ij mean_s exp(-|a_i - b_j|^2 / (2 h_s^2))`, in row chunks of at most `block` entries (32 MB)."""
    total = torch.zeros((), dtype=torch.float64)
    chunk = max(1, block // b.shape[0])
    for i in range(0, a.shape[0], chunk):
        d2 = torch.cdist(a[i:i + chunk], b).square()
        for h in scales.tolist():
            total = total + torch.exp(d2 * (-0.5 / h ** 2)).sum() / len(scales)
    return total


def mmd(x, y, kernel: str = "rbf", bandwidth: float | None = None) -> float:
    """Unbiased squared maximum mean discrepancy `MMD_u^2` between `x` `[N, d]` and `y` `[M, d]`
    (Gretton et al. 2012, eq. 3): `mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean_ij k(x_i, y_j)`.

    kernel="rbf":        `k(a, b) = exp(-|a - b|^2 / (2 h^2))`;
    kernel="multiscale": the mean of that kernel over `h * (0.2, 0.5, 1, 2, 5)`.
    bandwidth=None uses the median heuristic `h = median_bandwidth(concat(x, y))`; pass a fixed `h` to compare
    several sample sets against one reference (`vector_report` fixes it from the reference). Unbiased, so it
    can be slightly negative when the two distributions agree. Needs N, M >= 2.
    """
    x, y = _as_2d(x, "x", min_rows=2), _as_2d(y, "y", min_rows=2)
    _same_dim(x, y)
    check_choice(kernel, "kernel", MMD_KERNELS)
    if bandwidth is None:
        h = median_bandwidth(torch.cat([x, y]))
    elif isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not 0 < bandwidth < math.inf:
        raise ValueError(f"bandwidth must be a positive finite number or None (median heuristic), got {bandwidth!r}")
    else:
        h = float(bandwidth)
    factors = MULTISCALE_FACTORS if kernel == "multiscale" else (1.0,)
    scales = h * torch.tensor(factors, dtype=torch.float64)
    n, m = x.shape[0], y.shape[0]
    kxx = (_kernel_sum(x, x, scales) - n) / (n * (n - 1))  # k(a, a) = 1 on the diagonal
    kyy = (_kernel_sum(y, y, scales) - m) / (m * (m - 1))
    kxy = _kernel_sum(x, y, scales) / (n * m)
    return float(kxx + kyy - 2 * kxy)


# ----------------------------------------------------------------------------------------------------------
# Frechet distance

def gaussian_stats(feats, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean `[d]` and unbiased covariance `[d, d]` (float64) of features `[N, d]`, N >= 2.

    `weights` `[N]` (>= 0, summing to more than 1) are frequency weights: integer weights give the statistics of
    the rows repeated that often, and the covariance is normalised by `sum(weights) - 1`.
    """
    f = _as_2d(feats, "feats", min_rows=2)
    if weights is None:
        return f.mean(0), torch.cov(f.T, correction=1).reshape(f.shape[1], f.shape[1])
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != f.shape[:1] or not bool((w >= 0).all()) or not float(w.sum()) > 1:
        raise ValueError(f"weights must be [N] = [{f.shape[0]}], >= 0 and sum to more than 1, got shape "
                         f"{tuple(w.shape)} and sum {float(w.sum()) if w.numel() else 0.0}")
    mu = (w[:, None] * f).sum(0) / w.sum()
    d = f - mu
    return mu, (w[:, None] * d).T @ d / (w.sum() - 1)


def _psd_sqrt(c: torch.Tensor) -> torch.Tensor:
    lam, u = torch.linalg.eigh((c + c.T) / 2)
    return (u * lam.clamp_min(0).sqrt()) @ u.T


def frechet_distance_from_stats(mu1, cov1, mu2, cov2) -> float:
    """`|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^(1/2) C2 C1^(1/2))^(1/2))`: the squared 2-Wasserstein distance between
    `N(mu1, C1)` and `N(mu2, C2)` (Dowson & Landau 1982; Heusel et al. 2017, eq. 6).

    `tr (C1 C2)^(1/2)` is computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
    `C1^(1/2) C2 C1^(1/2)` (two `eigh` calls in float64, negative round-off clamped to 0): no complex parts and
    no failure on singular covariances, unlike a general `sqrtm`.
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    c1, c2 = (torch.as_tensor(c, dtype=torch.float64) for c in (cov1, cov2))
    d = mu1.shape[0]
    if mu2.shape != (d,) or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(f"means must be [d] and covariances [d, d] with one d, got {tuple(mu1.shape)}, "
                         f"{tuple(c1.shape)}, {tuple(mu2.shape)}, {tuple(c2.shape)}")
    for t, name in ((mu1, "mu1"), (mu2, "mu2"), (c1, "cov1"), (c2, "cov2")):
        check_finite(t, name)
    s1 = _psd_sqrt(c1)
    m = s1 @ c2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).square().sum() + torch.trace(c1) + torch.trace(c2) - 2 * tr_sqrt
    return float(fd.clamp_min(0))


def frechet_distance(x_feats, y_feats) -> float:
    """Frechet distance between the Gaussians fitted (mean, unbiased covariance) to two feature sets `[N, d]`,
    `[M, d]`, N, M >= 2 (the FID formula of Heusel et al. 2017, eq. 6, in float64)."""
    x, y = _as_2d(x_feats, "x_feats", min_rows=2), _as_2d(y_feats, "y_feats", min_rows=2)
    _same_dim(x, y, ("x_feats", "y_feats"))
    return frechet_distance_from_stats(*gaussian_stats(x), *gaussian_stats(y))


# ----------------------------------------------------------------------------------------------------------
# vectors: 2-D toys and vector mixtures

def vector_report(samples, reference, generator: torch.Generator | None = None, n_projections: int = 256,
                  kernel: str = "rbf") -> dict:
    """SW2 and MMD^2 of `samples` `[N, d]` against an exact `reference` draw `[M, d]`.

    MMD uses `kernel` ("rbf" or "multiscale") with the bandwidth fixed by the reference alone
    (`median_bandwidth(reference)`), so that all rows of a table share one kernel. SW2 projections come from
    `generator`: give every row a generator with the same seed (common random numbers) so that differences
    between rows are not projection noise.
    Returns `{"n", "sw2", "mmd", "bandwidth"}`.
    """
    x, ref = _as_2d(samples, "samples", min_rows=2), _as_2d(reference, "reference", min_rows=2)
    _same_dim(x, ref, ("samples", "reference"))
    h = median_bandwidth(ref)
    return {"n": x.shape[0], "sw2": sliced_wasserstein(x, ref, n_projections, generator=generator),
            "mmd": mmd(x, ref, kernel, bandwidth=h), "bandwidth": h}

