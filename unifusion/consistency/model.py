"""The consistency function and multistep consistency sampling.

This module owns
* `consistency_scalings`: the boundary-respecting skip/output scalings of Song et al. 2023
  ("Consistency Models", App. C, eq. 3 and the EDM-style choice under it):
  `c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2)`, `c_out = (sigma - sigma_min) sd / sqrt(sigma^2 + sd^2)`,
  so `c_skip(sigma_min) = 1`, `c_out(sigma_min) = 0` and `f(x, sigma_min) = x` exactly;
* `ConsistencyFunction`: that parametrization over any VE-coordinate denoiser `D(x~, sigma~)` (an EDM network,
  a VP / VE network of any target through `parametrization.Denoiser`, or an exact oracle). The network's raw
  output `F` is read off the denoiser through the EDM preconditioning (Karras et al. 2022, Table 1):
  `F = (D - c_skip^EDM x) / c_out^EDM`; for an EDM-preconditioned network this is the network itself, so a
  student copied from its teacher starts from the teacher's weights (Song et al. 2023, Sec. 4);
* `karras_sigmas`: the Karras discretization `sigma_1 < ... < sigma_N` of the training noise levels
  (Song et al. 2023, Sec. 5 / App. C, after Karras et al. 2022, eq. 5), ascending, both ends included;
* `sample_consistency`: 1-step and multistep generation (Song et al. 2023, Algorithm 1):
  `x = f(x, s_0)`; for each later `s`: `x = f(x + sqrt(s^2 - sigma_min^2) z, s)`;
* `consistency_sigmas`: a default K-step grid for it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..parametrization import Denoiser, edm_precond
from ..grids import check_sigmas, edm_grid
from ..utils import as_float_tensor, check_positive_int, coef, randn_like

__all__ = ["consistency_scalings", "ConsistencyFunction", "karras_sigmas", "consistency_sigmas",
           "sample_consistency"]


def _levels(sigma, x: torch.Tensor) -> torch.Tensor:
    """A number or `[B]` noise level as a float64 `[B]` vector on `x`'s device (python floats go straight to float64,
    so `sigma_min` given as a float hits the boundary exactly)."""
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    return s.expand(x.shape[0]) if s.ndim == 0 else s


def consistency_scalings(sigma: torch.Tensor, sigma_min: float, sigma_data: float = 0.5):
    """`(c_skip, c_out)` of the consistency function (Song et al. 2023, App. C): `c_skip(sigma_min) = 1` and
    `c_out(sigma_min) = 0` exactly, so `f(x, sigma_min) = x`."""
    c_skip = sigma_data ** 2 / ((sigma - sigma_min) ** 2 + sigma_data ** 2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
    return c_skip, c_out


class ConsistencyFunction(nn.Module):
    """`f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma)` over any VE denoiser (Song et al. 2023, App. C).

    Args:
        denoiser:   `D(x, sigma, **cond)` in VE coordinates: a `Denoiser` (any process, any target) or an oracle.
                    `F` is its EDM-preconditioned raw output `(D - c_skip^EDM x) / c_out^EDM`, which is the network
                    itself when `denoiser = Denoiser(net, None, "edm", sigma_data)` (see `from_net`).
        sigma_min:  the boundary `epsilon` of the paper (0.002 in EDM units): `f(x, sigma_min) = x` exactly.
        sigma_max:  the largest noise level (the start of 1-step generation).
        sigma_data: data standard deviation of both scalings (0.5 for images in [-1, 1]).

    `forward(x, sigma, **cond)`: `x` `[B, ...]`, `sigma` a number or `[B]` in `[sigma_min, sigma_max]`
    (pass python floats or float64: the scalings are computed in float64).
    """

    def __init__(self, denoiser: nn.Module | Callable, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 sigma_data: float = 0.5):
        super().__init__()
        if not (0 < sigma_min < sigma_max < math.inf):
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min!r}, "
                             f"sigma_max={sigma_max!r}")
        if not (sigma_data > 0):
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
        self.denoiser = denoiser
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)

    @classmethod
    def from_net(cls, net: nn.Module | Callable, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 sigma_data: float = 0.5) -> "ConsistencyFunction":
        """Song et al.'s parametrization with `F = net(c_in x, c_noise)` (EDM's `c_in`, `c_noise`)."""
        return cls(Denoiser(net, None, "edm", sigma_data=sigma_data), sigma_min, sigma_max, sigma_data)

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        s = _levels(sigma, x)
        c_skip, c_out = consistency_scalings(s, self.sigma_min, self.sigma_data)
        c_skip_d, c_out_d, _, _ = edm_precond(s, self.sigma_data)
        F = (self.denoiser(x, s, **cond) - coef(c_skip_d, x) * x) / coef(c_out_d, x)
        return coef(c_skip, x) * x + coef(c_out, x) * F

    def extra_repr(self) -> str:
        return f"sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g}, sigma_data={self.sigma_data:g}"


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """The `n` training noise levels `sigma_1 < ... < sigma_n` of Song et al. 2023 (Sec. 5; Karras et al. 2022,
    eq. 5), ascending from `sigma_min` to `sigma_max`, float64: `unifusion.grids.edm_grid` read backwards."""
    check_positive_int(n, "n")
    if n < 2:
        raise ValueError(f"n must be >= 2 (both ends of the grid), got {n}")
    return edm_grid(n, sigma_min, sigma_max, rho, zero=False).flip(0)


def consistency_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                       rho: float = 7.0) -> torch.Tensor:
    """A default descending grid of `steps` noise levels for `sample_consistency`: the first `steps` points of the
    `steps + 1`-point Karras grid from `sigma_max` to `sigma_min` (the last one, `sigma_min`, would be a no-op).
    Song et al. 2023 tune the intermediate levels by search instead (e.g. `[80, 0.821]` on CIFAR-10)."""
    check_positive_int(steps, "steps")
    return karras_sigmas(steps + 1, sigma_min, sigma_max, rho).flip(0)[:-1]


def _check_grid(sigmas, f: ConsistencyFunction, x: torch.Tensor) -> torch.Tensor:
    """Sigmas as a float64 `[K]` or `[K, B]` tensor: the samplers' checks (`grids.check_sigmas`: finite, strictly
    descending), a trailing 0 dropped, every level in `[sigma_min, sigma_max]` of `f`."""
    s = as_float_tensor(sigmas, "sigmas", dtype=torch.float64)
    if s.ndim in (1, 2) and s.shape[0] >= 1 and not bool((s[-1] == 0).all()):
        s = torch.cat([s, torch.zeros_like(s[:1])])     # a sampler grid ends at 0: "denoise to the end"
    s = check_sigmas(s, x.shape[0])[:-1].to(x.device)
    lo, hi = f.sigma_min, f.sigma_max
    if (s < lo * (1 - 1e-9)).any() or (s > hi * (1 + 1e-9)).any():
        raise ValueError(f"sigmas must lie in [sigma_min, sigma_max] = [{lo:g}, {hi:g}] (and a final 0), "
                         f"got values in [{s.min().item():.6g}, {s.max().item():.6g}]")
    return s.clamp(lo, hi)


@torch.no_grad()
def sample_consistency(f: ConsistencyFunction, x: torch.Tensor, sigmas, *, generator: torch.Generator | None = None,
                       callback: Callable | None = None, model_kwargs: dict | None = None) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1), with the samplers' calling convention.

    Args:
        f:            a `ConsistencyFunction` (its `sigma_min`, `sigma_max` bound the grid).
        x:            the starting noise at `sigmas[0]`, i.e. `sigmas[0] * z`.
        sigmas:       descending noise levels `[K]` or per example `[K, B]` in `[sigma_min, sigma_max]`; a final 0
                      (as in sampler grids) is ignored. `K = 1` is 1-step generation; K levels cost K evaluations.
        generator:    the random source of the re-noising `z` (`None`: torch's global one).
        callback:     called after each step with the samplers' dict `{"i", "x", "sigma", "sigma_hat", "denoised",
                      "sigma_next", "x_next", "nfe"}`: `denoised = x_next = f(x, sigma)` at the (re-noised) `x`.
        model_kwargs: passed to `f` (e.g. `{"class_labels": y}`; `None`: nothing).
    Returns `x = f(x, s_0)`, then for each later `s`: `x = f(x + sqrt(s^2 - sigma_min^2) z, s)`.
    """
    sigmas, kw = _check_grid(sigmas, f, x), dict(model_kwargs or {})
    for i in range(sigmas.shape[0]):
        if i > 0:
            z = randn_like(x, generator)
            x = x + coef((sigmas[i] ** 2 - f.sigma_min ** 2).sqrt(), x) * z
        x_next = f(x, sigmas[i], **kw)
        if callback is not None:
            nxt = sigmas[i + 1] if i + 1 < sigmas.shape[0] else torch.zeros_like(sigmas[i])
            callback({"i": i, "x": x, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": x_next,
                      "sigma_next": nxt, "x_next": x_next, "nfe": i + 1})
        x = x_next
    return x
