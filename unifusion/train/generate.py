"""Drawing samples from a trained model with any sampler and any step grid (what `unifusion sample` and the demo run).

Owns the mapping of user-facing names to grids (`GRIDS`, built from `unifusion.grids`) and the batched,
seeded, NFE-counted call of a sampler from `unifusion.samplers` on a `Denoiser` (k-diffusion's convention:
start from `sigmas[0] * z` in VE coordinates, Karras et al. 2022, Algorithm 1): by default with the clean-data
estimate clipped to the training data's range (`unifusion.transforms.clip_x0`), and with every sample checked
(non-finite samples raise an error that names the sampler, the step and the likely cause, and are never returned).
Class labels reach the model through the samplers' `model_kwargs`, one label per sample (`class_labels`), batched
with the samples.
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


class _Watch:
    """The model as a sampler sees it, counted (`nfe`) and watched: the sigma of its first non-finite output on a
    finite input (`bad_model`); as the sampler's callback, the first step whose result is not finite (`bad_step`)."""

    def __init__(self, denoiser, callback=None):
        self.denoiser, self.callback = denoiser, callback
        self.nfe, self.bad_model, self.bad_step = 0, None, None

    def model(self, x, sigma, **kw):
        self.nfe += 1
        out = self.denoiser(x, sigma, **kw)
        if self.bad_model is None and not bool(torch.isfinite(out).all()) and bool(torch.isfinite(x).all()):
            self.bad_model = float(torch.as_tensor(sigma).flatten()[0])
        return out

    def __call__(self, step: dict) -> None:
        if self.bad_step is None and not bool(torch.isfinite(step["x_next"]).all()):
            self.bad_step = step
        if self.callback is not None:
            self.callback(step)

    def error(self, name: str, steps: int) -> ValueError:
        """The one-line error for non-finite samples: the sampler, the first bad step, the likely cause."""
        b = self.bad_step
        where = "" if b is None else \
            f" from step {b['i'] + 1} of {steps} (sigma {float(b['sigma']):.4g} -> {float(b['sigma_next']):.4g})"
        cause = (f"the model returned NaN or Inf at sigma {self.bad_model:.4g} on a finite input (a diverged "
                 "checkpoint, or values beyond its dtype's range)" if self.bad_model is not None else
                 "the sampler's update overflowed with finite model outputs (a step too large for this grid: try more "
                 "steps, a larger sigma_min, float32, or another sampler)")
        return ValueError(f"sampler {name!r} returned non-finite samples{where}: {cause}")


@torch.no_grad()
def generate(denoiser, n: int, shape, *, sampler: str | None = None, grid: str | None = None, steps: int = 18,
             seed: int = 0, batch_size: int = 1000, sigma_min: float | None = None, sigma_max: float | None = None,
             device="cpu", class_labels=None, clip_x0: bool | float = True, precision: str = "fp32",
             compile: str | None = None, **options) -> tuple[torch.Tensor, dict]:
    """`n` samples of shape `shape` from `denoiser` (a VE-coordinate `D(x, sigma)`) with `sampler`.

    Args:
        denoiser:     a `Denoiser` (as `load_model` returns it) or any `D(x, sigma, **model_kwargs)`.
        n:            number of samples, >= 1.
        shape:        the shape of one sample.
        sampler:      a name in `unifusion.samplers.SAMPLERS`; None: `DEFAULT_SAMPLER`.
        grid:         a name in `GRIDS`, a list of sigmas (a final 0 appended), or None: the sampler's `RECOMMENDED`.
        steps:        positive noise levels of a named grid, >= 1.
        seed:         seeds the start noise and every noise draw of the sampler.
        batch_size:   samples per sampler call.
        sigma_min:    lowest positive level of a named grid; None: `grids.default_sigma_range` of the model's process.
        sigma_max:    the start level; None: as `sigma_min`.
        device:       where the start noise and the sampling live (the samples come back on the CPU).
        class_labels: int64 `[n]`, sample `i`'s class (-1: none), passed to the model as
                      `model_kwargs={"class_labels": ...}` (a guided denoiser from `unifusion.guidance` takes them the
                      same way); None: no labels.
        clip_x0:      True: clip the model's clean-data estimate to the training data's range `[-b, b]` where the
                      model records one (`b = denoiser.data_bound`, set by `unifusion train`), with
                      `transforms.clip_x0`; a number: clip to that bound; False: the model as it is. An exact
                      denoiser never leaves the data's range; an eps-prediction network does where it extrapolates
                      (rare starts in low dimension), and its error is multiplied by sigma~ there.
        precision:    "fp32", or "bf16" / "fp16": autocast of the network (GPU; the sampler's arithmetic stays in the
                      samples' dtype).
        compile:      a mode of `train.step.COMPILE_MODES`: `torch.compile` the denoiser's network in place, so every
                      step of the fixed grid runs the compiled graph ("reduce-overhead": replayed as CUDA graphs);
                      None: eager.
        **options:    the sampler's own options (its `Args:`), `model_kwargs` and `callback`.

    Returns `(samples, info)`, `info = {"sampler", "grid", "steps", "nfe", "clip_x0", "seconds"}` (`nfe` per batch).
    Raises `ValueError` naming the sampler, the first step with non-finite values and the likely cause if any
    sample is not finite.
    """
    from ..samplers import DEFAULT_SAMPLER, get_sampler
    from ..transforms import clip_x0 as clip
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
    lo, hi = grids.default_sigma_range(process)
    sigmas = make_grid(process, name, grid, steps, lo if sigma_min is None else sigma_min,
                       hi if sigma_max is None else sigma_max)
    bound = getattr(denoiser, "data_bound", None) if clip_x0 is True else (clip_x0 or None)
    model = clip(denoiser, bound) if bound else denoiser
    user_callback = options.pop("callback", None)
    g = torch.Generator().manual_seed(seed)
    out, nfe, t0 = [], 0, time.perf_counter()
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        watch = _Watch(model, user_callback)
        x = sigmas[0].item() * torch.randn((m, *shape), generator=g).to(device)
        if class_labels is not None:
            kwargs["class_labels"] = class_labels[i:i + m].to(device)
        with torch.autocast(torch.device(device).type, dtype=amp, enabled=amp is not None):
            x = fn(watch.model, x, sigmas, generator=g, callback=watch, model_kwargs=kwargs, **options).float()
        if not bool(torch.isfinite(x).all()):
            raise watch.error(name, len(sigmas) - 1)
        out.append(x.cpu())
        nfe = watch.nfe
    info = {"sampler": name, "grid": grid if isinstance(grid, str) else ("recommended" if grid is None else "custom"),
            "steps": len(sigmas) - 1, "nfe": nfe, "clip_x0": bound, "seconds": time.perf_counter() - t0}
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
