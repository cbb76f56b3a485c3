"""Consistency losses: distances, the EMA target, consistency distillation (CD) and improved consistency training.

This module owns
* the distances `d(x, y)` per example: squared L2, L1 (Song et al. 2023, Sec. 5) and pseudo-Huber
  `sqrt(|x - y|^2 + c^2) - c`, `c = 0.00054 sqrt(d)` (Song & Dhariwal 2023, "Improved Techniques for Training
  Consistency Models", Sec. 3.3);
* `ema_update` (re-exported from `unifusion.train.ema`, its one home): the target network
  `theta- <- mu theta- + (1 - mu) theta` (Song et al. 2023, Algorithm 2);
* `cd_loss`: consistency distillation (Song et al. 2023, eq. 7 / Algorithm 2): `x_{n+1} = x0 + sigma_{n+1} z`,
  the teacher's one PF-ODE step (Heun or Euler, imported from `unifusion.samplers`) to `x^_n`, and
  `lambda(sigma_n) d(f_theta(x_{n+1}, sigma_{n+1}), f_theta-(x^_n, sigma_n))`;
* `ct_loss` and its schedules, the improved recipe of Song & Dhariwal 2023: no EMA target (`theta- = stopgrad
  theta`, Sec. 3.2), pseudo-Huber (Sec. 3.3), weight `1 / (sigma_{i+1} - sigma_i)` (Sec. 3.1), the exponential
  curriculum `N(k)` (Sec. 3.4, eq. 8) and log-normal sampling of the index `i` (Sec. 3.5, eq. 9).

Losses are per example (`[B]`), so a training loop may weight, average or all-reduce them.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..samplers import sample_euler, sample_heun
from ..train.ema import ema_update
from ..utils import check_choice, check_positive_int, coef, randn_like
from .model import ConsistencyFunction

__all__ = ["l2", "l1", "pseudo_huber", "DISTANCES", "get_distance", "ema_update", "teacher_step",
           "cd_loss", "ict_num_scales", "lognormal_index_probs", "ct_loss"]


def _flat(x, y):
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return (x - y).flatten(1)


def l2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance per example, `|x - y|_2^2` (Song et al. 2023, Sec. 5)."""
    return _flat(x, y).square().sum(1)


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L1 distance per example, `|x - y|_1` (Song et al. 2023, Sec. 5)."""
    return _flat(x, y).abs().sum(1)


def pseudo_huber(x: torch.Tensor, y: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """Pseudo-Huber distance per example, `sqrt(|x - y|^2 + c^2) - c` with `c = 0.00054 sqrt(d)` by default,
    `d` the number of entries of one example (Song & Dhariwal 2023, Sec. 3.3)."""
    r = _flat(x, y)
    c = 0.00054 * math.sqrt(r.shape[1]) if c is None else c
    return (r.square().sum(1) + c ** 2).sqrt() - c


DISTANCES = {"l2": l2, "l1": l1, "pseudo_huber": pseudo_huber}


def get_distance(name: str) -> Callable:
    """The distance called `name`, one of `DISTANCES`."""
    check_choice(name, "distance", DISTANCES)
    return DISTANCES[name]


def teacher_step(teacher: Callable, x: torch.Tensor, s_from: torch.Tensor, s_to: torch.Tensor,
                 solver: str = "heun", model_kwargs: dict | None = None) -> torch.Tensor:
    """The teacher's one PF-ODE step from `s_from` to `s_to` (per-example `[B]`) by `unifusion.samplers`' Euler or
    Heun (Karras et al. 2022, Algorithm 1), on the grid `[s_from, s_to]`."""
    check_choice(solver, "solver", ("euler", "heun"))
    step = sample_heun if solver == "heun" else sample_euler
    return step(teacher, x, torch.stack([s_from, s_to]), model_kwargs=model_kwargs)


def cd_loss(f: ConsistencyFunction, f_target: ConsistencyFunction, teacher: Callable, x0: torch.Tensor,
            sigmas: torch.Tensor, *, generator: torch.Generator | None = None, distance: Callable = l2,
            solver: str = "heun", model_kwargs: dict | None = None) -> torch.Tensor:
    """Consistency distillation loss per example (Song et al. 2023, eq. 7 and Algorithm 2), `lambda = 1`.

    Args:
        f:         the student (trained).
        f_target:  the EMA target `theta-` (`f` itself for `mu = 0`); evaluated without gradient.
        teacher:   any VE-coordinate denoiser `D(x, sigma)` (a VP teacher through `parametrization.Denoiser`).
        x0:        a data batch `[B, ...]`.
        sigmas:    the ascending training levels `karras_sigmas(N, ...)`, float64 `[N]`.
        generator: the source of `n ~ U{1..N-1}` and `z`.
        distance:  `d(x, y) -> [B]`, e.g. `l2`, `l1`, `pseudo_huber`.
        solver:    the teacher's ODE step, "heun" (2 evaluations) or "euler" (1).
        model_kwargs: passed to teacher and student (e.g. `{"class_labels": y}`; `None`: nothing).
    """
    kw = dict(model_kwargs or {})
    B = x0.shape[0]
    dev = generator.device if generator is not None else sigmas.device
    n = torch.randint(sigmas.shape[0] - 1, (B,), generator=generator, device=dev).to(sigmas.device)
    s_cur, s_next = sigmas[n], sigmas[n + 1]
    z = randn_like(x0, generator)
    x_next = x0 + coef(s_next, x0) * z
    with torch.no_grad():
        x_cur = teacher_step(teacher, x_next, s_next, s_cur, solver, kw)
        target = f_target(x_cur, s_cur, **kw)
    return distance(f(x_next, s_next, **kw), target)


def ict_num_scales(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """The exponential curriculum of Song & Dhariwal 2023 (eq. 8): `N(k) = min(s0 2^floor(k / K'), s1) + 1`,
    `K' = floor(K / (log2 floor(s1 / s0) + 1))`, for training step `k` of `K`."""
    check_positive_int(total_steps, "total_steps")
    if not (isinstance(step, int) and 0 <= step):
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    k_prime = max(1, math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1)))
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def lognormal_index_probs(sigmas: torch.Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """`p(i)` over the `N - 1` adjacent pairs `(sigma_i, sigma_{i+1})` of an ascending grid (Song & Dhariwal 2023,
    eq. 9): the log-normal `N(p_mean, p_std^2)` mass of `log sigma` between them, renormalised."""
    cdf = torch.erf((sigmas.log() - p_mean) / (math.sqrt(2.0) * p_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


def ct_loss(f: ConsistencyFunction, x0: torch.Tensor, sigmas: torch.Tensor, *,
            generator: torch.Generator | None = None, distance: Callable = pseudo_huber,
            p_mean: float = -1.1, p_std: float = 2.0, model_kwargs: dict | None = None) -> torch.Tensor:
    """Improved consistency training loss per example (Song & Dhariwal 2023, Sec. 3; Song et al. 2023, eq. 10):
    `i ~ lognormal_index_probs`, `x_i = x0 + sigma_i z`, `x_{i+1} = x0 + sigma_{i+1} z`, and
    `d(f(x_{i+1}, sigma_{i+1}), stopgrad f(x_i, sigma_i)) / (sigma_{i+1} - sigma_i)`.

    `sigmas`: ascending `karras_sigmas(ict_num_scales(k, K), ...)`; `p_mean`, `p_std`: the index distribution
    (the paper's -1.1 and 2.0 in EDM units); `model_kwargs`: passed to `f` (`None`: nothing).
    """
    kw = dict(model_kwargs or {})
    probs = lognormal_index_probs(sigmas, p_mean, p_std)
    dev = generator.device if generator is not None else sigmas.device
    i = torch.multinomial(probs.to(dev), x0.shape[0], replacement=True, generator=generator).to(sigmas.device)
    s_cur, s_next = sigmas[i], sigmas[i + 1]
    z = randn_like(x0, generator)
    with torch.no_grad():
        target = f(x0 + coef(s_cur, x0) * z, s_cur, **kw)
    out = f(x0 + coef(s_next, x0) * z, s_next, **kw)
    return distance(out, target) / (s_next - s_cur).to(x0.dtype)
