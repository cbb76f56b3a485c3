"""Samplers: plain functions `sample_<name>(denoiser, x, sigmas, *, generator=None, callback=None, model_kwargs=None,
extra_args=None, disable=True, **options) -> x`, each run under `torch.no_grad()`. docs/samplers.md has the table
of methods.

The arguments every sampler takes (its own options are in its docstring's `Args:`):
    denoiser:     `D(x, sigma, **model_kwargs)`, a VE-coordinate clean-data estimate: a `unifusion.Denoiser`, an
                  oracle, a `unifusion.transforms` transform of one, or a k-diffusion model wrapper (the same
                  convention). It receives sigma as a `[B]` tensor in `x`'s dtype; the samplers' coefficients stay
                  float64.
    x:            the start `sigmas[0] * z`, `[B, ...]`, any floating dtype (the result has the same).
    sigmas:       a descending float64 grid from `unifusion.grids`, `[N+1]` (or `[N+1, B]`, one column per example,
                  where a sampler says so), positive except a final 0; N steps.
    generator:    the `torch.Generator` of every noise draw (unused by deterministic samplers).
    callback:     called after each step with `{"i", "x", "sigma", "sigma_hat", "denoised", "sigma_next", "x_next",
                  "nfe"}`: `denoised = D(x, sigma_hat)` at the step's state `x` (`sigma_hat` is `sigma` except
                  after EDM churn), `x_next` the state after the step, at `sigma_next` (a multistep corrector may
                  still refine it with the next evaluation), `nfe` the evaluations so far (the last call holds the
                  total). The first five keys are k-diffusion's, with its meaning.
    model_kwargs: keyword arguments for every call of `denoiser` (e.g. `{"class_labels": y}`); None: none.
    extra_args:   k-diffusion's name for `model_kwargs` (give one or neither).
    disable:      k-diffusion's progress-bar switch: True (the default) no bar, False a tqdm bar over the steps,
                  None tqdm's choice (a bar on a terminal).
`count_nfe(denoiser)` wraps any denoiser with a `.nfe` counter.

k-diffusion: its samplers of the same name take the same steps as `euler`, `heun` (with `s_churn > 0`:
`edm_stochastic`), `dpmpp_2m` and `ancestral` (its `sample_euler_ancestral`), and run on a `unifusion.Denoiser`;
`lms` and `dpmpp_3m` differ, and their docstrings say how (and which options give k-diffusion's variant).

Registries: `SAMPLERS` (name -> function), `get_sampler(name)`, `RECOMMENDED` (name -> grid function
`(n, sigma_min, sigma_max) -> sigmas`, n positive levels plus a final 0) and `DEFAULT_SAMPLER`.
"""
from __future__ import annotations

from functools import partial

from .. import grids
from ..utils import check_choice
from .common import NFECounter, adams_weights, ancestral_step, count_nfe, exp_adams_weights, to_d
from .discrete import sample_ddim_discrete, sample_ddpm, sample_euler_maruyama_t
from .multistep import sample_dpmpp_2m, sample_dpmpp_3m, sample_exp_adams, sample_hybrid, sample_lms, sample_unipc
from .ode import sample_dopri5, sample_euler, sample_heun
from .stochastic import (PREDICTORS, sample_ancestral, sample_ddim, sample_edm_stochastic, sample_euler_maruyama,
                         sample_langevin, sample_pc)

SAMPLERS = {
    "euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m, "dpmpp_3m": sample_dpmpp_3m,
    "exp_adams": sample_exp_adams, "unipc": sample_unipc, "lms": sample_lms, "hybrid": sample_hybrid,
    "dopri5": sample_dopri5, "ddim": sample_ddim, "ancestral": sample_ancestral,
    "euler_maruyama": sample_euler_maruyama, "pc": sample_pc, "langevin": sample_langevin,
    "edm_stochastic": sample_edm_stochastic,
}
DETERMINISTIC = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "exp_adams", "unipc", "lms", "hybrid", "dopri5", "ddim")
STOCHASTIC = ("ancestral", "euler_maruyama", "pc", "langevin", "edm_stochastic")

_edm = partial(grids.edm_grid, rho=7.0)
RECOMMENDED = {name: _edm for name in SAMPLERS}
RECOMMENDED["langevin"] = partial(grids.geometric_grid, zero=True)  # NCSN levels, then a final denoising step
RECOMMENDED["unipc"] = partial(grids.tuned_grid, sampler="unipc")
RECOMMENDED["lms"] = partial(grids.tuned_grid, sampler="lms")
RECOMMENDED["hybrid"] = partial(grids.tuned_grid, sampler="hybrid")  # the training winner (docs/samplers.md)
DEFAULT_SAMPLER = "hybrid"


def get_sampler(name: str):
    """The sampler function registered as `name` in `SAMPLERS`."""
    check_choice(name, "sampler", SAMPLERS)
    return SAMPLERS[name]


__all__ = ["SAMPLERS", "DETERMINISTIC", "STOCHASTIC", "RECOMMENDED", "DEFAULT_SAMPLER", "get_sampler", "to_d",
           "count_nfe", "NFECounter", "ancestral_step", "exp_adams_weights", "adams_weights", "PREDICTORS",
           "sample_euler", "sample_heun", "sample_dpmpp_2m", "sample_dpmpp_3m", "sample_exp_adams", "sample_unipc",
           "sample_lms", "sample_hybrid", "sample_dopri5", "sample_ddim", "sample_ancestral", "sample_euler_maruyama",
           "sample_pc", "sample_langevin", "sample_edm_stochastic",
           "sample_ddpm", "sample_ddim_discrete", "sample_euler_maruyama_t"]
