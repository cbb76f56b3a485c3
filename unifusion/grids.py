"""Step grids: descending float64 noise levels `sigma~` in VE coordinates (one definition of each).

This module owns every step schedule the samplers walk along:

* `edm_grid`          the rho-schedule of Karras et al. 2022 (EDM), eq. 5;
* `uniform_t_grid`    uniform in a process's own time `t` (DDPM / Score SDE), mapped to `sigma~(t)`;
* `geometric_grid`    the NCSN noise levels, a geometric sequence (Song & Ermon 2019, Sec. 4.2); uniform in
                      log-SNR is the same grid, since `lambda = -2 log sigma~` (`log_snr_grid`);
* `ddim_timesteps`    DDIM timestep subsequences "leading", "trailing", "linspace" (Song et al. 2021, DDIM,
                      App. D; Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
                      Table 2), turned into sigmas by `sigmas_from_timesteps`;
* `tuned_grid`        a first jump from sigma_max, then a rho-schedule between two tuned levels: the step placement
                      tuned per sampler on training mixtures (not the benchmark's; docs/samplers.md says how);
* `grid_from_list`    any user list, checked;
* `check_sigmas`      the one validator every sampler calls;
* `default_sigma_range` where a sampling grid of a model of a given process starts and ends by default.

Convention: `n` is the number of positive noise levels; with `zero=True` (the default for ODE/SDE sampling
grids) a final `0` is appended, so the grid has `n + 1` entries and a sampler takes `n` steps, the last one
to the clean data. NCSN's annealed Langevin dynamics walks the levels themselves, so `geometric_grid`
defaults to `zero=False`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .processes import NoiseProcess
from .utils import as_float_tensor, check_choice, check_positive_int

__all__ = [
    "append_zero", "edm_grid", "geometric_grid", "log_snr_grid", "uniform_t_grid", "ddim_timesteps",
    "sigmas_from_timesteps", "grid_from_list", "check_sigmas", "DDIM_SPACINGS", "tuned_grid", "TUNED",
    "SIGMA_MIN", "default_sigma_range",
]

DDIM_SPACINGS = ("leading", "trailing", "linspace")
SIGMA_MIN = 0.002  # EDM's lowest level (Karras et al. 2022, Sec. 5), the floor of every default grid


def _check_range(sigma_min, sigma_max):
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """`sigmas` with a final `0` appended (the step to clean data)."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _finish(sigmas: torch.Tensor, zero: bool) -> torch.Tensor:
    """Append the final 0 if asked and not already there (e.g. `sigma~(t_min) = 0` for the cosine schedule)."""
    return append_zero(sigmas) if zero and sigmas[-1] > 0 else sigmas


def edm_grid(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, *,
             zero: bool = True) -> torch.Tensor:
    """EDM schedule (Karras et al. 2022, eq. 5):
    `sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho`, `i = 0..n-1`, then a final 0 if `zero`.
    `rho=1` is uniform in sigma; `rho -> inf` tends to geometric."""
    check_positive_int(n, "n")
    _check_range(sigma_min, sigma_max)
    if not (rho > 0):
        raise ValueError(f"rho must be > 0, got {rho!r}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    s = (hi + ramp * (lo - hi)) ** rho
    s[0] = sigma_max          # the ends exactly, not through the rho-th root and back
    if n > 1:
        s[-1] = sigma_min
    return _finish(s, zero)


def geometric_grid(n: int, sigma_min: float = 0.01, sigma_max: float = 50.0, *, zero: bool = False) -> torch.Tensor:
    """NCSN noise levels (Song & Ermon 2019, Sec. 4.2): `n` values from `sigma_max` to `sigma_min` with a constant
    ratio, i.e. uniform in `log sigma~`. No final 0 unless `zero`."""
    check_positive_int(n, "n")
    _check_range(sigma_min, sigma_max)
    if n == 1:
        return _finish(torch.tensor([float(sigma_max)], dtype=torch.float64), zero)
    return _finish(torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n, dtype=torch.float64), zero)


def log_snr_grid(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, *, zero: bool = True) -> torch.Tensor:
    """Uniform in log-SNR `lambda = -2 log sigma~` (DPM-Solver's "logSNR" steps, Lu et al. 2022, Sec. 3.3):
    the geometric grid of `geometric_grid`, with a final 0 by default."""
    return geometric_grid(n, sigma_min, sigma_max, zero=zero)


def uniform_t_grid(process: NoiseProcess, n: int, t_min: float | None = None, t_max: float | None = None, *,
                   zero: bool = True) -> torch.Tensor:
    """`n` times uniform in the process's own `t` from `t_max` to `t_min` (defaults: the process's range), mapped to
    `sigma~(t)` (DDPM / Score SDE sampling steps, Song et al. 2021, Sec. 4.2)."""
    check_positive_int(n, "n")
    t_min = process.t_min if t_min is None else t_min
    t_max = process.t_max if t_max is None else t_max
    if not (t_min < t_max):
        raise ValueError(f"need t_min < t_max, got t_min={t_min!r}, t_max={t_max!r}")
    t = torch.linspace(t_max, t_min, n, dtype=torch.float64) if n > 1 else \
        torch.tensor([float(t_max)], dtype=torch.float64)
    return _finish(process.sigma_ve(t), zero)


def ddim_timesteps(num_train_timesteps: int, n: int, spacing: str = "leading", steps_offset: int = 0, *,
                   integer: bool = True) -> torch.Tensor:
    """A descending subsequence of `n` of the `num_train_timesteps` discrete timesteps (int64), as in DDIM:

    * "leading":  `0, k, 2k, ...` with `k = T // n` (DDIM, Song et al. 2021; Stable Diffusion), plus `steps_offset`;
    * "trailing": `round(T - j T / n) - 1`, `j = 0..n-1`, which always includes `T - 1` (Lin et al. 2024, Table 2);
    * "linspace": `round(linspace(0, T - 1, n))` (DDPM-style even spread).

    `integer=False` keeps the fractions of "linspace" (float64; diffusers' Euler-type schedulers step on them).
    Rounding is half to even, as numpy's (and so diffusers').
    """
    T = check_positive_int(num_train_timesteps, "num_train_timesteps")
    check_positive_int(n, "n")
    check_choice(spacing, "spacing", DDIM_SPACINGS)
    if n > T:
        raise ValueError(f"n={n} must be <= num_train_timesteps={T}")
    if spacing == "leading":
        ts = torch.arange(n, dtype=torch.float64) * (T // n) + steps_offset
    elif spacing == "trailing":
        ts = torch.round(T - torch.arange(n, dtype=torch.float64) * (T / n)) - 1
    else:
        ts = torch.linspace(0, T - 1, n, dtype=torch.float64)
        ts = torch.round(ts) if integer else ts
    ts = ts.clamp(0, T - 1)
    return torch.sort(ts.to(torch.int64) if integer else ts, descending=True).values


def sigmas_from_timesteps(process: NoiseProcess, timesteps, *, zero: bool = True) -> torch.Tensor:
    """The VE noise levels `sigma~(t)` of (discrete or continuous) process times, e.g. from `ddim_timesteps`."""
    t = as_float_tensor(timesteps, "timesteps", dtype=torch.float64)
    if t.ndim != 1 or t.numel() == 0 or (t[1:] >= t[:-1]).any():
        raise ValueError("timesteps must be a non-empty, strictly descending 1-D sequence")
    return _finish(process.sigma_ve(t), zero)


# n -> (sigma_hi, sigma_lo, rho), fitted by Nelder-Mead per n on 5 training mixtures (three 2-D, a 64-D and a 32-D,
# none of them a benchmark oracle) to minimise a log RMS + (1 - a) log median relative endpoint error: "unipc" and
# "lms" with a = 0.7 on 1000 starts each, "hybrid" with a = 0.85 on 3000 starts each (RMS, set by the few starts that
# end in another component, weighted more); bench/sampler_tuning.py and docs/samplers.md say how. The values
# assume data of about unit scale (as normalised images or the toy sets).
TUNED = {
    "unipc": {5: (6.276, 0.2073, 153.0), 10: (6.573, 0.0368, 180.3), 20: (8.706, 0.0226, 6.458),
              50: (19.00, 0.0065, 15.51)},
    "lms": {5: (6.894, 0.1583, 257.6), 10: (17.98, 0.0332, 32.78), 20: (29.45, 0.0298, 15.79),
            50: (46.38, 0.0223, 43.14)},
    "hybrid": {5: (5.6188, 0.1390, 447.8684), 10: (14.5876, 0.0506, 55.5818), 20: (19.0771, 0.0619, 23.6971),
               50: (26.2167, 0.0257, 113.3088)},
}


# n -> sigma_switch of `sample_hybrid` on its tuned grid (the default, `sigma_switch=None`): the best of a few
# values per n on the same training mixtures (3000 starts of seed 7, loss 0.85 log RMS + 0.15 log median), the grid
# held at TUNED["hybrid"]; checked on 4000 held-out starts of seed 11 (docs/samplers.md).
HYBRID_SWITCH = {5: 1.0, 10: 1.0, 15: 1.5, 20: 0.3, 30: 0.1, 50: 0.05}


def _interpolate(table: dict, n: int) -> tuple:
    """`table[n]` (a number or a tuple of positive numbers), linear in `log n` and in the log of each value between
    tabled `n`, held at the nearest tabled `n` outside."""
    items = sorted(table.items())
    ln = min(max(math.log(n), math.log(items[0][0])), math.log(items[-1][0]))
    j = max(i for i in range(len(items) - 1) if math.log(items[i][0]) <= ln) if len(items) > 1 else 0
    k = min(j + 1, len(items) - 1)
    lo_n, hi_n = math.log(items[j][0]), math.log(items[k][0])
    f = (ln - lo_n) / (hi_n - lo_n) if hi_n > lo_n else 0.0
    a, b = items[j][1], items[k][1]
    if not isinstance(a, tuple):
        return math.exp((1 - f) * math.log(a) + f * math.log(b))
    return tuple(math.exp((1 - f) * math.log(u) + f * math.log(v)) for u, v in zip(a, b, strict=True))


def hybrid_switch(n: int) -> float:
    """`sample_hybrid`'s default `sigma_switch` for a grid of `n` steps: `HYBRID_SWITCH`, interpolated in `log n`
    (log of the value) between tabled `n`, held at the ends. Assumes data of about unit scale."""
    return _interpolate(HYBRID_SWITCH, check_positive_int(n, "n"))


def tuned_grid(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, *, sampler: str = "unipc",
               zero: bool = True) -> torch.Tensor:
    """`[sigma_max]`, then `n - 1` levels of a rho-schedule (`edm_grid`) from `sigma_hi(n)` down to `sigma_lo(n)`,
    then 0. `(sigma_hi, sigma_lo, rho)` come from `TUNED[sampler]`, interpolated linearly in `log n` between tuned `n`
    (held at the ends), and clipped into `[sigma_min, sigma_max]`. One evaluation per level for one-step-per-level
    samplers."""
    check_positive_int(n, "n")
    _check_range(sigma_min, sigma_max)
    check_choice(sampler, "sampler", TUNED)
    if n == 1:
        return _finish(torch.tensor([float(sigma_max)], dtype=torch.float64), zero)
    hi, lo, rho = _interpolate(TUNED[sampler], n)
    hi = min(hi, sigma_max * 0.999)
    lo = min(max(lo, sigma_min), hi * 0.999)
    rest = edm_grid(n - 1, lo, hi, rho, zero=False) if n > 2 else torch.tensor([hi], dtype=torch.float64)
    return _finish(torch.cat([torch.tensor([float(sigma_max)], dtype=torch.float64), rest]), zero)


def default_sigma_range(process: NoiseProcess | None = None) -> tuple[float, float]:
    """The default ends `(sigma_min, sigma_max)` of a sampling grid for a model of `process`: `sigma~(t_max)` and
    `max(sigma~(t_min), SIGMA_MIN)`; EDM's `(0.002, 80)` without a process. The floor keeps the grid positive where
    `sigma~(t_min) = 0` (rectified flow, the cosine schedule) and out of levels below EDM's, which change nothing
    visible in data of unit scale and only strain float32 and bfloat16 (SubVP's `sigma~(t_min)` is 2e-6)."""
    if process is None:
        return SIGMA_MIN, 80.0
    return max(process.sigma_ve_min, SIGMA_MIN), process.sigma_ve_max


def grid_from_list(values: Sequence[float] | torch.Tensor, *, zero: bool = False) -> torch.Tensor:
    """A user's list of noise levels as a checked float64 grid (strictly descending, positive except a final 0);
    `zero=True` appends a final 0 if it is not there."""
    s = as_float_tensor(values, "sigmas", dtype=torch.float64).cpu()
    if s.ndim != 1 or s.numel() < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D list, got shape {tuple(s.shape)}")
    if zero and s[-1] != 0:
        s = append_zero(s)
    return check_sigmas(s)


def check_sigmas(sigmas, batch: int | None = None) -> torch.Tensor:
    """Validate a sampler grid: float64, shape `[N+1]` or per-example `[N+1, B]`, N >= 1, finite, strictly descending
    along dim 0, positive except that the last entry may be 0. Returns it as a float64 tensor."""
    s = as_float_tensor(sigmas, "sigmas", dtype=torch.float64)
    if s.ndim not in (1, 2) or s.shape[0] < 2:
        raise ValueError(f"sigmas must have shape [N+1] or [N+1, B] with N >= 1, got {tuple(s.shape)}")
    if s.ndim == 2 and batch is not None and s.shape[1] not in (1, batch):
        raise ValueError(f"per-example sigmas of shape {tuple(s.shape)} do not match batch size {batch}")
    if not torch.isfinite(s).all():
        raise ValueError("sigmas must be finite")
    if (s[:-1] <= 0).any() or (s[-1] < 0).any():
        raise ValueError(f"sigmas must be > 0 except a final 0, got min {s.min().item():.6g}")
    if (s[1:] >= s[:-1]).any():
        raise ValueError("sigmas must be strictly descending")
    return s
