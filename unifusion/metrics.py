"""Sample-quality metrics, each reported next to its noise floor.

This module owns
* distances between two sample sets `[N, d]`:
  `sliced_wasserstein` (SW2; Rabin et al. 2011, Bonneel et al. 2015: the 1-D W2 of each random projection is
  exact, from the two empirical quantile functions, for any two sample counts),
  `mmd` (unbiased MMD^2 of Gretton et al. 2012, eq. 3, with a Gaussian kernel whose bandwidth is the median
  heuristic, or a multi-scale sum of Gaussian kernels),
  `frechet_distance` (Frechet / 2-Wasserstein distance between the Gaussians fitted to two feature sets,
  Dowson & Landau 1982; the FID of Heusel et al. 2017, eq. 6, with an eigen-based matrix square root);
* `vector_report` / `vector_floor` for 2-D toys and vector mixtures (SW2, MMD against exact reference draws);
* `DigitsClassifier`: a small MLP trained deterministically on the digits training split
  (`scripts/train_digits_classifier.py`; weights shipped in `unifusion/assets/`), whose penultimate features
  define the digits Frechet distance, and the digits metrics `digits_fd`, `confident_fraction`,
  `nearest_neighbour_ratio` and `digits_report` (every number with the real-test-vs-train floor at the same
  sample count); `digits_class_report` for class-conditional samples (class agreement, FD per class).

Floors: a metric means little without the value a perfect model would get. For digits the floor is the same
metric for the real test split (360 images, unseen by model and classifier) against the training split at the
same sample count; FD, whose value depends on the count, is therefore taken over chunks of 360 samples, where
its floor is exact (`digits_report` explains each floor). The test split is stratified, so the FD floor is also
given with i.i.d. class counts (`class_count_weights`), the floor of an unconditional sampler. For vectors the
floor is the metric between a fresh exact draw and the reference.
"""
from __future__ import annotations

import functools
import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .utils import check_choice, check_finite, check_positive_int

__all__ = [
    "sliced_wasserstein", "mmd", "median_bandwidth", "frechet_distance", "frechet_distance_from_stats",
    "gaussian_stats", "class_count_weights", "fd_floor", "vector_report", "vector_floor",
    "DigitsClassifier", "FD_COUNT", "digits_fd", "confident_fraction", "nearest_neighbour_ratio", "copy_fraction",
    "digits_report", "digits_class_report",
    "MEMORIZATION_THRESHOLD", "CLASSIFIER_PATH",
]

ASSETS = Path(__file__).resolve().parent / "assets"
CLASSIFIER_PATH = ASSETS / "digits_classifier.safetensors"
MEMORIZATION_THRESHOLD = 0.5  # nearest-neighbour ratio below this flags memorization (see nearest_neighbour_ratio)


# ----------------------------------------------------------------------------------------------------------
# one thread

def _one_thread(fn):
    """Run `fn` with one torch thread (restored afterwards). The metrics' kernels are small (cdist of a few
    thousand rows, eigh of 64 x 64); on this project's shared 2-core machines multi-threading them was measured
    2-30x slower than one thread (over-subscription), and 64 x 64 `eigh` gains nothing from threads anyway."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        n = torch.get_num_threads()
        if n == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(n)
    return wrapper


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


@_one_thread
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


@_one_thread
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


@_one_thread
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

@_one_thread
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


@_one_thread
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


@_one_thread
def frechet_distance(x_feats, y_feats) -> float:
    """Frechet distance between the Gaussians fitted (mean, unbiased covariance) to two feature sets `[N, d]`,
    `[M, d]`, N, M >= 2 (the FID formula of Heusel et al. 2017, eq. 6, in float64)."""
    x, y = _as_2d(x_feats, "x_feats", min_rows=2), _as_2d(y_feats, "y_feats", min_rows=2)
    _same_dim(x, y, ("x_feats", "y_feats"))
    return frechet_distance_from_stats(*gaussian_stats(x), *gaussian_stats(y))


# ----------------------------------------------------------------------------------------------------------
# vectors: 2-D toys and vector mixtures

@_one_thread
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


@_one_thread
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


# ----------------------------------------------------------------------------------------------------------
# digits: a small classifier and its feature space

class DigitsClassifier(nn.Module):
    """A small MLP on the 64 pixels of an 8x8 digit in [-1, 1]: 64 -> 256 -> 64 (features) -> 10 classes.

    `features(x)` are the penultimate activations that define the digits Frechet distance (the role of the
    Inception pool features in FID, Heusel et al. 2017). `load()` returns the shipped weights, trained by
    `scripts/train_digits_classifier.py` on the digits training split only.
    """

    def __init__(self, hidden: int = 256, n_features: int = 64, n_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, hidden), nn.SiLU(), nn.Linear(hidden, n_features), nn.SiLU())
        self.head = nn.Linear(n_features, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features `[N, n_features]` of pixels `[N, 64]`."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits `[N, 10]` of pixels `[N, 64]`."""
        return self.head(self.body(x))

    @staticmethod
    def load(path: str | Path | None = None) -> "DigitsClassifier":
        """The classifier with weights from `path` (default: the shipped safetensors file), in eval mode.

        The default is cached: every call returns the same module. Weights are read with safetensors (no pickle).
        """
        return _load_classifier(str(path) if path is not None else str(CLASSIFIER_PATH))


@lru_cache(maxsize=4)
def _load_classifier(path: str) -> DigitsClassifier:
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"classifier weights not found: {p} (train them with scripts/train_digits_classifier.py)")
    meta_path = p.with_suffix(".json")
    kwargs = json.loads(meta_path.read_text()).get("arch", {}) if meta_path.is_file() else {}
    model = DigitsClassifier(**kwargs)
    try:
        state = load_file(str(p))
        model.load_state_dict(state)
    except Exception as e:  # truncated file, wrong tensors: one line naming the file
        raise ValueError(f"cannot load classifier weights from {p}: {type(e).__name__}: {e}") from None
    model.eval().requires_grad_(False)
    return model


def _digits_pixels(samples, name: str = "samples") -> torch.Tensor:
    """Digits `[N, 64]` or `[N, 1, 8, 8]` (tensor or array) as float32 `[N, 64]`, clipped to [-1, 1]."""
    if isinstance(samples, np.ndarray):
        samples = torch.from_numpy(samples)
    if not isinstance(samples, torch.Tensor):
        raise ValueError(f"{name} must be a tensor or array of shape [N, 64] or [N, 1, 8, 8], got {type(samples).__name__}")
    shape = tuple(samples.shape)
    if not ((len(shape) == 2 and shape[1] == 64) or (len(shape) == 4 and shape[1:] == (1, 8, 8))) or shape[0] < 1:
        raise ValueError(f"{name} must have shape [N, 64] or [N, 1, 8, 8] with N >= 1, got {shape}")
    x = samples.detach().to("cpu", torch.float32).reshape(shape[0], 64)
    return check_finite(x, name).clamp(-1.0, 1.0)


@torch.no_grad()
def _classify(x: torch.Tensor, clf: DigitsClassifier) -> tuple[torch.Tensor, torch.Tensor]:
    """`(features float64 [N, F], softmax probabilities [N, 10])`."""
    f = clf.features(x)
    return f.double(), torch.softmax(clf.head(f), dim=1)


@lru_cache(maxsize=1)
def _real_digits():
    """Cached real data under the shipped classifier: pixels, features and probabilities of both splits, plus the
    reference statistics of the training features and each test point's nearest-training-neighbour distance."""
    from .data.digits import load_digits

    clf = DigitsClassifier.load()
    x_tr, y_tr = load_digits("train")
    x_te, y_te = load_digits("test")
    f_tr, p_tr = _classify(x_tr, clf)
    f_te, p_te = _classify(x_te, clf)
    assert x_te.shape[0] == FD_COUNT, "the digits FD is taken at the test split's size"
    return {"x_train": x_tr, "x_test": x_te, "f_test": f_te, "p_test": p_te, "y_test": y_te,
            "class_probs": torch.bincount(y_tr, minlength=10).double() / y_tr.numel(),
            "train_stats": gaussian_stats(f_tr), "nn_test": _nn_distance(x_te, x_tr)}


@lru_cache(maxsize=8)
def _iid_fd_floor(n: int, seed: int) -> tuple[float, float]:
    """The digits FD floor at `n <= FD_COUNT` with i.i.d. class counts (`fd_floor` with labels): the test split
    is stratified, so its own FD lacks the class-count noise of `n` unconditional samples. It depends only on
    `(n, seed)`, so it is cached."""
    real = _real_digits()
    return fd_floor(real["f_test"], real["train_stats"], n, IID_FLOOR_REPEATS, torch.Generator().manual_seed(seed),
                    real["y_test"], real["class_probs"])


def _nn_distance(x: torch.Tensor, ref: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Euclidean distance (float64, pixel space) of each row of `x` to its nearest row of `ref`."""
    ref = ref.double()
    return torch.cat([torch.cdist(x[i:i + chunk].double(), ref).min(1).values for i in range(0, x.shape[0], chunk)])


FD_COUNT = 360  # samples per digits FD: the size of the test split, the count at which the floor is exact


def _fd_matched(f: torch.Tensor, train_stats) -> tuple[float, float]:
    """`(mean, std)` of the FD against the training statistics over the disjoint `FD_COUNT`-sample chunks of the
    features `f` (one FD of all rows when there are fewer)."""
    chunks = [f[i:i + FD_COUNT] for i in range(0, f.shape[0] - FD_COUNT + 1, FD_COUNT)] or [f]
    vals = [frechet_distance_from_stats(*gaussian_stats(c), *train_stats) for c in chunks]
    return float(np.mean(vals)), float(np.std(vals))


@_one_thread
def digits_fd(samples) -> float:
    """Digits Frechet distance: the FD between the classifier features of samples and those of the whole digits
    training split (1437 images), taken at the test split's count: the mean over disjoint chunks of 360 samples
    (a remainder is unused; with fewer than 360 samples, one FD of all of them).

    FD depends on the sample count (its covariance-estimation bias grows like `1/n`), so it is only comparable at
    one count; at 360 the floor, the same FD for the 360 real test images, is exact (`digits_report`).
    `samples`: `[N, 64]` or `[N, 1, 8, 8]` in [-1, 1], N >= 2. Lower is better.
    """
    x = _digits_pixels(samples)
    if x.shape[0] < 2:
        raise ValueError(f"digits_fd needs at least 2 samples, got {x.shape[0]}")
    f, _ = _classify(x, DigitsClassifier.load())
    return _fd_matched(f, _real_digits()["train_stats"])[0]


@_one_thread
def confident_fraction(samples, threshold: float = 0.9) -> float:
    """Fraction of `samples` the classifier labels with top-class softmax probability `> threshold`."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    _, p = _classify(_digits_pixels(samples), DigitsClassifier.load())
    return float((p.max(1).values > threshold).double().mean())


@_one_thread
def nearest_neighbour_ratio(samples) -> float:
    """Memorization check: `median_i d(s_i, train) / median_j d(t_j, train)`, where `d(., train)` is the Euclidean
    pixel distance to the nearest digits training image, `s_i` the samples and `t_j` the 360 real test images.

    About 1 for a model that generalizes like fresh data; near 0 when samples copy training images (a copy has
    distance 0); above 1 for samples farther from the data than real digits (blurry or broken samples).
    A ratio below `MEMORIZATION_THRESHOLD` (0.5) flags memorization: then more than half of the samples lie
    closer to a training image than the median real unseen digit does, by a factor 2.
    """
    d = _nn_distance(_digits_pixels(samples), _real_digits()["x_train"])
    return float(d.median() / _real_digits()["nn_test"].median())


@_one_thread
def copy_fraction(samples) -> float:
    """Fraction of `samples` closer (Euclidean, pixels) to a training image than every one of the 360 real test
    images is. A model that draws fresh digits from the data distribution scores about `1/361` (exchangeability:
    a fresh draw is the nearest of 361 with probability 1/361); copies of training images score near 1."""
    d = _nn_distance(_digits_pixels(samples), _real_digits()["x_train"])
    return float((d < _real_digits()["nn_test"].min()).double().mean())


FLOOR_FIT_COUNTS = (120, 180, 240, 300, 360)  # sub-counts of the test split for the 1/n fit of the FD floor
IID_FLOOR_REPEATS = 200  # class-count draws behind the digits i.i.d. floor (it does not depend on the samples: cached)


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


@_one_thread
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


@_one_thread
def digits_report(samples, n: int | None = None, floor_repeats: int = 10, seed: int = 0,
                  generator: torch.Generator | None = None) -> dict:
    """All digits metrics of the first `n` samples (default: all), each with its noise floor at the same count.

    Floors are the same metric for real unseen digits, the test split, against the training split:
    * `fd` is `digits_fd` (mean FD over 360-sample chunks; `fd_chunk_std` its spread over chunks) and `fd_floor`
      the FD of the 360 test images, both at one count: `fd_ratio = fd / fd_floor` would be about 1 for a model
      that draws the test split's class counts exactly (an unconditional sampler of the data distribution scores
      about 1.5, see `fd_floor_iid`). With `n < 360` both use `n` (the floor averaged over
      `floor_repeats` test subsets, `fd_floor_std` their spread);
    * `fd_floor_iid` (+- `fd_floor_iid_std`, the spread of single draws) is that floor for draws with i.i.d.
      class counts (`class_count_weights`; the mean of `IID_FLOOR_REPEATS` draws, seeded by `seed`): the test split
      is stratified (exactly the training class proportions), so `fd_floor` lacks the class-count noise that every
      chunk of unconditional samples has, and is lower than a perfect unconditional sampler's expected FD;
      `fd_ratio_iid = fd / fd_floor_iid` is about 1 for such a sampler (docs/metrics.md measures both);
    * `fd_all` is the FD of all `n` samples at once and `fd_all_floor` (+- `fd_all_floor_std`) the estimate of
      the floor at `n` from the `1/n` fit of `fd_floor` (only an estimate above 360: its std is about 1 at n = 2000);
    * confident fraction and nearest-neighbour ratio floors: `n` test images resampled (without replacement up
      to 360, with replacement above; unbiased for these statistics), averaged over `floor_repeats` draws from
      `seed`; the copy-fraction floor is `1/361`.
    The floor resamples come from `generator` (None: a fresh generator seeded with `seed`, so that repeated
    reports of one run share their floors).
    """
    x = _digits_pixels(samples)
    if n is None:
        n = x.shape[0]
    check_positive_int(n, "n")
    check_positive_int(floor_repeats, "floor_repeats")
    if not 2 <= n <= x.shape[0]:
        raise ValueError(f"n must be in [2, {x.shape[0]}] (the number of samples given), got {n}")
    x = x[:n]
    real = _real_digits()
    f, p = _classify(x, DigitsClassifier.load())
    nn_s = _nn_distance(x, real["x_train"])
    nn_t = real["nn_test"]
    n_test = nn_t.shape[0]
    train_stats = real["train_stats"]
    conf_of = lambda probs: float((probs.max(1).values > 0.9).double().mean())
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    fd, fd_chunk_std = _fd_matched(f, train_stats)
    floor, floor_std = fd_floor(real["f_test"], train_stats, min(n, n_test), floor_repeats, g)
    iid_floor, iid_floor_std = _iid_fd_floor(min(n, n_test), seed)
    all_floor, all_floor_std = fd_floor(real["f_test"], train_stats, n, floor_repeats, g)
    conf_floor, nn_floor = [], []
    for _ in range(floor_repeats):
        idx = torch.randperm(n_test, generator=g)[:n] if n <= n_test else torch.randint(n_test, (n,), generator=g)
        conf_floor.append(conf_of(real["p_test"][idx]))
        nn_floor.append(float(nn_t[idx].median() / nn_t.median()))
    nn_ratio = float(nn_s.median() / nn_t.median())
    return {
        "n": n,
        "fd": fd,
        "fd_floor": floor,
        "fd_ratio": fd / floor,
        "fd_count": min(n, n_test),
        "fd_chunk_std": fd_chunk_std,
        "fd_floor_std": floor_std,
        "fd_floor_iid": iid_floor,
        "fd_floor_iid_std": iid_floor_std,
        "fd_ratio_iid": fd / iid_floor,
        "fd_all": frechet_distance_from_stats(*gaussian_stats(f), *train_stats),
        "fd_all_floor": all_floor,
        "fd_all_floor_std": all_floor_std,
        "confident_fraction": conf_of(p),
        "confident_fraction_floor": float(np.mean(conf_floor)),
        "nn_ratio": nn_ratio,
        "nn_ratio_floor": float(np.mean(nn_floor)),
        "copy_fraction": float((nn_s < nn_t.min()).double().mean()),
        "copy_fraction_floor": 1.0 / (n_test + 1),
        "memorization": nn_ratio < MEMORIZATION_THRESHOLD,
    }


@_one_thread
def digits_class_report(samples, labels, seed: int = 0) -> dict:
    """Metrics of class-conditional digits: sample `i` was asked to be digit `labels[i]`.

    * `agreement`: the fraction the shipped classifier assigns to the requested class (`agreement_per_class` per
      class); its floor `agreement_floor` is the classifier's accuracy on the real test split;
    * `fd_per_class[c]`: the FD between class-`c` samples and the class-`c` training digits, taken like `digits_fd`
      at the count of class `c` in the test split (about 36: the mean over disjoint chunks of that size), with the
      exact floor `fd_floor_per_class[c]` (the class-`c` test digits against the same training digits);
    * the keys of `digits_report` for all samples, reordered class by class (round robin) so that each 360-sample
      chunk holds every class equally: with balanced labels `fd` is then comparable with the stratified
      `fd_floor` (the floor of a sampler that draws the test split's class counts), `fd_floor_iid` is given too.
    `labels`: int64 `[N]` in 0..9; `seed` seeds the floors' resampling (`digits_report`).
    """
    x = _digits_pixels(samples)
    y = torch.as_tensor(labels)
    if y.shape != (x.shape[0],) or y.is_floating_point() or not bool(((y >= 0) & (y < 10)).all()):
        raise ValueError(f"labels must be {x.shape[0]} integers in 0..9, got shape {tuple(y.shape)}")
    real, clf = _real_digits(), DigitsClassifier.load()
    f, p = _classify(x, clf)
    from .data.digits import load_digits
    x_tr, y_tr = load_digits("train")
    f_tr = _classify(x_tr, clf)[0]
    hit = (p.argmax(1) == y).double()
    per_class, floors, agree = {}, {}, {}
    for c in sorted(set(y.tolist())):
        m = int((real["y_test"] == c).sum())
        ref = gaussian_stats(f_tr[y_tr == c])
        fc = f[y == c]
        chunks = [fc[i:i + m] for i in range(0, fc.shape[0] - m + 1, m)] or [fc]
        per_class[c] = float(np.mean([frechet_distance_from_stats(*gaussian_stats(ch), *ref) for ch in chunks]))
        floors[c] = frechet_distance_from_stats(*gaussian_stats(real["f_test"][real["y_test"] == c]), *ref)
        agree[c] = float(hit[y == c].mean())
    rank = torch.zeros_like(y)
    for c in set(y.tolist()):
        rank[y == c] = torch.arange(int((y == c).sum()))
    order = torch.argsort(rank * 10 + y)                    # round robin over the classes
    rep = digits_report(x[order], seed=seed)
    return dict(rep, agreement=float(hit.mean()), agreement_per_class=agree,
                agreement_floor=float((real["p_test"].argmax(1) == real["y_test"]).double().mean()),
                fd_per_class=per_class, fd_floor_per_class=floors)
