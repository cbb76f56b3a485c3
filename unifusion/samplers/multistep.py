"""Multistep exponential integrators of the PF-ODE in log-sigma (half log-SNR): in VE coordinates, with
`lambda = -log sigma`, the PF-ODE is `dx/dlambda = D(x, sigma) - x`, so `e^{lambda} x` integrates `e^{lambda} D`
exactly and only `D` along the path needs a polynomial (Lu et al. 2022b, DPM-Solver++, eq. 9).

* `sample_dpmpp_2m`     DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), exactly as published.
* `sample_exp_adams`    exponential Adams-Bashforth of any order 1-4: the Lagrange polynomial through the last
                        `order` denoiser values integrated exactly (DEIS with log-SNR polynomials, Zhang & Chen
                        2023, eq. 15; order 3 is DPM-Solver++(3M), Lu et al. 2022b / k-diffusion's 3M at eta=0).
* `sample_dpmpp_3m`     `sample_exp_adams` with order 3.

Self-starting: while fewer than `order` values are known, the predictor has low order; a first-order first
step would cap the global order at 2 (its local error is O(h^2)). So the start-up steps are corrected with the
new value as in UniPC (free: the value is needed anyway), which restores the full order (the tests fit slopes).
* `sample_unipc`        the same predictor plus UniPC's corrector (Zhao et al. 2023, UniC, Algorithm 1): the new
                        denoiser value, which the next step needs anyway, re-integrates the last step with one
                        more node, raising the order by one at no extra evaluation.

Every step to sigma = 0 is the first-order step `x = D(x, sigma)` (the polynomial cannot be extrapolated to
`lambda = inf`). Weights come from `common.exp_adams_weights`, in float64.
"""
from __future__ import annotations

import math

from .common import _Run, check_positive_int, exp_adams_weights

__all__ = ["sample_dpmpp_2m", "sample_exp_adams", "sample_dpmpp_3m", "sample_unipc"]


def sample_dpmpp_2m(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): `D_d = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}`, `r = h_{i-1}/h_i`,
    `x_{i+1} = (sigma_{i+1}/sigma_i) x_i - expm1(-h_i) D_d`; first order on the first step and on a step to 0."""
    run = _Run(denoiser, x, sigmas, callback, model_kwargs)
    old = h_last = None
    for i, s, s_next in run.steps():
        den = run.model(x, s)
        if s_next == 0.0:
            x = den
        else:
            h = math.log(s / s_next)
            d = den if old is None else (1 + h / (2 * h_last)) * den - (h / (2 * h_last)) * old
            x = (s_next / s) * x - math.expm1(-h) * d
            old, h_last = den, h
        run.report(i, x, s, s_next, den)
    return x


def _combine(x, decay: float, weights, values):
    """`decay * x + sum_j weights[j] * values[j]`."""
    out = decay * x
    for w, v in zip(weights, values):
        out = out + w * v
    return out


def _exp_multistep(run, x, order: int, corrector: bool):
    """The shared loop of `sample_exp_adams` (corrector=False) and `sample_unipc` (corrector=True)."""
    check_positive_int(order, "order")
    if order > 4:
        raise ValueError(f"order must be 1, 2, 3 or 4, got {order!r}")
    logs, dens = [], []                          # log sigma and D at the visited points, newest last
    x_prev = None
    for i, s, s_next in run.steps():
        den = run.model(x, s)
        logs.append(math.log(s))
        dens.append(den)
        if x_prev is not None and (corrector or len(dens) <= order):  # UniC (always, or to start up): redo the
            # last step with the new value as one more node
            k = min(order, len(dens) - 1)
            base = logs[-2]
            nodes = [base - logs[-1]] + [base - logs[-2 - j] for j in range(k)]
            w = exp_adams_weights(nodes, base - logs[-1])
            x = _combine(x_prev, math.exp(logs[-1] - base), w, [dens[-1]] + dens[-2:-2 - k:-1])
        if s_next == 0.0:
            x_prev, x = x, den
        else:
            k = min(order, len(dens))
            h = logs[-1] - math.log(s_next)
            nodes = [logs[-1] - logs[-1 - j] for j in range(k)]
            x_prev, x = x, _combine(x, s_next / s, exp_adams_weights(nodes, h), dens[::-1][:k])
        if len(dens) > order + 1:
            del dens[0], logs[0]
        run.report(i, x, s, s_next, den)
    return x


def sample_exp_adams(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None,
                     order: int = 3):  # polynomial order; the first steps use what history there is
    """Exponential Adams-Bashforth in log-sigma of order `order` (1: DDIM / DPM-Solver++(1); 3: DPM-Solver++(3M);
    DEIS tAB with log-SNR polynomials, Zhang & Chen 2023, eq. 15). One evaluation per step."""
    return _exp_multistep(_Run(denoiser, x, sigmas, callback, model_kwargs), x, order, corrector=False)


def sample_dpmpp_3m(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None):
    """DPM-Solver++(3M): the third-order exponential Adams-Bashforth method in log-sigma (k-diffusion's
    `sample_dpmpp_3m_sde` at eta = 0; Lu et al. 2022b, Sec. 4 for the multistep construction)."""
    return sample_exp_adams(denoiser, x, sigmas, callback=callback, model_kwargs=model_kwargs, order=3)


def sample_unipc(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None,
                 order: int = 3):  # predictor order; the corrector adds one
    """UniPC (Zhao et al. 2023, Algorithm 1 with the exact-integral "B(h)" weights in data prediction): the
    exponential Adams-Bashforth predictor of order `order`, then each new evaluation `D(x_pred)` corrects the
    step just taken (exponential Adams-Moulton, order `order + 1`). One evaluation per step."""
    return _exp_multistep(_Run(denoiser, x, sigmas, callback, model_kwargs), x, order, corrector=True)
