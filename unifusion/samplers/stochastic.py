"""Stochastic samplers in VE coordinates: DDIM / ancestral, reverse-SDE Euler-Maruyama, predictor-corrector,
annealed Langevin dynamics and the EDM stochastic sampler.

The reverse SDE of the VE-coordinate process (`alpha = 1`, time = sigma, `g^2 = d sigma^2 / d sigma = 2 sigma`) is
`dx = -2 sigma score dsigma + sqrt(2 sigma) dw_bar` with `score = (D - x) / sigma^2` (Song et al. 2021, eq. 6;
computed by `parametrization.score_from_x0` with `alpha = 1`, Tweedie's formula's one home); it
has the PF-ODE's marginals. Every step to sigma = 0 is the noise-free denoising step `x = D(x, sigma)` (Score SDE's
`denoise=True`, Song et al. 2021, App. G; Jolicoeur-Martineau et al. 2021), since the discretised SDE step would
add noise of the size of sigma. One-step update functions (`*_step`) are shared with the predictor-corrector.
"""
from __future__ import annotations

import math

import torch

from ..parametrization import score_from_x0
from ..utils import check_choice, check_positive_int, randn_like
from .common import _Run, ancestral_step, to_d

__all__ = ["sample_ddim", "sample_ancestral", "sample_euler_maruyama", "sample_pc", "sample_langevin",
           "sample_edm_stochastic", "PREDICTORS"]


# ---- one-step updates: (x, denoised, sigma, sigma_next, generator) -> x_next ---------------------------------
def ddim_step(x, den, s, s_next, generator, eta=1.0):
    """DDIM (Song et al. 2021, eq. 12) in VE coordinates: `x_next = D + sigma_down (x - D)/sigma + sigma_up z`."""
    down, up = ancestral_step(s, s_next, eta)
    x = den + (down / s) * (x - den)
    return x + up * randn_like(x, generator) if up > 0 else x


def euler_maruyama_step(x, den, s, s_next, generator):
    """Euler-Maruyama on the reverse SDE:
    `x + 2 (sigma - sigma_next) (D - x)/sigma + sqrt(2 sigma (sigma - sigma_next)) z`."""
    dt = s - s_next
    return x + (2 * s * dt) * score_from_x0(x, den, 1.0, s) + math.sqrt(2 * s * dt) * randn_like(x, generator)


def reverse_diffusion_step(x, den, s, s_next, generator):
    """Score SDE's reverse-diffusion predictor (Song et al. 2021, eq. 46):
    `x + (s^2 - s_next^2) score + sqrt(s^2 - s_next^2) z`."""
    v = s * s - s_next * s_next
    return x + v * score_from_x0(x, den, 1.0, s) + math.sqrt(v) * randn_like(x, generator)


def euler_step(x, den, s, s_next, generator):
    """The PF-ODE Euler step (a deterministic predictor)."""
    return x + to_d(x, s, den) * (s_next - s)


PREDICTORS = {"euler_maruyama": euler_maruyama_step, "reverse_diffusion": reverse_diffusion_step,
              "ancestral": ddim_step, "euler": euler_step}


def _sde_loop(step, denoiser, x, sigmas, generator, callback, model_kwargs, extra_args, disable, **kw):
    """Walk the grid with a one-step update; the step to sigma = 0 is `x = D`."""
    run = _Run(denoiser, x, sigmas, callback, model_kwargs, extra_args, disable)
    for i, s, s_next in run.steps():
        den = run.model(x, s)
        x_next = den if s_next == 0.0 else step(x, den, s, s_next, generator, **kw)
        run.report(i, x, s, s_next, den, x_next)
        x = x_next
    return x


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None, extra_args=None,
                disable=True, eta: float = 0.0):
    """DDIM with stochasticity `eta` (Song et al. 2021, DDIM, eq. 12 and 16), in VE coordinates.

    Args:
        eta: in [0, 1]; 0: deterministic DDIM (= PF-ODE Euler in VE coordinates), 1: ancestral DDPM.
    """
    if not (0.0 <= eta <= 1.0):
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    return _sde_loop(ddim_step, denoiser, x, sigmas, generator, callback, model_kwargs, extra_args, disable, eta=eta)


@torch.no_grad()
def sample_ancestral(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None, extra_args=None,
                     disable=True, eta: float = 1.0):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2; on any sub-grid it is DDIM with eta = 1): sample
    `q(x_next | x, x0 = D(x, sigma))`. k-diffusion's `sample_euler_ancestral` (with `s_noise=1`).

    Args:
        eta: in [0, 1]; 1: DDPM's posterior variance; smaller values move towards DDIM.
    """
    return sample_ddim(denoiser, x, sigmas, generator=generator, callback=callback, model_kwargs=model_kwargs,
                       extra_args=extra_args, disable=disable, eta=eta)


@torch.no_grad()
def sample_euler_maruyama(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None, extra_args=None,
                          disable=True):
    """Euler-Maruyama on the reverse SDE in VE coordinates (Song et al. 2021, eq. 6; Kloeden & Platen 1992)."""
    return _sde_loop(euler_maruyama_step, denoiser, x, sigmas, generator, callback, model_kwargs, extra_args, disable)


def _mean_norm(v: torch.Tensor) -> float:
    """The batch mean of the per-example norms, in float64."""
    return float(v.flatten(1).double().norm(dim=1).mean())


def langevin_step(x, den, s, generator, snr):
    """Score SDE's Langevin corrector (Song et al. 2021, Algorithm 4): `x + eps score + sqrt(2 eps) z` with
    `eps = 2 (snr |z| / |score|)^2`, the norms averaged over the batch as in the authors' code (per-example ratios
    blow up where the score vanishes in low dimension), and at most `sigma^2`: the score of a sigma-smoothed density
    has Jacobian `>= -1/sigma^2`, so the chain diverges only from `eps = 2 sigma^2`, and `|score|` rounds to 0 where
    `D - x` is below the precision of `x` (bfloat16, or a tiny sigma)."""
    score = score_from_x0(x, den, 1.0, s)
    z = randn_like(x, generator)
    score_norm = _mean_norm(score)
    eps = s * s if score_norm == 0 else min(2 * (snr * _mean_norm(z) / score_norm) ** 2, s * s)
    return x + eps * score + math.sqrt(2 * eps) * z


@torch.no_grad()
def sample_pc(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None, extra_args=None,
              disable=True, predictor: str = "reverse_diffusion", snr: float = 0.16, n_corrector: int = 1):
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3): at each level `n_corrector` Langevin
    corrector steps (`langevin_step`), then one predictor step. NFE = (n_corrector + 1) per level, 1 on the step
    to 0.

    Args:
        predictor:   one of `PREDICTORS`.
        snr:         Score SDE's signal-to-noise ratio `r` > 0 of the corrector (0.16: their CIFAR-10 VE setting).
        n_corrector: Langevin steps at each level before the predictor, >= 1.
    """
    check_choice(predictor, "predictor", PREDICTORS)
    if not (snr > 0):
        raise ValueError(f"snr must be > 0, got {snr!r}")
    check_positive_int(n_corrector, "n_corrector")
    run, step = _Run(denoiser, x, sigmas, callback, model_kwargs, extra_args, disable), PREDICTORS[predictor]
    for i, s, s_next in run.steps():
        for _ in range(n_corrector if s_next > 0 else 0):
            x = langevin_step(x, run.model(x, s), s, generator, snr)
        den = run.model(x, s)
        x_next = den if s_next == 0.0 else step(x, den, s, s_next, generator)
        run.report(i, x, s, s_next, den, x_next)
        x = x_next
    return x


@torch.no_grad()
def sample_langevin(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None, extra_args=None,
                    disable=True, n_steps_each: int = 100, step_size: float = 0.2):
    """Annealed Langevin dynamics (Song & Ermon 2019, NCSN, Algorithm 1): at each positive level `sigma_i`,
    `n_steps_each` steps `x + (a_i/2) score + sqrt(a_i) z` with `a_i = step_size sigma_i^2`. NCSN writes
    `a_i = epsilon sigma_i^2 / sigma_L^2`, so `step_size = epsilon / sigma_L^2` (their 2e-5 at sigma_L = 0.01 is
    0.2); fixed relative to each level, the step is stable on any grid. If the grid ends in 0, one final denoising
    step `x = D(x, sigma_L)` (Jolicoeur-Martineau et al. 2021). NFE = L T (+1); the callback reports each level.

    Args:
        n_steps_each: Langevin steps T per noise level, >= 1.
        step_size:    `a_i / sigma_i^2`, in (0, 4): where the density is sharpest (a point mass smoothed by
                      sigma_i) the chain contracts by `1 - step_size / 2` per step and its variance is
                      `sigma_i^2 / (1 - step_size / 4)`, so it diverges from 4 on.
    """
    check_positive_int(n_steps_each, "n_steps_each")
    if not (0 < step_size < 4):
        raise ValueError(f"step_size must lie in (0, 4), got {step_size!r}")
    run = _Run(denoiser, x, sigmas, callback, model_kwargs, extra_args, disable)
    levels = [s for s in run.values if s > 0]
    for i, s in enumerate(run.progress(levels)):
        a, x_level = step_size * s * s, x
        for _ in range(n_steps_each):
            den = run.model(x, s)
            x = x + (a / 2) * score_from_x0(x, den, 1.0, s) + math.sqrt(a) * randn_like(x, generator)
        run.report(i, x_level, s, levels[i + 1] if i + 1 < len(levels) else run.values[-1], den, x)
    if run.values[-1] == 0.0:
        den = run.model(x, levels[-1])
        run.report(len(levels), x, levels[-1], 0.0, den, den)
        x = den
    return x


@torch.no_grad()
def sample_edm_stochastic(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None, extra_args=None,
                          disable=True, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                          s_noise: float = 1.0, heun: bool = True):
    """EDM stochastic sampler (Karras et al. 2022, Algorithm 2): raise sigma_i to `sigma_hat = (1 + gamma_i) sigma_i`
    with fresh noise `sqrt(sigma_hat^2 - sigma_i^2) s_noise z`, then a Heun step to sigma_{i+1} (Euler to 0).
    With `s_churn = 0` it is Algorithm 1 (`sample_heun`). k-diffusion's `sample_heun` with churn; with `heun=False`
    its `sample_euler` with churn.

    Args:
        s_churn: total churn >= 0; `gamma_i = min(s_churn / N, sqrt(2) - 1)` (0: no churn).
        s_tmin:  churn only where `s_tmin <= sigma_i <= s_tmax`.
        s_tmax:  see `s_tmin`.
        s_noise: inflation of the churn's noise (1: none).
        heun:    True: Heun steps (EDM); False: Euler steps, one evaluation per step.
    """
    if s_churn < 0 or s_noise < 0 or s_tmin < 0 or s_tmax < s_tmin:
        raise ValueError(f"need s_churn, s_noise >= 0 and 0 <= s_tmin <= s_tmax, got {s_churn!r}, {s_noise!r}, "
                         f"{s_tmin!r}, {s_tmax!r}")
    run = _Run(denoiser, x, sigmas, callback, model_kwargs, extra_args, disable)
    gamma_max = min(s_churn / run.n, math.sqrt(2) - 1)
    for i, s, s_next in run.steps():
        gamma = gamma_max if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(s_hat ** 2 - s ** 2) * s_noise * randn_like(x, generator)
        den = run.model(x, s_hat)
        d = to_d(x, s_hat, den)
        x_next = x + d * (s_next - s_hat)
        if s_next > 0 and heun:
            x_next = x + (d + to_d(x_next, s_next, run.model(x_next, s_next))) * ((s_next - s_hat) / 2)
        run.report(i, x, s, s_next, den, x_next, sigma_hat=s_hat)
        x = x_next
    return x
