"""Multistep exponential integrators of the PF-ODE in log-sigma (half log-SNR): in VE coordinates, with
`lambda = -log sigma`, the PF-ODE is `dx/dlambda = D(x, sigma) - x`, so `e^{lambda} x` integrates `e^{lambda} D`
exactly and only `D` along the path needs a polynomial (Lu et al. 2022b, DPM-Solver++, eq. 9).

* `sample_dpmpp_2m`     DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), exactly as published.
* `sample_exp_adams`    exponential Adams-Bashforth of any order 1-4: the Lagrange polynomial through the last
                        `order` denoiser values integrated exactly (DEIS with log-SNR polynomials, Zhang & Chen
                        2023, eq. 15; order 3 is DPM-Solver++(3M), Lu et al. 2022b).
* `sample_dpmpp_3m`     `sample_exp_adams` with order 3.

Self-starting: while fewer than `order` values are known, the predictor has low order; a first-order first
step would cap the global order at 2 (its local error is O(h^2)). So the start-up steps are corrected with the
new value as in UniPC (free: the value is needed anyway), which restores the full order (the tests fit slopes).
* `sample_unipc`        the same predictor plus UniPC's corrector (Zhao et al. 2023, UniC, Algorithm 1): the new
                        denoiser value, which the next step needs anyway, re-integrates the last step with one
                        more node, raising the order by one at no extra evaluation.
* `sample_lms`          classical Adams in sigma on `dx/dsigma = (x - D)/sigma` with the Adams-Moulton corrector.
* `sample_hybrid`       `sample_unipc` on the steps from sigma above a switch level, `sample_lms` below and to 0,
                        through one history of `(sigma, x, D)` (the shared loop reads it in either space).

Every step to sigma = 0 in log-sigma is the first-order step `x = D(x, sigma)` (the polynomial cannot be
extrapolated to `lambda = inf`) unless `final_adams`, which takes it as an Adams step in sigma. Weights come from
`common.exp_adams_weights` / `common.adams_weights`, in float64.
"""
from __future__ import annotations

import math
import numbers

import torch

from ..grids import hybrid_switch
from ..utils import check_positive_int
from .common import _Run, adams_weights, exp_adams_weights, to_d

__all__ = ["sample_dpmpp_2m", "sample_exp_adams", "sample_dpmpp_3m", "sample_unipc", "sample_lms", "sample_hybrid"]


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None, extra_args=None,
                    disable=True):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): `D_d = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}`, `r = h_{i-1}/h_i`,
    `x_{i+1} = (sigma_{i+1}/sigma_i) x_i - expm1(-h_i) D_d`; first order on the first step and on a step to 0.
    k-diffusion's `sample_dpmpp_2m`."""
    run = _Run(denoiser, x, sigmas, callback, model_kwargs, extra_args, disable)
    old = h_last = None
    for i, s, s_next in run.steps():
        den = run.model(x, s)
        if s_next == 0.0:
            x_next = den
        else:
            h = math.log(s / s_next)
            d = den if old is None else (1 + h / (2 * h_last)) * den - (h / (2 * h_last)) * old
            x_next = (s_next / s) * x - math.expm1(-h) * d
            old, h_last = den, h
        run.report(i, x, s, s_next, den, x_next)
        x = x_next
    return x


def _combine(x, decay: float, weights, values):
    """`decay * x + sum_j weights[j] * values[j]`."""
    out = decay * x
    for w, v in zip(weights, values, strict=True):
        out = out + w * v
    return out


class _Space:
    """Where a linear multistep method interpolates: `x_next = decay x + sum_j w_j v_j`, nodes
    `u_j = c(sigma_j) - c(sigma)`.

    "exp":  c = -log sigma (half log-SNR), v = D, decay = sigma_next / sigma, exponential weights (DPM-Solver++, DEIS,
            UniPC in data prediction); the step to sigma = 0 is `x = D`.
    "poly": c = sigma, v = dx/dsigma = (x - D)/sigma (eps in VE coordinates), decay = 1, polynomial weights: classical
            Adams on the PF-ODE in sigma (k-diffusion's LMS; DEIS's eps-polynomials in sigma, Zhang & Chen 2023);
            the step to 0 is an ordinary Adams step.
    """

    def __init__(self, kind: str):
        self.exp = kind == "exp"

    def coord(self, s: float) -> float:
        return -math.log(s) if self.exp else s

    def value(self, x, s: float, den):
        return den if self.exp else to_d(x, s, den)

    def decay(self, s: float, s_next: float) -> float:
        return s_next / s if self.exp else 1.0

    def weights(self, nodes, h: float):
        return exp_adams_weights(nodes, h) if self.exp else adams_weights(nodes, h)


_EXP, _POLY = _Space("exp"), _Space("poly")


def _linear_multistep(run, x, order: int, corrector: bool, switch: float = 0.0, final_adams: bool = False,
                      self_start: bool = True):
    """The shared loop of the multistep samplers: predictor of order `order` through the last values; with
    `corrector` (UniPC's UniC, or Adams-Moulton in "poly" space) every step, otherwise only the start-up steps
    (unless not `self_start`), is redone with the new value as one more node (no extra evaluation: the value is
    needed anyway).

    A step from `sigma > switch` is taken in "exp" space, from `sigma <= switch` in "poly" space (`switch = 0`: all
    exponential, UniPC / DPM-Solver++; `switch = inf`: all Adams in sigma, LMS). The history is kept as raw
    `(sigma, x, D)`, so a step can read earlier points in either space. The step to sigma = 0 is `x = D` in "exp"
    space unless `final_adams`, which takes it in "poly" space (an Adams step down to 0)."""
    check_positive_int(order, "order")
    if order > 4:
        raise ValueError(f"order must be 1, 2, 3 or 4, got {order!r}")
    ss, xs, ds = [], [], []          # sigmas, states and denoiser values of the visited points, newest last

    def step(sp, x0, s_to, extra=None):
        """`x0` at `ss[-1]` carried to `s_to` in space `sp` through the last history values; `extra`: the value at
        `s_to` as one more node (the corrector)."""
        k = min(order, len(ds))
        c0 = sp.coord(ss[-1])
        h = (sp.coord(s_to) if s_to > 0 else 0.0) - c0
        nodes = ([] if extra is None else [h]) + [sp.coord(ss[-1 - j]) - c0 for j in range(k)]
        vals = ([] if extra is None else [extra]) + [sp.value(xs[-1 - j], ss[-1 - j], ds[-1 - j]) for j in range(k)]
        return _combine(x0, sp.decay(ss[-1], s_to), sp.weights(nodes, h), vals)

    x_prev = None
    for i, s, s_next in run.steps():
        den = run.model(x, s)
        x_eval = x
        if x_prev is not None and (corrector or (self_start and len(ss) < order)):
            sp = _EXP if ss[-1] > switch else _POLY
            x = step(sp, x_prev, s, extra=sp.value(x, s, den))
        ss.append(s)
        xs.append(x)
        ds.append(den)
        sp = _EXP if s > switch else _POLY
        if s_next == 0.0 and sp.exp and not final_adams:
            x_next = den
        else:
            x_next = step(_POLY if s_next == 0.0 else sp, x, s_next)
        if len(ss) > order + 1:
            del ss[0], xs[0], ds[0]
        run.report(i, x_eval, s, s_next, den, x_next)
        x_prev, x = x, x_next
    return x


@torch.no_grad()
def sample_exp_adams(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None, extra_args=None,
                     disable=True, order: int = 3, self_start: bool = True):
    """Exponential Adams-Bashforth in log-sigma of order `order` (1: DDIM / DPM-Solver++(1); 3: DPM-Solver++(3M);
    DEIS tAB with log-SNR polynomials, Zhang & Chen 2023, eq. 15). One evaluation per step.

    Args:
        order:      polynomial order 1-4; the first steps use what history there is.
        self_start: correct the start-up steps with the next value (free), so the first low-order steps do not cap
                    the global order; False: plain Adams-Bashforth throughout (k-diffusion's multistep start).
    """
    return _linear_multistep(_Run(denoiser, x, sigmas, callback, model_kwargs, extra_args, disable), x, order, False,
                             self_start=self_start)


@torch.no_grad()
def sample_dpmpp_3m(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None, extra_args=None,
                    disable=True):
    """DPM-Solver++(3M): the third-order exponential Adams-Bashforth method in log-sigma (Lu et al. 2022b, Sec. 4
    for the multistep construction), `sample_exp_adams(order=3)`. k-diffusion's `sample_dpmpp_3m_sde` at `eta=0`
    differs twice: it starts with first- and second-order steps (ours self-start), and it weights the second
    difference by `h phi_3(-h)`, half the exact integral of the quadratic (as DPM-Solver's reference code does);
    with the exact weight its steps are `sample_exp_adams(order=3, self_start=False)`."""
    return sample_exp_adams(denoiser, x, sigmas, callback=callback, model_kwargs=model_kwargs, extra_args=extra_args,
                            disable=disable, order=3)


@torch.no_grad()
def sample_unipc(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None, extra_args=None,
                 disable=True, order: int = 2, final_adams: bool = False):
    """UniPC (Zhao et al. 2023, Algorithm 1 with the exact-integral "B(h)" weights in data prediction): the
    exponential Adams-Bashforth predictor of order `order`, then each new evaluation `D(x_pred)` corrects the
    step just taken (exponential Adams-Moulton, order `order + 1`). One evaluation per step.

    Args:
        order:       predictor order 1-4; the corrector adds one.
        final_adams: take the step to sigma = 0 as an Adams step in sigma (`sample_lms`'s) instead of `x = D`.
    """
    return _linear_multistep(_Run(denoiser, x, sigmas, callback, model_kwargs, extra_args, disable), x, order, True,
                             final_adams=final_adams)


@torch.no_grad()
def sample_lms(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None, extra_args=None,
               disable=True, order: int = 3, corrector: bool = True, self_start: bool = True):
    """Linear multistep (Adams-Bashforth) on the PF-ODE in sigma, `dx/dsigma = (x - D)/sigma`, with the exact
    integrals of the Lagrange polynomial through the last `order` derivatives (DEIS's polynomial extrapolation of
    eps, Zhang & Chen 2023, eq. 14, in VE coordinates), the step to 0 included. With `corrector` every step is
    corrected with the next value (predict-evaluate-correct, Adams-Moulton, order `order + 1`), still one
    evaluation per step. k-diffusion's `sample_lms` is the plain predictor, order 4, with a low-order start:
    `sample_lms(order=4, corrector=False, self_start=False)` (it integrates the polynomial by quadrature, we exactly).

    Args:
        order:      Adams-Bashforth order 1-4; the first steps use what history there is.
        corrector:  correct every step with the new value (free); False: only the start-up steps (see `self_start`).
        self_start: correct the start-up steps, so that the first low-order steps do not cap the global order.
    """
    return _linear_multistep(_Run(denoiser, x, sigmas, callback, model_kwargs, extra_args, disable), x, order,
                             corrector, math.inf, self_start=self_start)


@torch.no_grad()
def sample_hybrid(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None, extra_args=None,
                  disable=True, order: int = 3, sigma_switch: float | None = None):
    """UniPC above `sigma_switch`, LMS below: steps from `sigma > sigma_switch` are exponential Adams in log-sigma
    with UniC (`sample_unipc`), where the big early steps are nearly exact; steps from `sigma <= sigma_switch`, and
    the step to 0, are Adams in sigma with the Adams-Moulton corrector (`sample_lms`), which ends better than
    `x = D`. One history of `(sigma, x, D)` serves both spaces, so the switch costs nothing and keeps the order.
    One evaluation per step.

    Args:
        order:        predictor order 1-4 in both spaces; the corrector adds one.
        sigma_switch: steps from `sigma > sigma_switch` are exponential, the rest in sigma (0: all exponential,
                      UniPC ending in an Adams step; a value above `sigmas[0]`: all in sigma, LMS). None: the
                      default `grids.hybrid_switch(N)` for a grid of N steps, fitted per N with the tuned grids
                      (1.0 at N <= 10, lower at larger N); it assumes data of about unit scale (docs/samplers.md).
    """
    if sigma_switch is not None and (isinstance(sigma_switch, bool) or not isinstance(sigma_switch, numbers.Real)
                                     or not sigma_switch >= 0.0):
        raise ValueError(f"sigma_switch must be None or a number >= 0, got {sigma_switch!r}")
    run = _Run(denoiser, x, sigmas, callback, model_kwargs, extra_args, disable)
    if sigma_switch is None:
        sigma_switch = hybrid_switch(len(run.values) - 1)
    return _linear_multistep(run, x, order, True, float(sigma_switch), final_adams=True)
