"""Adaptive ODE integration: the one home of the Dormand-Prince 5(4) method.

`dopri5(f, y, u0, u1)` integrates `dy/du = f(y, u)` for a batch `y` of shape `[B, ...]` with one step size
for the whole batch (Dormand & Prince 1980; Hairer, Norsett & Wanner, "Solving ODEs I", Sec. II.4-II.5:
embedded error estimate, first-same-as-last, step-size control with safety factor 0.9 and the
exponent -1/5). The probability-flow sampler (`unifusion.samplers.sample_dopri5`) and the likelihood
(`unifusion.likelihood`) both integrate with it.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["dopri5"]

# Dormand & Prince (1980) 5(4) tableau; the last row of A is the 5th-order weights (first-same-as-last).
_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
      [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
      [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
      [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_E = [71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]  # b5 - b4


def dopri5(f: Callable[[torch.Tensor, float], torch.Tensor], y: torch.Tensor, u0: float, u1: float, *,
           rtol: float = 1e-5, atol: float = 1e-5, h_init: float | None = None, max_steps: int = 10000,
           on_step: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Integrate `dy/du = f(y, u)` from `u0` to `u1` (either direction). The error norm is the RMS over each
    example's entries of `err / (atol + rtol max(|y|, |y_new|))`, maximised over the batch.

    Args:
        f:         the derivative, `f(y, u) -> dy/du` of `y`'s shape.
        y:         the state at `u0`, `[B, ...]`.
        u0, u1:    start and end of the integration.
        rtol:      relative tolerance of the local error.
        atol:      absolute tolerance of the local error.
        h_init:    first step size; None: 1/10 of the interval.
        max_steps: attempted steps before giving up (`ValueError`).
        on_step:   called as `on_step(y, u_prev, u, k_last)` after each accepted step.

    Returns `(y(u1), f(y(u1), u1), nfe)`; the last derivative comes free (first-same-as-last)."""
    if not (rtol > 0 and atol >= 0):
        raise ValueError(f"need rtol > 0 and atol >= 0, got rtol={rtol!r}, atol={atol!r}")
    span = u1 - u0
    direction = 1.0 if span >= 0 else -1.0
    h = direction * (abs(h_init) if h_init is not None else abs(span) / 10)
    dims = tuple(range(1, y.ndim))
    k = [f(y, u0)] + [None] * 6
    nfe, u, steps = 1, u0, 0
    while direction * (u1 - u) > 1e-12 * max(1.0, abs(u1)) and steps < max_steps:
        h = direction * min(abs(h), abs(u1 - u))
        for j in range(1, 7):
            y_j = y + h * sum(a * kk for a, kk in zip(_A[j], k[:j], strict=True) if a != 0.0)
            k[j] = f(y_j, u + _C[j] * h)
        nfe += 6
        err = h * sum(e * kk for e, kk in zip(_E, k, strict=True) if e != 0.0)
        scale = atol + rtol * torch.maximum(y.abs(), y_j.abs())
        norm = float((err / scale).pow(2).mean(dims).sqrt().max()) if y.numel() else 0.0
        if norm <= 1.0:
            u_prev, y, u, k[0] = u, y_j, u + h, k[6]
            if on_step is not None:
                on_step(y, u_prev, u, k[0])
        steps += 1
        h *= min(5.0, max(0.2, 0.9 * max(norm, 1e-10) ** -0.2))
    if direction * (u1 - u) > 1e-12 * max(1.0, abs(u1)):
        raise ValueError(f"dopri5 did not reach u={u1:.6g} within max_steps={max_steps} (stopped at u={u:.6g})")
    return y, k[0], nfe
