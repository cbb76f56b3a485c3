"""Digits metrics in the features of a small shipped classifier, each beside its noise floor.

`DigitsClassifier` is an MLP trained deterministically on the digits training split
(`scripts/train_digits_classifier.py`; weights shipped in `unifusion/assets/`); its penultimate features define
the digits Frechet distance, the role of the Inception features in FID. Metrics: `digits_fd`,
`confident_fraction`, `nearest_neighbour_ratio`, `copy_fraction` and `digits_report` (all of them, each with
the real-test-vs-train floor at the same sample count); `digits_class_report` for class-conditional samples
(class agreement, FD per class).

The floor is the same metric for the real test split (360 images, unseen by model and classifier) against the
training split at the same sample count; FD, whose value depends on the count, is therefore taken over chunks of
`FD_COUNT` = 360 samples, where its floor is exact (`digits_report` explains each floor). The test split is
stratified, so the FD floor is also given with i.i.d. class counts (`floors.class_count_weights`), the floor of
an unconditional sampler.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..utils import check_finite, check_positive_int
from .distances import frechet_distance_from_stats, gaussian_stats
from .floors import fd_floor

__all__ = ["DigitsClassifier", "CLASSIFIER_PATH", "FD_COUNT", "MEMORIZATION_THRESHOLD", "IID_FLOOR_REPEATS",
           "digits_fd", "confident_fraction", "nearest_neighbour_ratio", "copy_fraction", "digits_report",
           "digits_class_report"]

CLASSIFIER_PATH = Path(__file__).resolve().parents[1] / "assets" / "digits_classifier.safetensors"
MEMORIZATION_THRESHOLD = 0.5  # nearest-neighbour ratio below this flags memorization (see nearest_neighbour_ratio)
FD_COUNT = 360  # samples per digits FD: the size of the test split, the count at which the floor is exact
IID_FLOOR_REPEATS = 200  # class-count draws behind the digits i.i.d. floor (it does not depend on the samples: cached)


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
        raise ValueError(f"{name} must be a tensor or array of shape [N, 64] or [N, 1, 8, 8], got "
                         f"{type(samples).__name__}")
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
    from ..data.digits import load_digits

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


def _fd_matched(f: torch.Tensor, train_stats) -> tuple[float, float]:
    """`(mean, std)` of the FD against the training statistics over the disjoint `FD_COUNT`-sample chunks of the
    features `f` (one FD of all rows when there are fewer)."""
    chunks = [f[i:i + FD_COUNT] for i in range(0, f.shape[0] - FD_COUNT + 1, FD_COUNT)] or [f]
    vals = [frechet_distance_from_stats(*gaussian_stats(c), *train_stats) for c in chunks]
    return float(np.mean(vals)), float(np.std(vals))


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


def confident_fraction(samples, threshold: float = 0.9) -> float:
    """Fraction of `samples` the classifier labels with top-class softmax probability `> threshold`."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    _, p = _classify(_digits_pixels(samples), DigitsClassifier.load())
    return float((p.max(1).values > threshold).double().mean())


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


def copy_fraction(samples) -> float:
    """Fraction of `samples` closer (Euclidean, pixels) to a training image than every one of the 360 real test
    images is. A model that draws fresh digits from the data distribution scores about `1/361` (exchangeability:
    a fresh draw is the nearest of 361 with probability 1/361); copies of training images score near 1."""
    d = _nn_distance(_digits_pixels(samples), _real_digits()["x_train"])
    return float((d < _real_digits()["nn_test"].min()).double().mean())




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
    from ..data.digits import load_digits
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
