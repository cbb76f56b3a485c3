"""Exact log-likelihoods through the probability-flow ODE, and bits per dimension.

The PF-ODE (Song et al. 2021, eq. 13) carries the data density to the prior; along a trajectory the
log-density changes by the divergence of the drift (the instantaneous change of variables of neural ODEs,
Chen et al. 2018, Thm. 1; Song et al. 2021, eq. 39):

    log p_0(x(0)) = log p_T(x(T)) + int_0^T div f(x(t), t) dt.

In VE coordinates with `u = log sigma~` the drift is `dx/du = x - D(x, sigma~)`, so
`div = d - tr(dD/dx)`. The trace is exact (one vector-Jacobian product per dimension: low dimension) or
Hutchinson's estimate `E[z^T (dD/dx) z]` with Rademacher probes fixed along the trajectory (Hutchinson 1989;
Grathwohl et al. 2018, FFJORD). Integration: adaptive Dormand-Prince (`unifusion.integrate.dopri5`), as
Score SDE's RK45 with rtol = atol = 1e-5.

`log_likelihood(denoiser, x, ...)` returns `log p(x)` of the sigma_min-smoothed density in VE coordinates;
with `process=` it returns the density of `x_{t_min}` in that process's own coordinates (the Score SDE
convention for reporting likelihoods). `bits_per_dim` turns it into bits per dimension of 8-bit data.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from .integrate import dopri5
from .processes import NoiseProcess, gaussian_log_prob
from .utils import check_choice, check_finite, check_positive_int

__all__ = ["LikelihoodResult", "log_likelihood", "bits_per_dim"]


class LikelihoodResult(NamedTuple):
    """What `log_likelihood` returns.

    Attributes:
        log_prob:       `[B]` log-density of the input.
        prior_log_prob: `[B]` log-density of the ODE's endpoint under the prior.
        delta:          `[B]` integral of the divergence (`log_prob = prior_log_prob + delta (- d log alpha)`).
        x_T:            the ODE's endpoint at `sigma_max` (the encoding of the input).
        nfe:            drift evaluations (each costs one denoiser call plus the trace).
    """

    log_prob: torch.Tensor
    prior_log_prob: torch.Tensor
    delta: torch.Tensor
    x_T: torch.Tensor
    nfe: int


def _trace_exact(den: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`tr(dD/dx)` per example by one vector-Jacobian product per dimension (the denoiser is applied per example)."""
    flat = den.reshape(den.shape[0], -1)
    tr = torch.zeros(den.shape[0], dtype=den.dtype, device=den.device)
    for j in range(flat.shape[1]):
        (g,) = torch.autograd.grad(flat[:, j].sum(), x, retain_graph=True)
        tr = tr + g.reshape(g.shape[0], -1)[:, j]
    return tr


def _trace_hutchinson(den: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """Hutchinson's estimate `mean_k z_k^T (dD/dx) z_k` with fixed probes `z_k` (shape `[K, B, ...]`)."""
    tr = torch.zeros(den.shape[0], dtype=den.dtype, device=den.device)
    for z in probes:
        (g,) = torch.autograd.grad((den * z).sum(), x, retain_graph=True)
        tr = tr + (g * z).reshape(z.shape[0], -1).sum(1)
    return tr / probes.shape[0]


def log_likelihood(denoiser: Callable, x: torch.Tensor, *, sigma_min: float | None = None,
                   sigma_max: float | None = None, process: NoiseProcess | None = None,
                   prior_log_prob: Callable | None = None, divergence: str = "exact", n_probes: int = 1,
                   rtol: float = 1e-5, atol: float = 1e-5, generator: torch.Generator | None = None,
                   model_kwargs: dict | None = None) -> LikelihoodResult:
    """Log-likelihood of `x` (`[B, ...]`) under the model `denoiser` through the PF-ODE (Song et al. 2021, App. D.2).

    Args:
        denoiser:       the model as a VE-coordinate denoiser `D(x~, sigma~, **model_kwargs)`.
        x:              the data, `[B, ...]`.
        sigma_min:      start of the ODE; None: the process's `sigma~(t_min)`, else 0.002.
        sigma_max:      end of the ODE; None: the process's `sigma~(t_max)`, else 80.
        process:        None: `x` is in VE coordinates; else `x` is `x_{t_min}` of `process`.
        prior_log_prob: log-density at `sigma_max`; None: `N(0, sigma_max^2 I)`.
        divergence:     "exact" (one vector-Jacobian product per dimension and step) or "hutchinson".
        n_probes:       Hutchinson probes per evaluation.
        rtol, atol:     tolerances of the adaptive Dormand-Prince integration (`integrate.dopri5`).
        generator:      draws the Hutchinson probes.
        model_kwargs:   passed to every `denoiser` call (e.g. `class_labels`).
    """
    check_choice(divergence, "divergence", ("exact", "hutchinson"))
    check_positive_int(n_probes, "n_probes")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError("x must be a floating tensor of shape [B, ...] with at least one data dimension")
    check_finite(x, "x")
    if process is not None:
        s_lo = process.sigma_ve_min if sigma_min is None else sigma_min
        s_hi = process.sigma_ve_max if sigma_max is None else sigma_max
        log_alpha = float(process._log_alpha(process.t_from_sigma_ve(torch.tensor(s_lo, dtype=torch.float64))))
    else:
        s_lo = 0.002 if sigma_min is None else sigma_min
        s_hi, log_alpha = (80.0 if sigma_max is None else sigma_max), 0.0
    if not (0 < s_lo < s_hi):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={s_lo!r}, sigma_max={s_hi!r}")
    kw = dict(model_kwargs or {})
    b, d = x.shape[0], x[0].numel()
    probes = None
    if divergence == "hutchinson":
        probes = torch.randint(0, 2, (n_probes,) + tuple(x.shape), generator=generator).to(x) * 2 - 1
    ones = torch.ones(b, dtype=torch.float64, device=x.device)

    def drift(y: torch.Tensor, u: float) -> torch.Tensor:
        """`[dx/du, d(delta)/du]` for the state `y = [x.flatten(), delta]`, `u = log sigma`."""
        with torch.enable_grad():
            xs = y[:, :d].reshape(x.shape).detach().requires_grad_(True)
            den = denoiser(xs, ones * math.exp(u), **kw)
            tr = _trace_exact(den, xs) if probes is None else _trace_hutchinson(den, xs, probes)
        dx = (xs - den).detach().reshape(b, d)
        return torch.cat([dx, (d - tr.detach())[:, None].to(dx.dtype)], 1)

    x_ve = x * math.exp(-log_alpha)  # x~ = x_t / alpha
    y0 = torch.cat([x_ve.reshape(b, d), torch.zeros(b, 1, dtype=x.dtype, device=x.device)], 1)
    y, _, nfe = dopri5(drift, y0, math.log(s_lo), math.log(s_hi), rtol=rtol, atol=atol)
    x_T, delta = y[:, :d].reshape(x.shape), y[:, d]
    if prior_log_prob is None:
        prior = gaussian_log_prob(x_T, s_hi)
    else:
        prior = prior_log_prob(x_T)
    # VE-coordinate density at sigma_min; x_t = alpha x~ rescales it by alpha^-d.
    return LikelihoodResult(prior + delta - d * log_alpha, prior, delta, x_T, nfe)


def bits_per_dim(log_prob: torch.Tensor, dims: int, data_range: float = 2.0, bins: int = 256) -> torch.Tensor:
    """Bits per dimension of `bins`-level data scaled to an interval of width `data_range` (images in [-1, 1]:
    2 and 256): `(-log p + dims log(bins / data_range)) / (dims ln 2)`: one bin has width `data_range / bins`
    in the model's coordinates and width 1 in the data's (uniform dequantization, Theis et al. 2016)."""
    check_positive_int(dims, "dims")
    return (-log_prob + dims * math.log(bins / data_range)) / (dims * math.log(2))
