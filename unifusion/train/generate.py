"""Drawing samples from a trained model with any sampler and any step grid (what `unifusion sample` and the demo run).

Owns the mapping of user-facing names to grids (`GRIDS`, built from `unifusion.grids`) and the batched,
seeded, NFE-counted call of a sampler from `unifusion.samplers` on a `Denoiser` (k-diffusion's convention:
start from `sigmas[0] * z` in VE coordinates, Karras et al. 2022, Algorithm 1). Class labels reach the model
through the samplers' `model_kwargs`, one label per sample (`class_labels`), batched with the samples.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import grids
from ..schema import register_section
from ..utils import check_choice, check_positive_int

__all__ = ["GRIDS", "make_grid", "generate", "SampleConfig"]


def _timesteps(process, n):
    if getattr(process, "num_timesteps", None) is None:
        raise ValueError(f"grid 'timesteps' needs a discrete process (DDPM), got {process!r}")
    return grids.sigmas_from_timesteps(process, grids.ddim_timesteps(process.num_timesteps, n, "linspace"))


def _ddim(process, n):
    if getattr(process, "num_timesteps", None) is None:
        raise ValueError(f"grid 'ddim' needs a discrete process (DDPM), got {process!r}")
    return grids.sigmas_from_timesteps(process, grids.ddim_timesteps(process.num_timesteps, n, "trailing"))


# name -> (process, n, sigma_min, sigma_max) -> descending float64 sigmas ending in 0
GRIDS = {
    "edm": lambda p, n, lo, hi: grids.edm_grid(n, lo, hi),                     # Karras et al. 2022, eq. 5
    "geometric": lambda p, n, lo, hi: grids.geometric_grid(n, lo, hi, zero=True),  # NCSN levels
    "log_snr": lambda p, n, lo, hi: grids.log_snr_grid(n, lo, hi),
    "uniform_t": lambda p, n, lo, hi: grids.uniform_t_grid(p, n),               # DDPM / Score SDE time grid
    "timesteps": lambda p, n, lo, hi: _timesteps(p, n),                         # n of DDPM's timesteps (n=N: all)
    "ddim": lambda p, n, lo, hi: _ddim(p, n),                                   # DDIM "trailing" subsequence
}


def make_grid(process, sampler: str, grid, steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The sigma grid named `grid` (None: the sampler's `RECOMMENDED` grid) with `steps` positive levels;
    a tensor or list `grid` is used as given (checked, a final 0 appended)."""
    from ..samplers import RECOMMENDED

    if grid is not None and not isinstance(grid, str):
        return grids.grid_from_list(grid, zero=True)
    check_positive_int(steps, "steps")
    if grid is None:
        return RECOMMENDED[sampler](steps, sigma_min, sigma_max)
    check_choice(grid, "grid", GRIDS)
    if process is None and grid in ("uniform_t", "timesteps", "ddim"):
        raise ValueError(f"grid {grid!r} needs the model's process")
    return GRIDS[grid](process, steps, sigma_min, sigma_max)


@torch.no_grad()
def generate(denoiser, n: int, shape, *, sampler: str | None = None, grid: str | None = None, steps: int = 18,
             seed: int = 0, batch_size: int = 1000, sigma_min: float | None = None, sigma_max: float | None = None,
             device="cpu", class_labels=None, precision: str = "fp32", compile: str | None = None,
             **options) -> tuple[torch.Tensor, dict]:
    """`n` samples of shape `shape` from `denoiser` (a VE-coordinate `D(x, sigma)`) with `sampler`
    (default `DEFAULT_SAMPLER`) on `grid` with `steps` levels between the process's `sigma~` range (or the given
    ends). `class_labels`: int64 `[n]`, sample `i`'s class (-1: none), passed to the model as
    `model_kwargs={"class_labels": ...}` (a guided denoiser from `unifusion.guidance` takes them the same way).
    `precision`: "fp32", or "bf16" / "fp16" autocast of the network (GPU; the sampler's arithmetic stays in the
    samples' dtype). `compile`: a mode of `train.step.COMPILE_MODES` to `torch.compile` the denoiser's network in
    place: every step of the fixed grid then runs the compiled graph ("reduce-overhead": replayed as CUDA graphs).
    Returns `(samples, info)` with `info = {"sampler", "grid", "steps", "nfe", "seconds"}` (`nfe` per batch)."""
    from ..samplers import DEFAULT_SAMPLER, count_nfe, get_sampler
    from .step import COMPILE_MODES, autocast_dtype

    amp = autocast_dtype(precision, torch.device(device)) if precision != "fp32" else None
    if compile is not None:
        check_choice(compile, "compile", COMPILE_MODES)
        if not isinstance(getattr(denoiser, "net", None), torch.nn.Module):
            raise ValueError("compile= needs a denoiser with a network `net`")
        denoiser.net.compile(mode=None if compile == "default" else compile)

    name = sampler or DEFAULT_SAMPLER
    fn = get_sampler(name)
    check_positive_int(n, "n")
    kwargs = dict(options.pop("model_kwargs", None) or {})
    if class_labels is not None:
        from ..guidance import check_labels
        class_labels = check_labels(denoiser, class_labels, n)
    process = getattr(denoiser, "process", None)
    lo = sigma_min if sigma_min is not None else (process.sigma_ve_min if process is not None else 0.002)
    hi = sigma_max if sigma_max is not None else (process.sigma_ve_max if process is not None else 80.0)
    sigmas = make_grid(process, name, grid, steps, lo, hi)
    g = torch.Generator().manual_seed(seed)
    out, nfe, t0 = [], 0, time.perf_counter()
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        counted = count_nfe(denoiser)
        x = sigmas[0].item() * torch.randn((m, *shape), generator=g).to(device)
        if class_labels is not None:
            kwargs["class_labels"] = class_labels[i:i + m].to(device)
        with torch.autocast(torch.device(device).type, dtype=amp, enabled=amp is not None):
            out.append(fn(counted, x, sigmas, generator=g, model_kwargs=kwargs, **options).float().cpu())
        nfe = counted.nfe
    info = {"sampler": name, "grid": grid if isinstance(grid, str) else ("recommended" if grid is None else "custom"),
            "steps": len(sigmas) - 1, "nfe": nfe,
            "seconds": time.perf_counter() - t0}
    return torch.cat(out), info


@dataclass
class SampleConfig:
    """The `sample:` section of a run's config: the defaults of `unifusion sample`.

    Attributes:
        sampler:    a name of `unifusion.samplers.SAMPLERS` (None: `DEFAULT_SAMPLER`).
        grid:       a name of `GRIDS` (None: the sampler's recommended grid).
        steps:      grid levels (None: 18).
        n:          samples to draw.
        batch_size: samples per network batch.
        seed:       the seed of the sampling noise.
        ema:        sample with the EMA weights (the first decay), else the raw ones.
    """
    sampler: str | None = None
    grid: str | None = None
    steps: int | None = None
    n: int = 64
    batch_size: int = 1000
    seed: int = 0
    ema: bool = True


def _check_sample(section: dict) -> None:
    from ..samplers import SAMPLERS

    for k in ("n", "batch_size", "steps"):
        if section[k] is not None:
            check_positive_int(section[k], f"sample.{k}")
    if section["seed"] < 0:
        raise ValueError(f"config key 'sample.seed' must be an integer >= 0, got {section['seed']!r}")
    if section["sampler"] is not None:
        check_choice(section["sampler"], "sample.sampler", SAMPLERS)
    if section["grid"] is not None:
        check_choice(section["grid"], "sample.grid", GRIDS)


register_section("sample", SampleConfig, check=_check_sample)
