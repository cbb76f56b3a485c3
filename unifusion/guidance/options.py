"""What the conditioning flags of `unifusion sample` mean: `--class 3 | 3,5 | all`, `--guidance W`,
`--guidance-interval lo,hi`, turned into per-sample labels and a guided denoiser (`classifier_free`).

`conditioning(model, n, classes=..., guidance=..., interval=...)` is the one entry point; every bad value raises a
one-line `ValueError` before anything is sampled or written (the CLI prints it and exits with code 2).
"""
from __future__ import annotations

import math

import torch

from .transforms import check_interval, check_scale, classifier_free, num_classes

__all__ = ["parse_classes", "parse_interval", "class_labels_for", "conditioning"]


def parse_classes(text: str, k: int) -> list[int]:
    """`"3"`, `"3,5"` or `"all"` as a list of classes of a model with `k` classes."""
    text = str(text).strip()
    if text == "all":
        return list(range(k))
    try:
        classes = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--class must be a class, a comma-separated list of classes or 'all', got {text!r}") from None
    bad = [c for c in classes if not 0 <= c < k]
    if bad:
        raise ValueError(f"--class {bad[0]} is out of range: this model has classes 0..{k - 1}")
    return classes


def parse_interval(text: str) -> tuple[float, float]:
    """`"lo,hi"` (VE sigma) as a checked guidance interval, `0 <= lo < hi`."""
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"--guidance-interval must be two numbers lo,hi, got {text!r}") from None
    if not (math.isfinite(lo) and 0 <= lo < hi):
        raise ValueError(f"--guidance-interval needs 0 <= lo < hi, got {text!r}")
    return check_interval((lo, hi))


def class_labels_for(classes: list[int], n: int) -> torch.Tensor:
    """`n` labels in blocks, one block per class in order (block sizes differ by at most one): sample `i` gets
    `classes[i * len(classes) // n]`, so a grid of the samples has one class per row."""
    return torch.tensor(classes, dtype=torch.long)[torch.arange(n) * len(classes) // n]


def conditioning(model, n: int, classes: str | None = None, guidance: float | None = None,
                 interval: str | None = None, guidable: bool = True):
    """`(model, labels, info)` for `n` samples from the flags: `labels` int64 `[n]` (None without `classes`),
    `model` wrapped in `classifier_free(model, guidance, interval=...)` when `guidance` is given, and `info` the
    flags for the run's record. `guidable=False` (a consistency model) refuses `guidance`."""
    used = [f for f, v in (("--class", classes), ("--guidance", guidance), ("--guidance-interval", interval))
            if v is not None]
    if not used:
        return model, None, {}
    k = num_classes(model)
    if not k:
        raise ValueError(f"{used[0]} needs a class-conditional model; this one has no class labels "
                         f"(train one with net.num_classes set)")
    if guidance is None and interval is not None:
        raise ValueError("--guidance-interval needs --guidance W")
    if guidance is not None:
        if not guidable:
            raise ValueError("--guidance applies to diffusion models; distil a guided consistency model with "
                             "`unifusion distill --guidance W` instead")
        check_scale(guidance, "--guidance")
        if classes is None:
            raise ValueError("--guidance needs --class (the classes to guide towards)")
    chosen = parse_classes(classes, k)
    info = {"classes": chosen}
    if guidance is not None:
        bounds = parse_interval(interval) if interval is not None else None
        model = classifier_free(model, guidance, interval=bounds)
        info.update(guidance=float(guidance), guidance_interval=list(bounds) if bounds else None)
    return model, class_labels_for(chosen, n), info
