"""Noise processes of both formulations: `x_t = alpha(t) x0 + sigma(t) eps`, eps ~ N(0, I).

This module owns every schedule and everything derived from one schedule in one place
(the Score SDE view, Song et al. 2021, "Score-Based Generative Modeling through SDEs"):

* `alpha(t)`, `sigma(t)`, their log-SNR `lambda(t) = log(alpha^2 / sigma^2)` and its inverse;
* the forward SDE `dx = f(t) x dt + g(t) dw` with `f = d log alpha / dt` and
  `g^2 = d sigma^2/dt - 2 f sigma^2 = 2 sigma^2 d/dt log(sigma/alpha)` (Kingma et al. 2021, VDM, eq. 33;
  Song et al. 2021, eq. 5 and App. B);
* the map to VE coordinates `sigma~(t) = sigma / alpha` and back (Karras et al. 2022, EDM, Sec. 4 / Table 1),
  through which every sampler sees every process;
* forward sampling and the Gaussian prior.

Processes (README.md has their table):
  `DDPM` (Ho et al. 2020; linear, scaled-linear or cosine betas, Nichol & Dhariwal 2021; zero-terminal-SNR
  rescaling, Lin et al. 2024), `VP` (VP-SDE, Song et al. 2021), `VPCosine` (Nichol & Dhariwal 2021),
  `SubVP` (Song et al. 2021), `VE` (NCSN / Score SDE VE, Song & Ermon 2019), `EDM` (Karras et al. 2022),
  `RectifiedFlow` (Liu et al. 2022; Lipman et al. 2022), `VDM` (the learned schedule of Kingma et al. 2021:
  a process that is also an `nn.Module` whose parameters train with the model).

A subclass provides `_log_alpha`, `_log_sigma`, `_t_from_log_snr` and, optionally, closed-form
`_sde_coeffs`; the base class derives the rest (autodiff through `torch.func.jvp` where no closed
form is given, and the tests check closed forms against autodiff). Public methods validate their
input and raise `ValueError` naming the argument; the underscored hooks do not, and are what
hot paths (samplers, the `Denoiser`) call.
"""
from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .utils import as_float_tensor, check_choice, check_finite, check_in_range, check_nonnegative, expand_like
from .schema import choice_of, register_section

__all__ = [
    "NoiseProcess", "Coefficients", "DDPM", "DDPM_SCHEDULES", "DDPM_INTERPOLATIONS", "TERMINAL_ALPHA_CUMPROD",
    "cosine_betas", "ddpm_betas", "zero_terminal_snr_betas", "VP", "VPCosine", "SubVP", "VE", "EDM", "RectifiedFlow",
    "VDM", "PROCESSES", "get_process",
]


class Coefficients(NamedTuple):
    """`alpha(t)`, `sigma(t)` and their time derivatives (the flow-matching view of a schedule)."""
    alpha: torch.Tensor
    sigma: torch.Tensor
    d_alpha: torch.Tensor
    d_sigma: torch.Tensor


def _jvp_derivative(fn, t: torch.Tensor) -> torch.Tensor:
    """Elementwise d fn / dt by forward-mode autodiff (fn acts elementwise on t)."""
    return torch.func.jvp(fn, (t,), (torch.ones_like(t),))[1]


def gaussian_log_prob(x: torch.Tensor, std: float) -> torch.Tensor:
    """Per-example log-density of `x` `[B, ...]` under `N(0, std^2 I)`, summed over the non-batch dims (every prior
    here: a process's `N(0, sigma(t_max)^2 I)`, the VE-coordinate `N(0, sigma_max^2 I)` of the likelihood)."""
    xf = x.reshape(x.shape[0], -1)
    s2 = float(std) ** 2
    return -0.5 * (xf ** 2).sum(1) / s2 - 0.5 * xf.shape[1] * math.log(2 * math.pi * s2)


class NoiseProcess:
    """A Gaussian noise process `x_t = alpha(t) x0 + sigma(t) eps` on `t in [t_min, t_max]`.

    All methods are vectorised over `t` (any shape); python numbers become float64 tensors and a
    tensor keeps its dtype, so coefficients are float64 unless the caller asks otherwise.
    """

    name = "process"
    t_min: float
    t_max: float
    variance_preserving = False  # alpha^2 + sigma^2 == 1

    # ---- implementation hooks: unchecked, t is a floating tensor ------------------------------
    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _log_sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return 2.0 * (self._log_alpha(t) - self._log_sigma(t))

    def _sigma_ve(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(self._log_sigma(t) - self._log_alpha(t))

    def _t_from_sigma_ve(self, s: torch.Tensor) -> torch.Tensor:
        return self._t_from_log_snr(-2.0 * torch.log(s))

    def _sde_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sde_coeffs_autodiff(t)

    # ---- checked public API ------------------------------------------------------------------
    def _t(self, t, name: str = "t") -> torch.Tensor:
        t = as_float_tensor(t, name)
        return check_in_range(t, name, self.t_min, self.t_max)

    def alpha(self, t) -> torch.Tensor:
        """Signal scale `alpha(t)` (the process table of README.md)."""
        return torch.exp(self._log_alpha(self._t(t)))

    def sigma(self, t) -> torch.Tensor:
        """Noise scale `sigma(t)` (the process table of README.md)."""
        return torch.exp(self._log_sigma(self._t(t)))

    def log_snr(self, t) -> torch.Tensor:
        """Log signal-to-noise ratio `lambda(t) = log(alpha^2 / sigma^2)` (Kingma et al. 2021, VDM, eq. 2)."""
        return self._log_snr(self._t(t))

    def t_from_log_snr(self, log_snr) -> torch.Tensor:
        """Inverse of `log_snr` (closed form per process); raises if the result leaves `[t_min, t_max]`."""
        t = self._t_from_log_snr(as_float_tensor(log_snr, "log_snr"))
        return check_in_range(t, f"log_snr (mapped to t) of {self.name}", self.t_min, self.t_max)

    def sigma_ve(self, t) -> torch.Tensor:
        """VE-coordinate noise level `sigma~(t) = sigma(t) / alpha(t)` (Karras et al. 2022, Sec. 4)."""
        return self._sigma_ve(self._t(t))

    def t_from_sigma_ve(self, sigma) -> torch.Tensor:
        """Inverse of `sigma_ve`: the process time whose VE noise level is `sigma`."""
        s = check_nonnegative(as_float_tensor(sigma, "sigma"), "sigma")
        t = self._t_from_sigma_ve(s)
        if torch.isnan(t).any() or (t < self.t_min - 1e-6 * max(1.0, abs(self.t_min))).any() or \
                (t > self.t_max + 1e-6 * max(1.0, abs(self.t_max))).any():
            raise ValueError(
                f"sigma must lie in [{self.sigma_ve_min:.6g}, {self.sigma_ve_max:.6g}] for {self.name}, "
                f"got values in [{s.min().item():.6g}, {s.max().item():.6g}]")
        return t

    def sde_coeffs(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift and squared diffusion `(f(t), g(t)^2)` of `dx = f x dt + g dw` (Song et al. 2021, eq. 5;
        VDM eq. 33): `f = d log alpha/dt`, `g^2 = 2 sigma^2 d/dt log(sigma/alpha)`."""
        return self._sde_coeffs(self._t(t))

    def sde_coeffs_autodiff(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """`sde_coeffs` by forward-mode autodiff of `log alpha` and `log(sigma/alpha)` (the check on closed forms)."""
        t = as_float_tensor(t, "t")
        f = _jvp_derivative(self._log_alpha, t)
        dlog_sv = _jvp_derivative(lambda u: self._log_sigma(u) - self._log_alpha(u), t)
        return f, 2.0 * torch.exp(2.0 * self._log_sigma(t)) * dlog_sv

    def _coefficients(self, t: torch.Tensor) -> Coefficients:
        alpha, sigma = torch.exp(self._log_alpha(t)), torch.exp(self._log_sigma(t))
        f, g2 = self._sde_coeffs(t)
        return Coefficients(alpha, sigma, f * alpha, g2 / (2.0 * sigma) + f * sigma)

    def coefficients(self, t) -> Coefficients:
        """`alpha, sigma, d alpha/dt, d sigma/dt` at `t`, derived from the SDE coefficients:
        `d alpha = f alpha` and `d sigma = g^2 / (2 sigma) + f sigma` (invert the definitions of f and g^2)."""
        return self._coefficients(self._t(t))

    def marginal_sample(self, x0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """`x_t = alpha(t) x0 + sigma(t) eps` with `t` a scalar or per-example `[B]` (Ho et al. 2020, eq. 4)."""
        if x0.shape != eps.shape:
            raise ValueError(f"x0 and eps must have the same shape, got {tuple(x0.shape)} and {tuple(eps.shape)}")
        check_finite(x0, "x0")
        t = self._t(t).to(x0.device)
        a = expand_like(torch.exp(self._log_alpha(t)), x0).to(x0.dtype)
        s = expand_like(torch.exp(self._log_sigma(t)), x0).to(x0.dtype)
        return a * x0 + s * eps

    @property
    def sigma_ve_min(self) -> float:
        """`sigma~(t_min)`."""
        return float(self._sigma_ve(torch.tensor(self.t_min, dtype=torch.float64)))

    @property
    def sigma_ve_max(self) -> float:
        """`sigma~(t_max)`: where VE-coordinate samplers start."""
        return float(self._sigma_ve(torch.tensor(self.t_max, dtype=torch.float64)))

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior `N(0, sigma(t_max)^2 I)` for `x_{t_max}` (alpha(t_max) x0 neglected)."""
        return float(torch.exp(self._log_sigma(torch.tensor(self.t_max, dtype=torch.float64))))

    def prior_sample(self, shape, generator: torch.Generator | None = None, dtype=torch.float32,
                     device=None) -> torch.Tensor:
        """A draw of `x_{t_max}` from the prior `N(0, prior_std^2 I)`."""
        shape = tuple(shape)
        if any((not isinstance(n, int)) or n < 0 for n in shape):
            raise ValueError(f"shape must be a tuple of non-negative integers, got {shape!r}")
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        return self.prior_std * z

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example log-density of `x` (shape `[B, ...]`) under the prior, summed over non-batch dims."""
        check_finite(x, "x")
        if x.ndim < 1:
            raise ValueError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
        return gaussian_log_prob(x, self.prior_std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t in [{self.t_min:g}, {self.t_max:g}])"


class _VariancePreserving(NoiseProcess):
    """`alpha^2 + sigma^2 = 1`: `log alpha = -softplus(-lambda)/2`, `log sigma = -softplus(lambda)/2`."""
    variance_preserving = True

    def _log_sigma(self, t):
        return 0.5 * torch.log(-torch.expm1(2.0 * self._log_alpha(t)))


def _check_range(t_min: float, t_max: float, lo: float, hi: float, name: str) -> None:
    if not (lo <= t_min < t_max <= hi):
        raise ValueError(f"{name} needs {lo:g} <= t_min < t_max <= {hi:g}, got t_min={t_min!r}, t_max={t_max!r}")


DDPM_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
DDPM_INTERPOLATIONS = ("log_linear", "linear")
# alpha-bar of the last timestep when zero-terminal-SNR rescaling makes it exactly 0: sigma~ there would be infinite,
# so the continuous process (and every sampler) uses this floor, sigma~_max = sqrt(2^24 - 1) ~ 4096 (the value
# diffusers' Euler and DPM-Solver schedulers use for the same reason); where `abar_{N-2}` is already below it, the
# last finite step is repeated, `abar_{N-2} (1 - beta_{N-2})`, so that sigma~ stays increasing.
TERMINAL_ALPHA_CUMPROD = 2.0 ** -24


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17 discretised (their improved-DDPM code; diffusers' "squaredcos_cap_v2"):
    `beta_i = min(1 - abar((i+1)/N) / abar(i/N), max_beta)` with `abar = alpha^2` of `VPCosine(s)`. Float64."""
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    log_abar = 2.0 * VPCosine(s)._log_alpha(t)
    return (-torch.expm1(log_abar[1:] - log_abar[:-1])).clamp(max=max_beta)


def ddpm_betas(schedule: str, beta_start: float, beta_end: float, num_timesteps: int,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The betas of a named schedule (`DDPM_SCHEDULES`) in `dtype` (diffusers computes them in float32):
    "linear" (Ho et al. 2020), "scaled_linear" (linear in sqrt(beta), Stable Diffusion), "squaredcos_cap_v2"
    (`cosine_betas`, which ignores `beta_start` / `beta_end`)."""
    check_choice(schedule, "beta schedule", DDPM_SCHEDULES)
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=dtype)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=dtype) ** 2
    return cosine_betas(num_timesteps).to(dtype)


def zero_terminal_snr_betas(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1: shift and scale
    `sqrt(abar)` so that it keeps its first value and reaches exactly 0 at the last timestep (zero terminal SNR);
    returns the new betas (the last one is 1) in `betas`' dtype."""
    a = torch.cumprod(1.0 - betas, 0).sqrt()
    a0, aT = a[0].clone(), a[-1].clone()
    a = (a - aT) * (a0 / (a0 - aT))
    abar = a ** 2
    return 1.0 - torch.cat([abar[:1], abar[1:] / abar[:-1]])


class DDPM(_VariancePreserving):
    """Discrete DDPM (Ho et al. 2020): `N` betas, `alpha_i = sqrt(prod_{j<=i}(1 - beta_j))`, timesteps `i = 0..N-1`.

    Args:
        beta_start, beta_end: ends of the "linear" and "scaled_linear" schedules.
        num_timesteps:        N.
        schedule:             one of `DDPM_SCHEDULES`: "linear" (Ho et al.), "scaled_linear" (Stable Diffusion's
                              betas, linear in sqrt(beta)), "squaredcos_cap_v2" (Nichol & Dhariwal's cosine,
                              `cosine_betas`).
        betas:                explicit betas (a 1-D sequence in (0, 1], only the last may be 1); overrides the four
                              arguments above. `DDPM.from_alphas_cumprod` takes the products instead.
        rescale_zero_terminal_snr: rescale the betas to zero terminal SNR (Lin et al. 2024, Alg. 1,
                              `zero_terminal_snr_betas`). `alphas_cumprod[-1]` is then exactly 0 and sigma~ would be
                              infinite at t = N-1; the continuous process floors it at `TERMINAL_ALPHA_CUMPROD` (2^-24,
                              sigma~_max ~ 4096, or lower where the previous level is already there), the largest
                              finite level, where samplers start. A v-prediction model
                              (which Lin et al. require) gives there `D = -v + O(2^-12 |x|)`, the SNR-0 endpoint to
                              2.4e-4; an eps-prediction model cannot be sampled usefully from SNR 0.
        interpolation:        between integer timesteps `log sigma~` is linear in `t` ("log_linear", the convention of
                              k-diffusion's `DiscreteSchedule`) or `sigma~` is ("linear", diffusers' Euler-type
                              schedulers). Either way any `t in [0, N-1]` has a `sigma~`, the map is strictly monotone,
                              `t_from_sigma_ve` is its exact inverse, and integer `t` give the discrete values.
    """
    name = "ddpm"

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, num_timesteps: int = 1000,
                 schedule: str = "linear", betas=None, rescale_zero_terminal_snr: bool = False,
                 interpolation: str = "log_linear"):
        check_choice(interpolation, "interpolation", DDPM_INTERPOLATIONS)
        with torch.device("cpu"):  # the tables are CPU constants, whatever the default device (meta, cuda)
            if betas is None:
                check_choice(schedule, "schedule", DDPM_SCHEDULES)
                if schedule != "squaredcos_cap_v2" and not (0 < beta_start < beta_end < 1):
                    raise ValueError(f"DDPM needs 0 < beta_start < beta_end < 1, got {beta_start!r}, {beta_end!r}")
                if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 2:
                    raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}")
                betas = ddpm_betas(schedule, beta_start, beta_end, num_timesteps)
            else:
                betas, schedule = _check_betas(betas), "custom"
            if rescale_zero_terminal_snr:
                betas = zero_terminal_snr_betas(betas)
            self.betas, self.schedule, self.interpolation = betas, schedule, interpolation
            custom = schedule == "custom"
            self.beta_start, self.beta_end = (None, None) if custom else (float(beta_start), float(beta_end))
            self.rescale_zero_terminal_snr = bool(rescale_zero_terminal_snr)
            self.num_timesteps = n = betas.shape[0]
            log_abar = torch.cumsum(torch.log1p(-betas), 0)
            self.alphas_cumprod = torch.exp(log_abar)
            # log sigma~_i = 1/2 log((1 - abar_i) / abar_i) = 1/2 log(expm1(-log abar_i)); a zero abar gets the floor.
            if torch.isinf(log_abar[-1]):  # zero terminal SNR: the floor, or the last finite step repeated if lower
                floor = math.log(TERMINAL_ALPHA_CUMPROD)
                log_abar[-1] = floor if floor < log_abar[-2] else log_abar[-2] + torch.log1p(-betas[-2])
            self.log_sigmas = 0.5 * torch.log(torch.expm1(-log_abar))
            if not (self.log_sigmas[1:] > self.log_sigmas[:-1]).all():
                raise ValueError("betas must make sigma~ strictly increasing (0 < beta_i, the last alpha-bar above "
                                 f"{TERMINAL_ALPHA_CUMPROD:g} unless it is exactly 0)")
        self.t_min, self.t_max = 0.0, float(n - 1)
        self._tables: dict = {}

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod, interpolation: str = "log_linear") -> "DDPM":
        """The DDPM process of given products `abar_i = prod_{j<=i}(1 - beta_j)` (strictly decreasing in (0, 1];
        the last may be exactly 0, zero terminal SNR), e.g. a diffusers scheduler's `alphas_cumprod`."""
        abar = as_float_tensor(alphas_cumprod, "alphas_cumprod", dtype=torch.float64).cpu()
        if abar.ndim != 1 or abar.numel() < 2 or not ((abar[1:] < abar[:-1]).all() and abar[0] <= 1 and abar[-1] >= 0):
            raise ValueError("alphas_cumprod must be a strictly decreasing 1-D sequence in [0, 1] of length >= 2")
        return cls(betas=1.0 - abar / torch.cat([abar.new_ones(1), abar[:-1]]), interpolation=interpolation)

    def _table(self, t: torch.Tensor) -> torch.Tensor:
        """`log sigma~_i` ("log_linear") or `sigma~_i` ("linear") on `t`'s device and dtype."""
        key = (t.device, t.dtype)
        if key not in self._tables:
            table = self.log_sigmas if self.interpolation == "log_linear" else self.log_sigmas.exp()
            self._tables[key] = table.to(device=t.device, dtype=t.dtype)
        return self._tables[key]

    def _interp(self, t):
        """`(value, slope)` of the interpolated table at `t` (extrapolated linearly past either end)."""
        tab = self._table(t)
        lo = t.detach().floor().clamp(0, self.num_timesteps - 2).long()
        slope = tab[lo + 1] - tab[lo]
        return tab[lo] + (t - lo.to(t.dtype)) * slope, slope

    def _log_sigma_ve(self, t):
        v, _ = self._interp(t)
        return v if self.interpolation == "log_linear" else torch.log(v)

    def _log_alpha(self, t):
        return -0.5 * F.softplus(2.0 * self._log_sigma_ve(t))

    def _log_sigma(self, t):
        lsv = self._log_sigma_ve(t)
        return lsv - 0.5 * F.softplus(2.0 * lsv)

    def _sigma_ve(self, t):
        return torch.exp(self._log_sigma_ve(t))

    def _t_from_log_snr(self, log_snr):
        tab = self._table(log_snr)
        v = -0.5 * log_snr if self.interpolation == "log_linear" else torch.exp(-0.5 * log_snr)
        i = torch.searchsorted(tab, v.detach().contiguous()).clamp(1, self.num_timesteps - 1) - 1
        return i.to(v.dtype) + (v - tab[i]) / (tab[i + 1] - tab[i])

    def _sde_coeffs(self, t):
        # f = d log alpha/dt and g^2 = -2 f for a VP process, from d log sigma~/dt, the local slope of the table.
        v, slope = self._interp(t)
        dlog_sv = slope if self.interpolation == "log_linear" else slope / v
        sv2 = torch.exp(2.0 * self._log_sigma_ve(t))
        f = -dlog_sv * sv2 / (1.0 + sv2)
        return f, -2.0 * f

    def timesteps_tensor(self, device=None) -> torch.Tensor:
        """The integer timesteps `0..N-1` as float64."""
        return torch.arange(self.num_timesteps, dtype=torch.float64, device=device)

    def __repr__(self):
        extra = (", zero terminal SNR" if self.rescale_zero_terminal_snr else "") + \
            (", linear interpolation" if self.interpolation == "linear" else "")
        return f"DDPM({self.schedule} betas {self.betas[0]:.3g}..{self.betas[-1]:.3g}, N={self.num_timesteps}{extra})"


def _check_betas(betas) -> torch.Tensor:
    b = as_float_tensor(betas, "betas", dtype=torch.float64).cpu()
    if b.ndim != 1 or b.numel() < 2:
        raise ValueError(f"betas must be a 1-D sequence of length >= 2, got shape {tuple(b.shape)}")
    if not ((b[:-1] > 0).all() and (b[:-1] < 1).all() and 0 < b[-1] <= 1):
        raise ValueError(f"betas must lie in (0, 1) (the last may be 1), got values in [{b.min().item():.6g}, "
                         f"{b.max().item():.6g}]")
    return b


def _vp_linear_t_from_c(c: torch.Tensor, beta_min: float, beta_max: float) -> torch.Tensor:
    """Solve `c = beta_min t + (beta_max - beta_min) t^2 / 2` for t >= 0 (cancellation-free root)."""
    return 2.0 * c / (beta_min + torch.sqrt(beta_min ** 2 + 2.0 * (beta_max - beta_min) * c))


class VP(_VariancePreserving):
    """VP-SDE (Song et al. 2021, eq. 11): `beta(t) = beta_min + t (beta_max - beta_min)`,
    `log alpha = -t^2 (beta_max - beta_min)/4 - t beta_min/2`, `f = -beta/2`, `g^2 = beta`.
    `t_min = 1e-5` is Score SDE's likelihood cut-off (1e-3 is its sampling one)."""
    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-5, t_max: float = 1.0):
        if not (0 < beta_min < beta_max):
            raise ValueError(f"VP needs 0 < beta_min < beta_max, got beta_min={beta_min!r}, beta_max={beta_max!r}")
        _check_range(t_min, t_max, 0.0, math.inf, "VP")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), float(t_max)

    def beta(self, t):
        """`beta(t)`, the instantaneous noise rate."""
        t = self._t(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_alpha(self, t):
        return -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _t_from_log_snr(self, log_snr):
        return _vp_linear_t_from_c(F.softplus(-log_snr), self.beta_min, self.beta_max)

    def _sde_coeffs(self, t):
        beta = self.beta_min + t * (self.beta_max - self.beta_min)
        return -0.5 * beta, beta

    def __repr__(self):
        return f"VP(beta {self.beta_min:g}..{self.beta_max:g}, t in [{self.t_min:g}, {self.t_max:g}])"


class SubVP(VP):
    """sub-VP SDE (Song et al. 2021, eq. 12): alpha as VP, `sigma = 1 - alpha^2`,
    `f = -beta/2`, `g^2 = beta (1 - alpha^4)`."""
    name = "subvp"
    variance_preserving = False

    def _log_sigma(self, t):
        return torch.log(-torch.expm1(2.0 * self._log_alpha(t)))

    def _t_from_log_snr(self, log_snr):
        # sigma~ = (1 - a^2)/a  =>  a = 2 / (s + sqrt(s^2 + 4)) = exp(-asinh(s/2)).
        s = torch.exp(-0.5 * log_snr)
        return _vp_linear_t_from_c(2.0 * torch.asinh(0.5 * s), self.beta_min, self.beta_max)

    def _sde_coeffs(self, t):
        beta = self.beta_min + t * (self.beta_max - self.beta_min)
        return -0.5 * beta, beta * -torch.expm1(4.0 * self._log_alpha(t))

    def __repr__(self):
        return f"SubVP(beta {self.beta_min:g}..{self.beta_max:g}, t in [{self.t_min:g}, {self.t_max:g}])"


class VPCosine(_VariancePreserving):
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): `alpha = cos(a(t)) / cos(a(0))`,
    `a(t) = (t + s)/(1 + s) pi/2`. `sigma^2 = sin(a - a0) sin(a + a0) / cos^2 a0` (cancellation-free).
    `t_max = 0.9946` keeps `log alpha` bounded as in DPM-Solver (Lu et al. 2022, App. D)."""
    name = "vp-cosine"

    def __init__(self, s: float = 0.008, t_min: float = 0.0, t_max: float = 0.9946):
        if not (s > 0):
            raise ValueError(f"VPCosine needs s > 0, got s={s!r}")
        _check_range(t_min, t_max, 0.0, 1.0 - 1e-9, "VPCosine")
        self.s, self.t_min, self.t_max = float(s), float(t_min), float(t_max)
        self._a0 = s / (1 + s) * math.pi / 2

    def _a(self, t):
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def _log_alpha(self, t):
        return torch.log(torch.cos(self._a(t))) - math.log(math.cos(self._a0))

    def _log_sigma(self, t):
        # a - a0 = t/(1+s) pi/2 and a + a0 = (t + 2s)/(1+s) pi/2, formed without cancellation
        c = math.pi / (2 * (1 + self.s))
        log_sin = torch.log(torch.sin(t * c)) + torch.log(torch.sin((t + 2 * self.s) * c))
        return 0.5 * log_sin - math.log(math.cos(self._a0))

    def _t_from_log_snr(self, log_snr):
        # cos a = alpha cos a0 with alpha^2 = sigmoid(l); sin a = sqrt(sigmoid(-l) + sigmoid(l) sin^2 a0).
        a = torch.atan2(torch.sqrt(torch.sigmoid(-log_snr) + torch.sigmoid(log_snr) * math.sin(self._a0) ** 2),
                        torch.sqrt(torch.sigmoid(log_snr)) * math.cos(self._a0))
        return a * (2 / math.pi) * (1 + self.s) - self.s

    def _sde_coeffs(self, t):
        f = -torch.tan(self._a(t)) * (math.pi / (2 * (1 + self.s)))
        return f, -2.0 * f

    def __repr__(self):
        return f"VPCosine(s={self.s:g}, t in [{self.t_min:g}, {self.t_max:g}])"


class VE(NoiseProcess):
    """Geometric VE process (NCSN, Song & Ermon 2019; Score SDE VE, Song et al. 2021, eq. 9):
    `alpha = 1`, `sigma = sigma_min (sigma_max/sigma_min)^t`, `g^2 = 2 sigma^2 log(sigma_max/sigma_min)`."""
    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 0.0, t_max: float = 1.0):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"VE needs 0 < sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")
        _check_range(t_min, t_max, 0.0, 1.0, "VE")
        self.s_min, self.s_max, self.t_min, self.t_max = float(sigma_min), float(sigma_max), float(t_min), float(t_max)
        self._log_ratio = math.log(sigma_max / sigma_min)

    def _log_alpha(self, t):
        return torch.zeros_like(t)

    def _log_sigma(self, t):
        return math.log(self.s_min) + t * self._log_ratio

    def _t_from_log_snr(self, log_snr):
        return (-0.5 * log_snr - math.log(self.s_min)) / self._log_ratio

    def _sde_coeffs(self, t):
        return torch.zeros_like(t), 2.0 * torch.exp(2.0 * self._log_sigma(t)) * self._log_ratio

    def __repr__(self):
        return f"VE(sigma {self.s_min:g}..{self.s_max:g})"


class EDM(NoiseProcess):
    """EDM (Karras et al. 2022, Table 1): `alpha = 1`, `sigma = t`, `f = 0`, `g^2 = 2t`, t in [0.002, 80]."""
    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        _check_range(sigma_min, sigma_max, 1e-300, math.inf, "EDM")
        self.t_min, self.t_max = float(sigma_min), float(sigma_max)

    def _log_alpha(self, t):
        return torch.zeros_like(t)

    def _log_sigma(self, t):
        return torch.log(t)

    def _sigma_ve(self, t):
        return t

    def _t_from_sigma_ve(self, s):
        return s

    def _t_from_log_snr(self, log_snr):
        return torch.exp(-0.5 * log_snr)

    def _sde_coeffs(self, t):
        return torch.zeros_like(t), 2.0 * t

    def __repr__(self):
        return f"EDM(sigma {self.t_min:g}..{self.t_max:g})"


class RectifiedFlow(NoiseProcess):
    """Rectified flow / linear interpolant (Liu et al. 2022; Lipman et al. 2022): `alpha = 1 - t`, `sigma = t`,
    `f = -1/(1 - t)`, `g^2 = 2t/(1 - t)`. `sigma~ = t/(1 - t)` is infinite at t = 1, so the default
    `t_max = 0.999` (sigma~ = 999); pass `t_max=1.0` for the exact endpoint."""
    name = "rf"

    def __init__(self, t_min: float = 0.0, t_max: float = 0.999):
        _check_range(t_min, t_max, 0.0, 1.0, "RectifiedFlow")
        self.t_min, self.t_max = float(t_min), float(t_max)

    def _log_alpha(self, t):
        return torch.log1p(-t)

    def _log_sigma(self, t):
        return torch.log(t)

    def _t_from_log_snr(self, log_snr):
        return torch.sigmoid(-0.5 * log_snr)

    def _t_from_sigma_ve(self, s):
        return s / (1.0 + s)

    def _sde_coeffs(self, t):
        return -1.0 / (1.0 - t), 2.0 * t / (1.0 - t)


class VDM(NoiseProcess, nn.Module):
    """VDM's learned noise schedule (Kingma et al. 2021, "Variational Diffusion Models", Sec. 3-5, App. H):
    a variance-preserving process given by `gamma(t) = -log SNR(t)`, with `alpha^2 = sigmoid(-gamma)` and
    `sigma^2 = sigmoid(gamma)`, written as learned end points plus a monotone shape (VDM eq. 14 and App. H):

        gamma(t) = gamma_min + (gamma_max - gamma_min) * s(t),   s(t_min) = 0,  s(t_max) = 1,  s' > 0.

    Shapes: "learned", VDM's monotone network `h(t) = w t + (1/H) sum_j v_j sigmoid(u_j (2t - 1) + b_j)` with
    `w, u_j, v_j > 0` (softplus of free parameters), normalised to `s = (h(t) - h(0)) / (h(1) - h(0))` (it starts
    close to VDM's linear log-SNR); "linear" (VDM's fixed baseline); or the name of another process (fixed:
    that process's own normalised log-SNR on its own time range, so that `VDM(shape="vp")` is `VP` written in
    this class's parametrization). `gamma_max = gamma_min + exp(.)` keeps the ends ordered.

    The process is an `nn.Module`: its parameters train with the model (`losses.VDMLoss`, whose schedule gradient
    minimises the variance of the diffusion loss through `variance_gradient`), they are float64, and they are
    saved in the model's checkpoint. `t_from_log_snr` has no closed form: a table of `s` on 2049 times (rebuilt when a
    parameter changes) brackets `t`, two Newton steps inside the bracket reach float64 precision, and one more
    Newton step carries the gradient (implicit differentiation).

    Args:
        gamma_min: `-log SNR` at `t_min` (None: the shape process's value, else VDM's -13.3).
        gamma_max: `-log SNR` at `t_max` (None: the shape process's value, else VDM's 5.0).
        shape:     "learned", "linear" or a name in `PROCESSES` (fixed shape).
        learn_ends: train `gamma_min` and `gamma_max` (else they are fixed buffers).
        hidden:    width `H` of the monotone network.
    """
    name = "vdm"
    variance_preserving = True
    END_SCALE = 10.0   # a learned gamma_min is stored divided by this: Adam's steps (about lr each) move it 10x
    #                    faster, which a few thousand steps need (VDM trains for millions); the gap is stored as its log

    def __init__(self, gamma_min: float | None = None, gamma_max: float | None = None, shape: str = "learned",
                 learn_ends: bool = True, hidden: int = 1024):
        nn.Module.__init__(self)
        names = ["learned", "linear"] + [k for k in PROCESSES if k != "vdm"]
        check_choice(shape, "shape", names)
        self.shape, self.base, self._scale, self._last, self._grid = shape, None, None, None, None
        self.t_min, self.t_max = 0.0, 1.0
        ends = (-13.3, 5.0)
        if shape not in ("learned", "linear"):
            self.base = get_process(shape)
            self.t_min, self.t_max = self.base.t_min, self.base.t_max
            ends = tuple(float(-self.base._log_snr(torch.tensor(t, dtype=torch.float64)))
                         for t in (self.t_min, self.t_max))
        g0 = float(ends[0] if gamma_min is None else gamma_min)
        g1 = float(ends[1] if gamma_max is None else gamma_max)
        if not (math.isfinite(g0) and math.isfinite(g1) and g0 < g1):
            raise ValueError(f"VDM needs finite gamma_min < gamma_max, got gamma_min={g0!r}, gamma_max={g1!r}")
        f64 = dict(dtype=torch.float64)
        self._end_scale = self.END_SCALE if learn_ends else 1.0
        ends_t = (torch.tensor(g0 / self._end_scale, **f64), torch.tensor(g1 - g0, **f64).log())
        for k, v in zip(("gamma_0", "gamma_gap"), ends_t, strict=True):
            if learn_ends:
                self.register_parameter(k, nn.Parameter(v))
            else:
                self.register_buffer(k, v)
        if shape == "learned":
            if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
                raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
            g = torch.Generator().manual_seed(0)    # the same initial shape whatever the global seed
            self.w = nn.Parameter(torch.tensor(math.log(math.e - 1), **f64))   # softplus(w) = 1
            self.u = nn.Parameter(torch.randn(hidden, generator=g, **f64))
            self.b = nn.Parameter(torch.randn(hidden, generator=g, **f64))
            self.v = nn.Parameter(torch.full((hidden,), -4.0, **f64))         # a near-linear start

    # ---- the schedule -----------------------------------------------------------------------------
    def _h(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The monotone network and its derivative at `u in [0, 1]`."""
        w, uu, v = F.softplus(self.w), F.softplus(self.u), F.softplus(self.v)
        z = torch.sigmoid(uu * (2 * u[..., None] - 1) + self.b)
        h = w * u + (v * z).mean(-1)
        dh = w + (v * uu * 2 * z * (1 - z)).mean(-1)
        return h, dh

    def _shape(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(s(t), ds/dt)` in float64."""
        t = t.to(torch.float64)
        if t.ndim == 1 and t.numel() > 1 and t.stride(0) == 0:     # one time for the whole batch (samplers)
            s, ds = self._shape(t[:1])
            return s.expand(t.shape), ds.expand(t.shape)
        span = self.t_max - self.t_min
        if self.shape == "linear":
            return (t - self.t_min) / span, torch.full_like(t, 1.0 / span)
        if self.base is not None:
            lo, hi = (-self.base._log_snr(torch.tensor(x, dtype=torch.float64, device=t.device))
                      for x in (self.t_min, self.t_max))
            _, g2 = self.base._sde_coeffs(t)
            return (-self.base._log_snr(t) - lo) / (hi - lo), g2 * torch.exp(-2 * self.base._log_sigma(t)) / (hi - lo)
        u = (t - self.t_min) / span
        h, dh = self._h(torch.cat([u.reshape(-1), u.new_tensor([0.0, 1.0])]))   # h(u), h(0), h(1) in one call
        h0, h1 = h[-2], h[-1]
        h, dh = h[:-2].reshape(u.shape), dh[:-2].reshape(u.shape)
        s, ds = (h - h0) / (h1 - h0), dh / ((h1 - h0) * span)
        if self._scale is not None and s.requires_grad:
            scale = self._scale                 # read at backward time, after the loss is known
            hook = lambda grad: grad * scale() if grad.shape == scale().shape else grad  # noqa: E731
            s.register_hook(hook)
            ds.register_hook(hook)
        return s, ds

    def _gamma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(gamma(t), d gamma/dt)`, float64. The last result is kept for the same `t` tensor (one training step
        asks for alpha, sigma, the weight and the network's noise level at one `t`), until `t` or a parameter
        changes in place, the grad mode changes or a `variance_gradient` context starts or ends."""
        key = (t._version, torch.is_grad_enabled(), self._scale is not None,
               tuple(p._version for p in self.parameters()))
        if self._last is not None and self._last[0] is t and self._last[1] == key:
            return self._last[2]
        s, ds = self._shape(t)
        gap = torch.exp(self.gamma_gap)
        out = (self._end_scale * self.gamma_0 + gap * s, gap * ds)
        self._last = (t, key, out)
        return out

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_last", "_grid")} | {"_last": None, "_grid": None}

    @property
    def gamma_ends(self) -> tuple[float, float]:
        """`(gamma_min, gamma_max)`: `-log SNR` at `t_min` and `t_max` (the learned end points)."""
        g0 = self._end_scale * float(self.gamma_0.detach())
        return g0, g0 + float(torch.exp(self.gamma_gap.detach()))

    @contextlib.contextmanager
    def variance_gradient(self, scale):
        """Inside this context, the gradient that reaches the shape's parameters through per-example schedule
        values `s(t)`, `s'(t)` (`t` of shape `[B]`) is multiplied by `scale()` (`[B]`, read at backward time). With
        `scale = 2 L` for per-example losses `L` it turns `d mean(L)` into `d mean(L^2)`: the schedule's shape then
        minimises the variance of the loss estimate while everything else minimises the loss (VDM, Sec. 5.2)."""
        self._scale = scale
        try:
            yield self
        finally:
            self._scale = None

    # ---- the three hooks (plus closed forms) -----------------------------------------------------
    def _log_alpha(self, t):
        return (-0.5 * F.softplus(self._gamma(t)[0])).to(t.dtype)

    def _log_sigma(self, t):
        return (-0.5 * F.softplus(-self._gamma(t)[0])).to(t.dtype)

    def _log_snr(self, t):
        return -self._gamma(t)[0].to(t.dtype)

    def _sigma_ve(self, t):
        return torch.exp(0.5 * self._gamma(t)[0]).to(t.dtype)

    def _sde_coeffs(self, t):
        # f = d log alpha/dt = -sigmoid(gamma) gamma'/2; g^2 = sigma^2 d(log sigma^2/alpha^2)/dt = sigmoid(gamma) gamma'
        gamma, dgamma = self._gamma(t)
        g2 = torch.sigmoid(gamma) * dgamma
        return (-0.5 * g2).to(t.dtype), g2.to(t.dtype)

    def _table(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """`(t, s(t))` on 2049 equally spaced times, kept until a parameter changes: the inverse's starting bracket."""
        key = (str(device),) + tuple(p._version for p in self.parameters())
        if self._grid is None or self._grid[0] != key:
            with torch.no_grad():
                t = torch.linspace(self.t_min, self.t_max, 2049, dtype=torch.float64, device=device)
                self._grid = (key, t, self._shape(t)[0])
        return self._grid[1], self._grid[2]

    def _t_from_log_snr(self, log_snr):
        gamma_min = self._end_scale * self.gamma_0
        target = (-log_snr.to(torch.float64) - gamma_min) / torch.exp(self.gamma_gap)   # solve s(t) = target
        with torch.no_grad():
            tt, inverse = torch.unique(target.detach(), return_inverse=True)   # samplers pass one sigma per batch
            ts, ss = self._table(tt.device)
            i = torch.searchsorted(ss, tt.contiguous()).clamp(1, ss.numel() - 1)
            lo, hi = ts[i - 1], ts[i]
            t = lo + (tt - ss[i - 1]) * (hi - lo) / (ss[i] - ss[i - 1])   # linear interpolation, then Newton
            for _ in range(16):     # Newton kept inside the shrinking bracket, else bisection (rtsafe)
                s, ds = self._shape(t)
                below = s < tt
                lo, hi = torch.where(below, t, lo), torch.where(below, hi, t)
                newton = t - (s - tt) / ds
                t_next = torch.where((newton >= lo) & (newton <= hi), newton, 0.5 * (lo + hi))
                done = bool(((t_next - t).abs() <= 1e-15 * (self.t_max - self.t_min)).all())
                t = t_next
                if done:
                    break
            # beyond either end: continue linearly with the end's slope (the public check then names the value)
            for end, s_end in ((self.t_min, 0.0), (self.t_max, 1.0)):
                out = tt < s_end if s_end == 0.0 else tt > s_end
                if out.any():
                    e = torch.full_like(tt, end)
                    t = torch.where(out, e + (tt - s_end) / self._shape(e)[1], t)
            t = t[inverse] if t.numel() > 1 else t.reshape(()).expand(target.shape)
        if not (torch.is_grad_enabled() and target.requires_grad):
            return t.to(log_snr.dtype)
        s, ds = self._shape(t)                                               # one more Newton step carries the gradient
        return (t - (s - target) / ds).to(log_snr.dtype)

    @property
    def sigma_ve_min(self) -> float:
        with torch.no_grad():
            return NoiseProcess.sigma_ve_min.fget(self)

    @property
    def sigma_ve_max(self) -> float:
        with torch.no_grad():
            return NoiseProcess.sigma_ve_max.fget(self)

    @property
    def prior_std(self) -> float:
        with torch.no_grad():
            return NoiseProcess.prior_std.fget(self)

    def __repr__(self):
        g0, g1 = self.gamma_ends
        return f"VDM(shape={self.shape}, gamma {g0:.4g}..{g1:.4g}, t in [{self.t_min:g}, {self.t_max:g}])"


PROCESSES: dict[str, type[NoiseProcess]] = {
    "ddpm": DDPM, "vp": VP, "vp-cosine": VPCosine, "subvp": SubVP, "ve": VE, "edm": EDM, "rf": RectifiedFlow,
    "vdm": VDM,
}


def get_process(name: str, **kwargs) -> NoiseProcess:
    """A process by its registry name (`PROCESSES` keys) with constructor keyword arguments."""
    check_choice(name, "process", PROCESSES)
    return PROCESSES[name](**kwargs)


register_section("process", head="name", default="ddpm", choices=choice_of(PROCESSES, "process.name"))
