"""Samplers: plain functions `sample_<name>(denoiser, x, sigmas, *, generator=None, callback=None, **options) -> x`.

`denoiser(x, sigma, **model_kwargs)` is a VE-coordinate clean-data estimate (a `unifusion.Denoiser`, an oracle,
or a k-diffusion model: the same convention); `sigmas` a descending float64 grid from `unifusion.grids`.
The NFE is observable two ways: every sampler passes `{"i", "x", "sigma", "sigma_next", "denoised", "nfe"}` to
`callback` after each step (`nfe` = evaluations so far, so the last call holds the total), and
`count_nfe(denoiser)` wraps any denoiser with a `.nfe` counter. docs/samplers.md has the table of methods.

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
