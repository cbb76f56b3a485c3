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


@torch.no_grad()
def sample_euler(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None, extra_args=None,
                 disable=True):
    """Euler's method on the PF-ODE (Song et al. 2021, Sec. 4.3; Karras et al. 2022, Alg. 1 without the correction).
    First order; one evaluation per step; per-example grids allowed. k-diffusion's `sample_euler` at its default
    `s_churn=0` (with churn it is `sample_edm_stochastic(heun=False)`)."""
    run = _Run(denoiser, x, sigmas, callback, model_kwargs, extra_args, disable, per_example=True)
    for i, s, s_next in run.steps():
        den = run.model(x, s)
        x_next = x + to_d(x, s, den) * coef(s_next - s, x)
        run.report(i, x, s, s_next, den, x_next)
        x = x_next
    return x


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None, extra_args=None,
                disable=True):
    """Heun's second-order method (Karras et al. 2022, Alg. 1): an Euler predictor and the trapezoidal corrector,
    except on a step to sigma = 0, which stays an Euler step. Two evaluations per step (one on the last).
    Per-example grids allowed: examples whose next sigma is 0 keep their Euler step. k-diffusion's `sample_heun`
    (at its default `s_churn=0`; with churn it is `sample_edm_stochastic`)."""
    run = _Run(denoiser, x, sigmas, callback, model_kwargs, extra_args, disable, per_example=True)
    for i, s, s_next in run.steps():
        den = run.model(x, s)
        d = to_d(x, s, den)
        x_next = x + d * coef(s_next - s, x)
        if not _is_zero(s_next):
            s2 = s_next if isinstance(s_next, float) else torch.where(s_next > 0, s_next, s)  # valid sigma for all
            d2 = to_d(x_next, s2, run.model(x_next, s2))
            x_heun = x + (d + d2) * coef((s_next - s) / 2, x)
            x_next = x_heun if isinstance(s_next, float) else torch.where(expand_like(s_next > 0, x), x_heun, x_next)
        run.report(i, x, s, s_next, den, x_next)
        x = x_next
    return x


@torch.no_grad()
def sample_dopri5(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None, extra_args=None,
                  disable=True, rtol: float = 1e-3, atol: float = 1e-4, h_init: float = 0.1, max_steps: int = 10000):
    """Adaptive Dormand-Prince 5(4) (Dormand & Prince 1980; `unifusion.integrate.dopri5`) on the PF-ODE in
    `u = log sigma`, `dx/du = x - D(x, sigma)`, from `sigmas[0]` to the last positive entry of `sigmas` (the
    intermediate entries are ignored). One step size for the batch. A final 0 in `sigmas` is reached by an Euler
    step from the last sigma, `x = D(x, sigma_min)`, which reuses the last stage (first-same-as-last), so it costs
    no evaluation. NFE = 6 per attempted step + 1 (the callback's `nfe`); the callback sees each accepted step (no
    progress bar: the number of steps is not known ahead).

    Args:
        rtol:      relative tolerance of the local error.
        atol:      absolute tolerance of the local error.
        h_init:    the first step in log-sigma (shrunk if rejected).
        max_steps: accepted plus rejected steps before giving up with a `ValueError`.
    """
    run = _Run(denoiser, x, sigmas, callback, model_kwargs, extra_args, disable)
    u0, u1 = math.log(run.values[0]), math.log(run.values[-1] if run.values[-1] > 0 else run.values[-2])
    accepted = []  # accepted steps so far (the callback's `i`)
    last = {"x": x, "den": None}  # the state at the start of the current step and its denoiser value

    def f(y, u):
        den = run.model(y, math.exp(u))
        if last["den"] is None:  # the first evaluation, at the start
            last["den"] = den
        return y - den

    def on_step(y, u_prev, u, k):
        run.report(len(accepted), last["x"], math.exp(u_prev), math.exp(u), last["den"], y)
        accepted.append(u)
        last["x"], last["den"] = y, y - k  # first-same-as-last: k = f(y, u)

    x, k, _ = dopri5(f, x, u0, u1, rtol=rtol, atol=atol, h_init=h_init, max_steps=max_steps, on_step=on_step)
    if run.values[-1] == 0.0:  # Euler to 0: x - sigma dx/dsigma = D(x, sigma_min), no new evaluation
        run.report(len(accepted), x, math.exp(u1), 0.0, x - k, x - k)
        x = x - k
    return x
