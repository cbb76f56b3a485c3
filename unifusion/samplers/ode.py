"""Probability-flow ODE samplers in VE coordinates, `dx/dsigma = (x - D(x, sigma)) / sigma` (Song et al. 2021,
eq. 13; Karras et al. 2022, eq. 3): Euler, Heun (EDM Algorithm 1) and adaptive Dormand-Prince 5(4).

`sample_euler` and `sample_heun` also take per-example grids `sigmas` of shape `[N+1, B]` (one column per
example), which consistency distillation uses for the teacher's single ODE step.
"""
from __future__ import annotations

import math

import torch

from ..utils import expand_like
from .common import _Run, coef, to_d

__all__ = ["sample_euler", "sample_heun", "sample_dopri5"]


def _is_zero(s) -> bool:
    return s == 0.0 if isinstance(s, float) else bool((s == 0).all())


def sample_euler(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None):
    """Euler's method on the PF-ODE (Song et al. 2021, Sec. 4.3; Karras et al. 2022, Alg. 1 without the correction).
    First order; one evaluation per step. `generator` is unused (deterministic)."""
    run = _Run(denoiser, x, sigmas, callback, model_kwargs, per_example=True)
    for i, s, s_next in run.steps():
        den = run.model(x, s)
        x = x + to_d(x, s, den) * coef(s_next - s, x)
        run.report(i, x, s, s_next, den)
    return x


def sample_heun(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None):
    """Heun's second-order method (Karras et al. 2022, Alg. 1): an Euler predictor and the trapezoidal corrector,
    except on a step to sigma = 0, which stays an Euler step. Two evaluations per step (one on the last).
    With a per-example grid, examples whose next sigma is 0 keep their Euler step."""
    run = _Run(denoiser, x, sigmas, callback, model_kwargs, per_example=True)
    for i, s, s_next in run.steps():
        den = run.model(x, s)
        d = to_d(x, s, den)
        x_euler = x + d * coef(s_next - s, x)
        if _is_zero(s_next):
            x = x_euler
        else:
            s2 = s_next if isinstance(s_next, float) else torch.where(s_next > 0, s_next, s)  # valid sigma for all
            d2 = to_d(x_euler, s2, run.model(x_euler, s2))
            x_heun = x + (d + d2) * coef((s_next - s) / 2, x)
            x = x_heun if isinstance(s_next, float) else torch.where(expand_like(s_next > 0, x), x_heun, x_euler)
        run.report(i, x, s, s_next, den)
    return x


# Dormand & Prince (1980) 5(4) tableau, with the first-same-as-last property.
_DP_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
         [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
         [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
         [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
_DP_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_DP_E = [71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]  # b5 - b4


def sample_dopri5(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None,
                  rtol: float = 1e-3,     # relative tolerance of the local error
                  atol: float = 1e-4,     # absolute tolerance of the local error
                  h_init: float = 0.1,    # first step in log-sigma (shrunk if rejected)
                  max_steps: int = 10000):  # accepted + rejected steps before giving up (ValueError)
    """Adaptive Dormand-Prince 5(4) (Dormand & Prince 1980; Hairer et al., Solving ODEs I, II.5) on the PF-ODE in
    `u = log sigma`, `dx/du = x - D(x, sigma)`, from `sigmas[0]` to the last positive entry of `sigmas` (the
    intermediate entries are ignored). The error norm is the RMS over each example's entries of
    `err / (atol + rtol max(|x|, |x_new|))`, maximised over the batch (one step size for the batch). A final 0 in
    `sigmas` is reached by an Euler step from the last sigma, `x = D(x, sigma_min)`, which reuses the last stage
    (first-same-as-last), so it costs no evaluation. NFE = 6 per attempted step + 1 (the callback's `nfe`)."""
    if not (rtol > 0 and atol >= 0):
        raise ValueError(f"need rtol > 0 and atol >= 0, got rtol={rtol!r}, atol={atol!r}")
    run = _Run(denoiser, x, sigmas, callback, model_kwargs)
    u, u_end = math.log(run.values[0]), math.log(run.values[-1] if run.values[-1] > 0 else run.values[-2])
    f = lambda y, v: y - run.model(y, math.exp(v))
    dims = tuple(range(1, x.ndim))
    k = [f(x, u)] + [None] * 6
    h, i = -abs(h_init), 0
    while u > u_end and i < max_steps:
        h = max(h, u_end - u)
        for j in range(1, 7):
            y = x + h * sum(a * kk for a, kk in zip(_DP_A[j], k) if a != 0.0)
            k[j] = f(y, u + _DP_C[j] * h)
        err = h * sum(e * kk for e, kk in zip(_DP_E, k) if e != 0.0)
        scale = atol + rtol * torch.maximum(x.abs(), y.abs())
        norm = float((err / scale).pow(2).mean(dims).sqrt().max()) if x.numel() else 0.0
        if norm <= 1.0:
            x, u, k[0] = y, u + h, k[6]
            run.report(i, x, math.exp(u - h), math.exp(u), x - k[0])
        i += 1
        h *= min(5.0, max(0.2, 0.9 * (norm if norm > 0 else 1e-10) ** -0.2))
    if u > u_end:
        raise ValueError(f"dopri5 did not reach sigma={math.exp(u_end):.4g} in max_steps={max_steps} steps")
    if run.values[-1] == 0.0:
        x = x - k[0]  # Euler to sigma = 0: x - sigma dx/dsigma = D(x, sigma_min)
        run.report(i, x, math.exp(u), 0.0, x)
    return x
