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


def _sde_loop(step, denoiser, x, sigmas, generator, callback, model_kwargs, **kw):
    """Walk the grid with a one-step update; the step to sigma = 0 is `x = D`."""
    run = _Run(denoiser, x, sigmas, callback, model_kwargs)
    for i, s, s_next in run.steps():
        den = run.model(x, s)
        x = den if s_next == 0.0 else step(x, den, s, s_next, generator, **kw)
        run.report(i, x, s, s_next, den)
    return x


def sample_ddim(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None,
                eta: float = 0.0):  # 0: deterministic DDIM (= PF-ODE Euler in VE coordinates), 1: ancestral DDPM
    """DDIM with stochasticity `eta` in [0, 1] (Song et al. 2021, DDIM, eq. 12 and 16), in VE coordinates."""
    if not (0.0 <= eta <= 1.0):
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    return _sde_loop(ddim_step, denoiser, x, sigmas, generator, callback, model_kwargs, eta=eta)


def sample_ancestral(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None,
                     eta: float = 1.0):  # 1: DDPM's posterior variance; smaller values move towards DDIM
    """Ancestral sampling (Ho et al. 2020, Algorithm 2; on any sub-grid it is DDIM with eta = 1): sample
    `q(x_next | x, x0 = D(x, sigma))`. k-diffusion's `sample_euler_ancestral` is the same update."""
    return sample_ddim(denoiser, x, sigmas, generator=generator, callback=callback, model_kwargs=model_kwargs, eta=eta)


def sample_euler_maruyama(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None):
    """Euler-Maruyama on the reverse SDE in VE coordinates (Song et al. 2021, eq. 6; Kloeden & Platen 1992)."""
    return _sde_loop(euler_maruyama_step, denoiser, x, sigmas, generator, callback, model_kwargs)


def langevin_step(x, den, s, generator, snr):
    """Score SDE's Langevin corrector (Song et al. 2021, Algorithm 4): `x + eps score + sqrt(2 eps) z` with
    `eps = 2 (snr |z| / |score|)^2`, the norms averaged over the batch as in the authors' code (per-example ratios
    blow up where the score vanishes in low dimension)."""
    score = score_from_x0(x, den, 1.0, s)
    z = randn_like(x, generator)
    ratio = z.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean().clamp_min(1e-30)
    eps = 2 * (snr * ratio) ** 2
    return x + eps * score + torch.sqrt(2 * eps) * z


def sample_pc(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None,
              predictor: str = "reverse_diffusion",  # one of PREDICTORS
              snr: float = 0.16,                     # Score SDE's signal-to-noise ratio r of the corrector
              n_corrector: int = 1):                 # Langevin steps at each level before the predictor
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3): at each level `n_corrector` Langevin
    corrector steps, then one predictor step. NFE = (n_corrector + 1) per level, 1 on the step to 0."""
    check_choice(predictor, "predictor", PREDICTORS)
    if not (snr > 0):
        raise ValueError(f"snr must be > 0, got {snr!r}")
    check_positive_int(n_corrector, "n_corrector")
    run, step = _Run(denoiser, x, sigmas, callback, model_kwargs), PREDICTORS[predictor]
    for i, s, s_next in run.steps():
        for _ in range(n_corrector if s_next > 0 else 0):
            x = langevin_step(x, run.model(x, s), s, generator, snr)
        den = run.model(x, s)
        x = den if s_next == 0.0 else step(x, den, s, s_next, generator)
        run.report(i, x, s, s_next, den)
    return x


def sample_langevin(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None,
                    n_steps_each: int = 100,  # Langevin steps T per noise level
                    step_lr: float = 2e-5):   # epsilon: the step at the smallest level
    """Annealed Langevin dynamics (Song & Ermon 2019, NCSN, Algorithm 1): at each positive level `sigma_i`,
    `n_steps_each` steps `x + (a_i/2) score + sqrt(a_i) z` with `a_i = step_lr sigma_i^2 / sigma_L^2`. If the grid
    ends in 0, one final denoising step `x = D(x, sigma_L)` (Jolicoeur-Martineau et al. 2021). NFE = L T (+1)."""
    check_positive_int(n_steps_each, "n_steps_each")
    if not (step_lr > 0):
        raise ValueError(f"step_lr must be > 0, got {step_lr!r}")
    run = _Run(denoiser, x, sigmas, callback, model_kwargs)
    levels = [s for s in run.values if s > 0]
    for i, s in enumerate(levels):
        a = step_lr * (s / levels[-1]) ** 2
        for _ in range(n_steps_each):
            den = run.model(x, s)
            x = x + (a / 2) * score_from_x0(x, den, 1.0, s) + math.sqrt(a) * randn_like(x, generator)
        run.report(i, x, s, levels[i + 1] if i + 1 < len(levels) else run.values[-1], den)
    if run.values[-1] == 0.0:
        den = run.model(x, levels[-1])
        x = den
        run.report(len(levels), x, levels[-1], 0.0, den)
    return x


def sample_edm_stochastic(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None,
                          s_churn: float = 0.0,         # total churn; gamma_i = min(s_churn / N, sqrt(2) - 1)
                          s_tmin: float = 0.0,          # churn only where s_tmin <= sigma_i <= s_tmax
                          s_tmax: float = math.inf,
                          s_noise: float = 1.0):        # noise inflation of the churn (1: none)
    """EDM stochastic sampler (Karras et al. 2022, Algorithm 2): raise sigma_i to `sigma_hat = (1 + gamma_i) sigma_i`
    with fresh noise `sqrt(sigma_hat^2 - sigma_i^2) s_noise z`, then a Heun step to sigma_{i+1} (Euler to 0).
    With `s_churn = 0` it is Algorithm 1 (`sample_heun`)."""
    if s_churn < 0 or s_noise < 0 or s_tmin < 0 or s_tmax < s_tmin:
        raise ValueError(f"need s_churn, s_noise >= 0 and 0 <= s_tmin <= s_tmax, got {s_churn!r}, {s_noise!r}, "
                         f"{s_tmin!r}, {s_tmax!r}")
    run = _Run(denoiser, x, sigmas, callback, model_kwargs)
    gamma_max = min(s_churn / run.n, math.sqrt(2) - 1)
    for i, s, s_next in run.steps():
        gamma = gamma_max if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(s_hat ** 2 - s ** 2) * s_noise * randn_like(x, generator)
        den = run.model(x, s_hat)
        d = to_d(x, s_hat, den)
        x_next = x + d * (s_next - s_hat)
        if s_next > 0:
            x_next = x + (d + to_d(x_next, s_next, run.model(x_next, s_next))) * ((s_next - s_hat) / 2)
        x = x_next
        run.report(i, x, s, s_next, den)
    return x
