"""The pieces every sampler shares, in one place: the PF-ODE derivative `to_d`; the counted model call, the
callback and the progress bar (`_Run`, where k-diffusion's keywords are aliased); NFE counting (`count_nfe`); the
ancestral/DDIM noise split and the exponential-integrator weights of the multistep methods.

Coefficients are float64 whatever the model's dtype: a shared grid's coefficients are python floats, a
per-example grid's are float64 `[B]` tensors cast to `x`'s dtype only when they multiply `x` (`coef`).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..grids import check_sigmas
from ..utils import coef

__all__ = ["to_d", "coef", "ancestral_step", "count_nfe", "NFECounter", "exp_adams_weights", "adams_weights"]


def to_d(x: torch.Tensor, sigma, denoised: torch.Tensor) -> torch.Tensor:
    """PF-ODE derivative in VE coordinates, `dx/dsigma = (x - D(x, sigma)) / sigma` (Karras et al. 2022, eq. 3 with
    `s(t) = 1`, `sigma(t) = t`). `sigma`: a float, a 0-d or a per-example `[B]` tensor."""
    return (x - denoised) / coef(sigma, x)


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step `sigma -> sigma_next` into a deterministic part to `sigma_down` and fresh noise `sigma_up`,
    `sigma_down^2 + sigma_up^2 = sigma_next^2`, `sigma_up = eta sigma_next sqrt(1 - sigma_next^2 / sigma^2)`.
    In VE coordinates this is DDIM's `sigma_t(eta)` (Song et al. 2021, DDIM, eq. 16); eta = 1 is the DDPM
    posterior variance (Ho et al. 2020, eq. 7)."""
    if not (0.0 <= eta <= 1.0):
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    if sigma_next == 0.0:
        return 0.0, 0.0
    up = eta * sigma_next * math.sqrt(max(0.0, 1.0 - (sigma_next / sigma) ** 2))
    return math.sqrt(max(0.0, sigma_next ** 2 - up ** 2)), up


class NFECounter:
    """`count_nfe(denoiser)`: the same denoiser, counting its calls in `.nfe` (and passing everything through)."""

    def __init__(self, denoiser: Callable):
        self.denoiser, self.nfe = denoiser, 0

    def __call__(self, x, sigma, **extra):
        self.nfe += 1
        return self.denoiser(x, sigma, **extra)


def count_nfe(denoiser: Callable) -> NFECounter:
    """Wrap `denoiser` so that `wrapped.nfe` counts the network evaluations of any sampler (or any other code)."""
    return NFECounter(denoiser)


class _Run:
    """One sampler run: the checked grid, the counted model call, the callback and the progress bar, in one place
    for every sampler (so k-diffusion's keywords are aliased here and nowhere else).

    `steps()` yields `(i, sigma, sigma_next)`; each is a python float (shared grid) or a float64 `[B]` tensor
    (per-example grid, only where `per_example=True`). `model(x, sigma)` calls the denoiser with sigma as a `[B]`
    tensor in `x`'s dtype. `report` sends the callback its dict (module docstring of `unifusion.samplers`)."""

    def __init__(self, denoiser, x, sigmas, callback=None, model_kwargs=None, extra_args=None, disable=True,
                 per_example: bool = False):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
            raise ValueError(f"x must be a floating tensor of shape [B, ...], got {type(x).__name__}")
        if model_kwargs is not None and extra_args is not None:
            raise ValueError("give model_kwargs or extra_args (k-diffusion's name for it), not both")
        s = check_sigmas(sigmas, x.shape[0]).to(x.device)
        if s.ndim == 2 and not per_example:
            raise ValueError(f"this sampler needs a shared 1-D grid, got per-example sigmas of shape {tuple(s.shape)}")
        self.denoiser, self.callback, self.disable = denoiser, callback, disable
        self.kw = dict(model_kwargs if model_kwargs is not None else extra_args or {})
        self.batch, self.nfe, self.n = x.shape[0], 0, s.shape[0] - 1
        self.sigmas = s
        self.values = s.tolist() if s.ndim == 1 else list(s.expand(-1, self.batch).unbind(0))
        self._ones = torch.ones(self.batch, dtype=torch.float64, device=x.device)

    def progress(self, iterable):
        """`iterable` behind a tqdm bar unless `disable` (k-diffusion's switch: None lets tqdm decide)."""
        return iterable if self.disable is True else tqdm(iterable, disable=self.disable, leave=False)

    def steps(self):
        v = self.values
        return ((i, v[i], v[i + 1]) for i in self.progress(range(self.n)))

    def model(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """`D(x, sigma)` with sigma as a `[B]` tensor in `x`'s dtype (k-diffusion's convention)."""
        self.nfe += 1
        s = self._ones * sigma if isinstance(sigma, float) else sigma
        return self.denoiser(x, s.to(x.dtype), **self.kw)

    def report(self, i, x, sigma, sigma_next, denoised, x_next, sigma_hat=None):
        if self.callback is not None:
            self.callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma if sigma_hat is None else sigma_hat,
                           "denoised": denoised, "sigma_next": sigma_next, "x_next": x_next, "nfe": self.nfe})


# ---- exponential Adams weights (DEIS, Zhang & Chen 2023; DPM-Solver++, Lu et al. 2022b; UniPC, Zhao et al. 2023) --
def _phi(k: int, z: float) -> float:
    """`phi_k(z) = int_0^1 e^{(1-s) z} s^{k-1} / (k-1)! ds` (Hochbruck & Ostermann 2010), stable for small |z|."""
    if abs(z) < 1.0:  # Taylor series sum_j z^j / (j + k)!
        term, total = 1.0 / math.factorial(k), 0.0
        for j in range(30):
            total += term
            term *= z / (j + k + 1)
        return total
    p = math.expm1(z) / z  # phi_1, then phi_{j+1} = (phi_j - 1/j!) / z
    for j in range(1, k):
        p = (p - 1.0 / math.factorial(j)) / z
    return p


def exp_adams_weights(nodes, h: float) -> list[float]:
    """Weights `w_j` of `x_next = e^{-h} x + sum_j w_j D_j`, the exact integral of `e^{u-h} P(u)` over `u in [0, h]`
    where `P` interpolates the denoiser values `D_j` at log-sigma offsets `u_j = log(sigma / sigma_j)` (`nodes`,
    `u_0 = 0` is the current point, earlier points are negative, a corrector's new point is `h`). Solves
    `sum_j w_j (u_j/h)^m = int_0^h e^{u-h} (u/h)^m du = h m! phi_{m+1}(-h)` for `m < len(nodes)` in float64.
    In VE coordinates `dx/dlambda = D - x` with `lambda = -log sigma`, so this is the exponential integrator
    of DPM-Solver++ / DEIS / UniPC written once."""
    k = len(nodes)
    moments = np.array([h * math.factorial(m) * _phi(m + 1, -h) for m in range(k)])
    if k == 1:
        return [float(moments[0])]
    r = np.asarray(nodes, dtype=np.float64) / h
    V = r[None, :] ** np.arange(k)[:, None]  # V[m, j] = r_j^m
    return np.linalg.solve(V, moments).tolist()


def adams_weights(nodes, h: float) -> list[float]:
    """Weights `w_j` of `x_next = x + sum_j w_j d_j`: the exact integral over `u in [0, h]` of the polynomial through
    the derivatives `d_j` at nodes `u_j` (classical Adams, Hairer et al., Solving ODEs I, III.1). Solves
    `sum_j w_j (u_j/h)^m = h / (m + 1)` for `m < len(nodes)` in float64."""
    k = len(nodes)
    if k == 1:
        return [h]
    r = np.asarray(nodes, dtype=np.float64) / h
    V = r[None, :] ** np.arange(k)[:, None]
    return np.linalg.solve(V, h / np.arange(1, k + 1)).tolist()
