"""Guidance as denoiser transforms: a guided model is again a VE-coordinate denoiser `D(x, sigma, class_labels=y)`,
so every ODE, SDE and consistency sampler (and consistency distillation's teacher step) takes it unchanged.

* `classifier_free(denoiser, scale, interval=None)` (Ho & Salimans 2022, eq. 6 written for the denoiser):
  `D_w = D(x, sigma) + w (D(x, sigma, y) - D(x, sigma))`, the conditional and unconditional ("no label", -1)
  evaluations stacked into **one** batched call; with `interval=(lo, hi)` guidance acts only for
  `lo <= sigma <= hi` and the conditional denoiser is used elsewhere (Kynkäänniemi et al. 2024).
  `D` is affine in `eps` and in the score at fixed `(x, sigma)`, so the same formula holds for every
  parametrization: `eps_w = eps_u + w (eps_c - eps_u)` and `score_w = score_u + w (score_c - score_u)`.
* `classifier(denoiser, classifier, scale)` (Dhariwal & Nichol 2021, Sec. 4.1): the score shift
  `scale * grad_x log p(y | x, sigma)` written in VE coordinates through Tweedie's formula `D = x + sigma^2 score`:
  `D_s = D(x, sigma) + scale * sigma^2 * grad_x log p(y | x, sigma)`.
* `num_classes(model)`: how many labels a denoiser or classifier knows (0: unconditional).

Labels are int64 `[B]`, `-1` meaning "no label"; a row with `-1` is returned unguided (the unconditional answer).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
from torch import nn

from ..nets.embedding import NoiseEmbedding
from ..parametrization import _per_example
from ..utils import check_class_labels, coef

__all__ = ["classifier_free", "classifier", "ClassifierFree", "ClassifierGuided", "num_classes", "check_labels",
           "check_scale", "check_interval"]


def num_classes(model) -> int | None:
    """The number of class labels `model` takes: its `num_classes` attribute (oracles, guided and classifier
    wrappers), else that of the label embedding inside a network module (0: unconditional); None when it cannot
    tell (a plain function), in which case labels are checked only for shape and dtype."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    if isinstance(model, nn.Module):
        for m in model.modules():
            if isinstance(m, NoiseEmbedding):
                return m.num_classes
    return None


def check_scale(scale, name: str = "guidance scale") -> float:
    """A guidance scale: a finite number >= 0, else `ValueError` naming it."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (0 <= scale < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {scale!r}")
    return float(scale)


def check_interval(interval) -> tuple[float, float] | None:
    """A guidance interval `(lo, hi)` in sigma with `0 <= lo < hi` (`hi` may be inf), or None."""
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance interval must be two numbers (lo, hi), got {interval!r}") from None
    if not (0 <= lo < hi) or math.isnan(hi):
        raise ValueError(f"guidance interval must have 0 <= lo < hi, got ({lo!r}, {hi!r})")
    return lo, hi


def check_labels(model, y, batch: int, device=None) -> torch.Tensor:
    """`y` as int64 `[batch]` class labels of `model` (in `[-1, num_classes(model) - 1]`); labels for an
    unconditional model, or of the wrong shape, dtype or range, raise `ValueError`."""
    n = num_classes(model)
    if n == 0:
        raise ValueError("class_labels were given to an unconditional model (it has no label embedding); "
                         "train one with net.num_classes set")
    return check_class_labels(y, batch, n if n is not None else 2 ** 62, device)


def _as_given(sigma, x: torch.Tensor) -> torch.Tensor:
    """Sigma as a `[B]` tensor in the dtype it came in (float64 for python numbers): the model gets what the
    sampler handed over."""
    s = _per_example(sigma, x)
    return s.to(sigma.dtype) if isinstance(sigma, torch.Tensor) else s


class ClassifierFree(nn.Module):
    """`D_w(x, sigma, class_labels=y) = D_u + w (D_c - D_u)` with `D_c = D(x, sigma, class_labels=y)` and
    `D_u = D(x, sigma, class_labels=-1)` from one call of `denoiser` on the stacked batch (see `classifier_free`).

    Rows that need no unconditional value (label -1, sigma outside the interval, or `w = 1`) are not duplicated,
    so an evaluation costs one call on a batch of `B` to `2B` rows. Without `class_labels` it is `denoiser`.
    """

    def __init__(self, denoiser: Callable, scale: float, interval=None):
        super().__init__()
        self.denoiser, self.scale, self.interval = denoiser, check_scale(scale), check_interval(interval)
        self.process = getattr(denoiser, "process", None)      # the sampling grid's default range
        self.num_classes = num_classes(denoiser)

    def forward(self, x: torch.Tensor, sigma, class_labels=None, **cond) -> torch.Tensor:
        if class_labels is None:
            return self.denoiser(x, sigma, **cond)
        y, s = check_labels(self, class_labels, x.shape[0], x.device), _as_given(sigma, x)
        guide = y >= 0
        if self.interval is not None:
            guide &= (s >= self.interval[0]) & (s <= self.interval[1])
        idx = guide.nonzero().squeeze(1) if self.scale != 1.0 else guide.new_zeros(0, dtype=torch.long)
        if idx.numel() == 0:
            return self.denoiser(x, s, class_labels=y, **cond)
        b, every = x.shape[0], idx.numel() == x.shape[0]
        rows = (lambda v: v) if every else (lambda v: v[idx])
        stack = lambda v: torch.cat([v, rows(v)]) if isinstance(v, torch.Tensor) and v.shape[:1] == (b,) else v
        out = self.denoiser(stack(x), stack(s), class_labels=torch.cat([y, torch.full_like(rows(y), -1)]),
                            **{k: stack(v) for k, v in cond.items()})
        d_c, d_u = out[:b], out[b:]
        guided = d_u + self.scale * (rows(d_c) - d_u)
        return guided if every else d_c.index_copy(0, idx, guided)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, interval={self.interval}"


def classifier_free(denoiser: Callable, scale: float, *, interval=None) -> ClassifierFree:
    """Classifier-free guidance (Ho & Salimans 2022) as a denoiser transform.

    Args:
        denoiser: a VE-coordinate denoiser `D(x, sigma, class_labels=y)` trained with label dropout (a
                  `parametrization.Denoiser` of any process and target, or an exact oracle); `-1` selects its
                  unconditional mode.
        scale:    the guidance weight `w >= 0`: 0 is the unconditional model, 1 the conditional one, `w > 1`
                  extrapolates away from the unconditional answer.
        interval: `(lo, hi)` in VE sigma: guide only for `lo <= sigma <= hi`, the conditional model elsewhere
                  (Kynkäänniemi et al. 2024); None: every sigma.
    Returns a denoiser `D_w(x, sigma, class_labels=y)`; bad arguments raise `ValueError`.
    """
    return ClassifierFree(denoiser, scale, interval)


class ClassifierGuided(nn.Module):
    """`D_s(x, sigma, class_labels=y) = D(x, sigma) + scale sigma^2 grad_x log softmax(C(x, sigma))_y` (see
    `classifier`); rows with label -1, and every row without `class_labels`, get `D(x, sigma)` unchanged."""

    def __init__(self, denoiser: Callable, classifier: Callable, scale: float, conditional: bool = False):
        super().__init__()
        self.denoiser, self.classifier = denoiser, classifier
        self.scale, self.conditional = check_scale(scale, "classifier guidance scale"), bool(conditional)
        self.process = getattr(denoiser, "process", None)
        self.num_classes = num_classes(classifier)

    def forward(self, x: torch.Tensor, sigma, class_labels=None, **cond) -> torch.Tensor:
        if class_labels is None:
            return self.denoiser(x, sigma, **cond)
        y, s = check_labels(self, class_labels, x.shape[0], x.device), _as_given(sigma, x)
        if self.conditional:
            cond = dict(cond, class_labels=y)
        den = self.denoiser(x, s, **cond)
        if self.scale == 0.0 or not bool((y >= 0).any()):
            return den
        return den + coef(self.scale * s.double() ** 2, x) * self.log_prob_grad(x, s, y)

    def log_prob_grad(self, x: torch.Tensor, sigma, y: torch.Tensor) -> torch.Tensor:
        """`grad_x log p(y | x, sigma)` from the classifier's logits, zero for rows with `y = -1`."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = torch.log_softmax(self.classifier(xg, sigma), dim=1)
            picked = logp.gather(1, y.clamp_min(0)[:, None]).squeeze(1) * (y >= 0)
            (g,) = torch.autograd.grad(picked.sum(), xg)
        return g.to(x.dtype)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, conditional={self.conditional}"


def classifier(denoiser: Callable, classifier: Callable, scale: float, *,
               conditional: bool = False) -> ClassifierGuided:
    """Classifier guidance (Dhariwal & Nichol 2021, Algorithm 1 / Sec. 4.1) as a denoiser transform.

    Args:
        denoiser:    a VE-coordinate denoiser `D(x, sigma)`, called without labels (its unconditional model) unless
                     `conditional`.
        classifier:  `C(x, sigma) -> logits [B, K]` on VE-coordinate noisy inputs, differentiable in `x` (a
                     `NoiseClassifier` trained by `unifusion train` with `task: classifier`, or an oracle's exact
                     `log_responsibilities`).
        scale:       `s >= 0`: the gradient of `s log p(y | x)` is added to the score (1: the exact conditional
                     score when both models are exact).
        conditional: also pass `class_labels` to `denoiser` (guidance on top of a conditional model).
    Returns a denoiser `D_s(x, sigma, class_labels=y)`.
    """
    return ClassifierGuided(denoiser, classifier, scale, conditional)
