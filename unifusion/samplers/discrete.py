"""Samplers in a process's own time, for networks that predict noise at `(x_t, t)` (e.g. `Denoiser.raw`'s
network, or `oracle.process_model(process, "eps")`), and their exact VE-coordinate counterparts:

* `sample_ddpm`          Ho et al. 2020, Algorithm 2, literally, on DDPM's integer timesteps with its betas;
* `sample_ddim_discrete` DDIM (Song et al. 2021, DDIM, eq. 12) on any timestep subsequence (`grids.ddim_timesteps`)
                         of any process, with eta in [0, 1];
* `sample_euler_maruyama_t` Euler-Maruyama on the reverse SDE `dx = [f x - g^2 score] dt + g dw_bar` in `t`
                         (Song et al. 2021, eq. 6; VP-SDE: `f = -beta/2`, `g^2 = beta`).

`sample_ddpm` and `sample_ddim_discrete` take the same steps as the VE-coordinate `sample_ancestral` /
`sample_ddim` on `grids.sigmas_from_timesteps(process, timesteps)` from `x~ = x_t / alpha` (the tests check it to
rounding, with the same generator). Euler-Maruyama in `t` and in sigma are different discretisations of one SDE:
they agree in distribution (tested), not step by step.
"""
from __future__ import annotations

import math

import torch

from ..parametrization import x0_from_eps
from ..processes import DDPM, NoiseProcess
from ..utils import as_float_tensor, randn_like
from .common import ancestral_step

__all__ = ["sample_ddpm", "sample_ddim_discrete", "sample_euler_maruyama_t"]


def _check_times(ts, process: NoiseProcess, name: str) -> list[float]:
    t = as_float_tensor(ts, name, dtype=torch.float64)
    if t.ndim != 1 or t.numel() < 1 or (t[1:] >= t[:-1]).any():
        raise ValueError(f"{name} must be a non-empty, strictly descending 1-D sequence")
    process._t(t, name)
    return t.tolist()


def _eps(model, x, t: float, model_kwargs):
    """The model's eps at `(x, t)`, with `t` as a `[B]` tensor in `x`'s dtype."""
    return model(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device), **model_kwargs)


@torch.no_grad()
def sample_ddpm(model, process: DDPM, x, *, generator=None, callback=None, model_kwargs=None):
    """Ho et al. 2020, Algorithm 2 on all `N` timesteps:
    `x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(1 - beta_t) + sigma_t z` with
    `sigma_t^2 = beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)`, no noise on the last step. NFE = N.

    Args:
        model:        `model(x_t, t, **model_kwargs)` predicts eps (`t` a `[B]` tensor in `x`'s dtype).
        process:      the `DDPM` process (its betas).
        x:            `x_T` in the process's coordinates.
        generator:    the `torch.Generator` of the noise draws.
        callback:     called after each step with `{"i", "x", "t", "x_next", "nfe"}` (`x` at timestep `t`).
        model_kwargs: keyword arguments for every model call; None: none.
    """
    if not isinstance(process, DDPM):
        raise ValueError(f"sample_ddpm needs a DDPM process, got {process!r}; use sample_ddim_discrete(eta=1)")
    kw = dict(model_kwargs or {})
    betas, abar = process.betas.tolist(), process.alphas_cumprod.tolist()
    for i, t in enumerate(range(process.num_timesteps - 1, -1, -1)):
        eps = _eps(model, x, float(t), kw)
        x_next = (x - (betas[t] / math.sqrt(1 - abar[t])) * eps) / math.sqrt(1 - betas[t])
        if t > 0:
            x_next = x_next + math.sqrt(betas[t] * (1 - abar[t - 1]) / (1 - abar[t])) * randn_like(x, generator)
        if callback is not None:
            callback({"i": i, "x": x, "t": t, "x_next": x_next, "nfe": i + 1})
        x = x_next
    return x


@torch.no_grad()
def sample_ddim_discrete(model, process: NoiseProcess, x, timesteps, *, generator=None, callback=None,
                         model_kwargs=None, eta: float = 0.0):
    """DDIM (Song et al. 2021, DDIM, eq. 12) on descending `timesteps`:
    `x_prev = alpha_prev x0 + sqrt(sigma_prev^2 - c^2) eps + c z`, `x0 = (x_t - sigma_t eps)/alpha_t`,
    `c = alpha_prev * sigma_up` with `ancestral_step`'s `sigma_up` of the VE noise levels; the last step goes to
    the data (`alpha = 1`, `sigma = 0`). NFE = len(timesteps).

    Args:
        model, process, x, generator, model_kwargs: as in `sample_ddpm` (any process).
        timesteps: descending process times, e.g. `grids.ddim_timesteps`.
        callback:  called after each step with `{"i", "x", "t", "denoised", "x_next", "nfe"}`.
        eta:       in [0, 1]; 0: deterministic DDIM, 1: DDPM's posterior variance.
    """
    ts = _check_times(timesteps, process, "timesteps")
    kw = dict(model_kwargs or {})
    c = process._coefficients(torch.tensor(ts, dtype=torch.float64))
    alphas, sigmas = c.alpha.tolist() + [1.0], c.sigma.tolist() + [0.0]
    for i, t in enumerate(ts):
        eps = _eps(model, x, t, kw)
        x0 = x0_from_eps(x, eps, alphas[i], sigmas[i])
        _, up = ancestral_step(sigmas[i] / alphas[i], sigmas[i + 1] / alphas[i + 1], eta)
        cz = alphas[i + 1] * up
        x_next = alphas[i + 1] * x0 + math.sqrt(max(0.0, sigmas[i + 1] ** 2 - cz ** 2)) * eps
        if cz > 0:
            x_next = x_next + cz * randn_like(x, generator)
        if callback is not None:
            callback({"i": i, "x": x, "t": t, "denoised": x0, "x_next": x_next, "nfe": i + 1})
        x = x_next
    return x


@torch.no_grad()
def sample_euler_maruyama_t(model, process: NoiseProcess, x, ts, *, generator=None, callback=None,
                            model_kwargs=None):
    """Euler-Maruyama on the reverse SDE in the process's time (Song et al. 2021, eq. 6 and Algorithm "EM"):
    `x_next = x - (f x - g^2 score) dt + g sqrt(dt) z`, `dt = t - t_next > 0`, `score = -eps / sigma`; the last
    step is noise-free (Score SDE's `x_mean`). Returns `x_{ts[-1]}` in process coordinates. NFE = len(ts) - 1.

    Args:
        model, process, x, generator, model_kwargs: as in `sample_ddpm` (any process).
        ts:       descending process times, at least 2; the result is at `ts[-1]`.
        callback: called after each step with `{"i", "x", "t", "x_next", "nfe"}`.
    """
    ts = _check_times(ts, process, "ts")
    if len(ts) < 2:
        raise ValueError("ts needs at least 2 times")
    kw = dict(model_kwargs or {})
    f, g2 = (v.tolist() for v in process._sde_coeffs(torch.tensor(ts, dtype=torch.float64)))
    sig = torch.exp(process._log_sigma(torch.tensor(ts, dtype=torch.float64))).tolist()
    for i in range(len(ts) - 1):
        dt = ts[i] - ts[i + 1]
        score = -_eps(model, x, ts[i], kw) / sig[i]
        x_next = x - (f[i] * x - g2[i] * score) * dt
        if i < len(ts) - 2:
            x_next = x_next + math.sqrt(g2[i] * dt) * randn_like(x, generator)
        if callback is not None:
            callback({"i": i, "x": x, "t": ts[i], "x_next": x_next, "nfe": i + 1})
        x = x_next
    return x
