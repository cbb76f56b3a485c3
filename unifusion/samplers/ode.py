"""Probability-flow ODE samplers in VE coordinates, `dx/dsigma = (x - D(x, sigma)) / sigma` (Song et al. 2021,
eq. 13; Karras et al. 2022, eq. 3): Euler, Heun (EDM Algorithm 1) and adaptive Dormand-Prince 5(4).

`sample_euler` and `sample_heun` also take per-example grids `sigmas` of shape `[N+1, B]` (one column per
example), which consistency distillation uses for the teacher's single ODE step.
"""
from __future__ import annotations

import math

import torch

from ..integrate import dopri5
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


def sample_dopri5(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None,
                  rtol: float = 1e-3,     # relative tolerance of the local error
                  atol: float = 1e-4,     # absolute tolerance of the local error
                  h_init: float = 0.1,    # first step in log-sigma (shrunk if rejected)
                  max_steps: int = 10000):  # accepted + rejected steps before giving up (ValueError)
    """Adaptive Dormand-Prince 5(4) (Dormand & Prince 1980; `unifusion.integrate.dopri5`) on the PF-ODE in
    `u = log sigma`, `dx/du = x - D(x, sigma)`, from `sigmas[0]` to the last positive entry of `sigmas` (the
    intermediate entries are ignored). One step size for the batch. A final 0 in `sigmas` is reached by an Euler
    step from the last sigma, `x = D(x, sigma_min)`, which reuses the last stage (first-same-as-last), so it costs
    no evaluation. NFE = 6 per attempted step + 1 (the callback's `nfe`)."""
    run = _Run(denoiser, x, sigmas, callback, model_kwargs)
    u0, u1 = math.log(run.values[0]), math.log(run.values[-1] if run.values[-1] > 0 else run.values[-2])
    accepted = []  # accepted steps so far (the callback's `i`)

    def on_step(y, u_prev, u, k):
        run.report(len(accepted), y, math.exp(u_prev), math.exp(u), y - k)
        accepted.append(u)

    x, k, _ = dopri5(lambda y, u: y - run.model(y, math.exp(u)), x, u0, u1, rtol=rtol, atol=atol,
                     h_init=h_init, max_steps=max_steps, on_step=on_step)
    if run.values[-1] == 0.0:
        x = x - k  # Euler to sigma = 0: x - sigma dx/dsigma = D(x, sigma_min)
        run.report(len(accepted), x, math.exp(u1), 0.0, x)
    return x
