"""Training losses: one value per example, built from a noise-level sampler and a weighting.

This module owns the denoising losses of both formulations, written as one generic piece,
`DenoisingLoss(noise, weight, target, space)`:

    t ~ noise,  eps ~ N(0, I),  x_t = alpha(t) x0 + sigma(t) eps,
    loss = weight(t) * mean_dims |out - target|^2

with `out` the network's own output `denoiser.raw(x_t, t)` and `target` the exact value of the same kind
(eps, x0, score, v, flow or EDM's `F` target) from `(x0, eps)` through the core conversions.
`space="x0"` measures the error of the denoiser output `D` against `x0` instead (the EDM paper's form).

Named losses (`LOSSES`, `build_loss(name, process, **kwargs)`):
* "ddpm"      `L_simple`: eps-MSE, t uniform over the discrete timesteps (Ho et al. 2020, eq. 14).
* "ncsn"      denoising score matching over a geometric sigma set with `lambda(sigma) = sigma^2`
              (Song & Ermon 2019, eq. 5-6; Vincent 2011).
* "score_sde" continuous-time DSM for VP / sub-VP / VE, t ~ U[t_min, t_max], `lambda = sigma(t)^2`, or the
              likelihood weighting `lambda = g(t)^2` with `likelihood=True` (Song et al. 2021, eq. 7;
              Song, Durkan et al. 2021, "Maximum likelihood training of score-based diffusion models", Thm. 1).
* "vdm"       the continuous-time VDM diffusion loss, eps-MSE weighted by `-1/2 d log-SNR/dt` and summed over
              dimensions: the diffusion term of the ELBO (Kingma et al. 2021, eq. 17).
* "vdm_elbo"  VDM's whole negative ELBO (prior + discrete reconstruction + diffusion term) for data on equally
              spaced levels, with the learned schedule's variance-minimising gradient (`VDMLoss`; Kingma et al. 2021).
* "edm"       log-normal sigma (P_mean -1.2, P_std 1.2), `lambda = (sigma^2 + sd^2)/(sigma sd)^2`, on the
              preconditioned network (Karras et al. 2022, eq. 8 and Table 1).
* "x0", "v", "eps", "mse": the generic target-MSE for a network predicting that target (Salimans & Ho 2022,
              Sec. 4; "mse" takes whatever the `Denoiser` predicts).

A loss never knows the sampler that will be used and only sees the process through the `Denoiser`.
Noise levels and weights are computed in float64; the squared error in the data's dtype.
"""
from __future__ import annotations

import inspect
import math

import torch

from .parametrization import Denoiser, edm_precond, score_from_eps, target_from_x0, x0_from_target
from .processes import NoiseProcess
from .schema import choice_of, register_section
from .utils import check_choice, check_positive_int, coef, generator_device, randn_like

__all__ = [
    "UniformTimesteps", "UniformTime", "LowDiscrepancyTime", "LogNormalSigma", "GeometricSigmas", "NOISE_SAMPLERS",
    "Constant", "SigmaSquared", "LikelihoodWeight", "EDMWeight", "ELBOWeight", "WEIGHTINGS",
    "DenoisingLoss", "VDMLoss", "LOSSES", "build_loss", "LOSS_FAMILIES", "loss_choice",
]


# ---- noise-level samplers: (n, process, generator, device) -> process time t, float64 [n] -----------------
# `process=None` means VE coordinates, where t is sigma (the EDM target, Karras et al. 2022).

def _need(process, who):
    if process is None:
        raise ValueError(f"{who} needs a process (it samples the process's time); the EDM target has none")
    return process


class UniformTimesteps:
    """Integer timesteps uniform on `0..N-1` of a discrete process (DDPM, Ho et al. 2020, Algorithm 1)."""

    def __call__(self, n, process, generator=None, device=None):
        N = getattr(_need(process, "UniformTimesteps"), "num_timesteps", None)
        if N is None:
            raise ValueError(f"UniformTimesteps needs a discrete process with num_timesteps, got {process!r}")
        return torch.randint(N, (n,), generator=generator, device=generator_device(generator)).to(device, torch.float64)

    def __repr__(self):
        return "UniformTimesteps()"


class UniformTime:
    """Continuous `t ~ U[t_min, t_max]` (Song et al. 2021, eq. 7; `None` = the process's own end)."""

    def __init__(self, t_min: float | None = None, t_max: float | None = None):
        self.t_min, self.t_max = t_min, t_max

    def __call__(self, n, process, generator=None, device=None):
        p = _need(process, "UniformTime")
        lo = p.t_min if self.t_min is None else self.t_min
        hi = p.t_max if self.t_max is None else self.t_max
        if not (p.t_min <= lo < hi <= p.t_max):
            raise ValueError(f"UniformTime needs {p.t_min:g} <= t_min < t_max <= {p.t_max:g} for {p!r}, "
                             f"got [{lo!r}, {hi!r}]")
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=generator_device(generator))
        return (lo + (hi - lo) * u).to(device)

    def __repr__(self):
        return f"UniformTime({self.t_min}, {self.t_max})"


class LowDiscrepancyTime(UniformTime):
    """Stratified `t` over the batch: `t_i = t_min + (t_max - t_min) ((u + i / B) mod 1)` with one `u ~ U[0, 1)`
    (VDM's low-discrepancy sampler, Kingma et al. 2021, App. I.1): each `t_i` is uniform, and the batch covers
    `[t_min, t_max]` evenly, which lowers the variance of a batch mean over `t`."""

    def __call__(self, n, process, generator=None, device=None):
        p = _need(process, "LowDiscrepancyTime")
        lo = p.t_min if self.t_min is None else self.t_min
        hi = p.t_max if self.t_max is None else self.t_max
        u = torch.rand((), generator=generator, dtype=torch.float64, device=generator_device(generator))
        frac = torch.remainder(u + torch.arange(n, dtype=torch.float64, device=u.device) / n, 1.0)
        return (lo + (hi - lo) * frac).to(device)

    def __repr__(self):
        return f"LowDiscrepancyTime({self.t_min}, {self.t_max})"


def _t_of_sigma(sigma, process):
    """The process time of VE noise level `sigma`, clipped to the process's range (`process=None`: t = sigma)."""
    if process is None:
        return sigma
    return process._t_from_sigma_ve(sigma.clamp(process.sigma_ve_min, process.sigma_ve_max))


class LogNormalSigma:
    """`ln sigma ~ N(p_mean, p_std^2)` (Karras et al. 2022, Table 1, "Ours"), mapped to the process's time."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        if not (p_std > 0):
            raise ValueError(f"p_std must be > 0, got {p_std!r}")
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def __call__(self, n, process, generator=None, device=None):
        z = torch.randn(n, generator=generator, dtype=torch.float64, device=generator_device(generator))
        return _t_of_sigma((self.p_mean + self.p_std * z).exp(), process).to(device)

    def __repr__(self):
        return f"LogNormalSigma(p_mean={self.p_mean:g}, p_std={self.p_std:g})"


class GeometricSigmas:
    """sigma uniform over the geometric set `sigma_max (sigma_min/sigma_max)^(i/(L-1))`, i = 0..L-1 (NCSN,
    Song & Ermon 2019, Sec. 4.2); `None` ends = the process's `sigma_ve_min` / `sigma_ve_max`."""

    def __init__(self, sigma_min: float | None = None, sigma_max: float | None = None, num_scales: int = 10):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.num_scales = check_positive_int(num_scales, "num_scales")

    def sigmas(self, process) -> torch.Tensor:
        """The set, descending, float64."""
        lo = self.sigma_min if self.sigma_min is not None else _need(process, "GeometricSigmas").sigma_ve_min
        hi = self.sigma_max if self.sigma_max is not None else _need(process, "GeometricSigmas").sigma_ve_max
        if not (0 < lo < hi):
            raise ValueError(f"GeometricSigmas needs 0 < sigma_min < sigma_max, got {lo!r}, {hi!r}")
        return torch.logspace(math.log10(hi), math.log10(lo), self.num_scales, dtype=torch.float64)

    def __call__(self, n, process, generator=None, device=None):
        s = self.sigmas(process).to(generator_device(generator))
        i = torch.randint(self.num_scales, (n,), generator=generator, device=generator_device(generator))
        return _t_of_sigma(s[i], process).to(device)

    def __repr__(self):
        return f"GeometricSigmas({self.sigma_min}, {self.sigma_max}, num_scales={self.num_scales})"


NOISE_SAMPLERS = {"uniform_timesteps": UniformTimesteps, "uniform_time": UniformTime,
                  "low_discrepancy": LowDiscrepancyTime,
                  "lognormal": LogNormalSigma, "geometric": GeometricSigmas}


# ---- weightings: (t, process) -> lambda, float64 [n]; process=None means t is sigma -------------------------

def _sigma_of(t, process):
    return t if process is None else process._coefficients(t).sigma


class Constant:
    """`lambda = 1` (DDPM's `L_simple`, Ho et al. 2020, eq. 14)."""

    def __call__(self, t, process):
        return torch.ones_like(t)

    def __repr__(self):
        return "Constant()"


class SigmaSquared:
    """`lambda = sigma(t)^2`, the process's own noise scale (NCSN, Song & Ermon 2019, eq. 6; Score SDE's default
    `lambda(t) = E|grad log p_0t|^{-2}`, Song et al. 2021, Sec. 3.3).
    On a score network it gives `|sigma s + eps|^2`."""

    def __call__(self, t, process):
        return _sigma_of(t, process) ** 2

    def __repr__(self):
        return "SigmaSquared()"


class LikelihoodWeight:
    """`lambda = g(t)^2`, the likelihood weighting (Song, Durkan et al. 2021, Thm. 1): with a score network the
    weighted DSM bounds the negative log-likelihood."""

    def __call__(self, t, process):
        return _need(process, "LikelihoodWeight")._sde_coeffs(t)[1]

    def __repr__(self):
        return "LikelihoodWeight()"


class EDMWeight:
    """`lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2` (Karras et al. 2022, Table 1): on the denoiser error
    `|D - x0|^2` it equals `1 / c_out^2`, so the network `F` sees a unit-weight target at every sigma."""

    def __init__(self, sigma_data: float = 0.5):
        if not (sigma_data > 0):
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
        self.sigma_data = float(sigma_data)

    def __call__(self, t, process):
        s, sd = (t if process is None else process._sigma_ve(t)), self.sigma_data
        return (s ** 2 + sd ** 2) / (s * sd) ** 2

    def __repr__(self):
        return f"EDMWeight(sigma_data={self.sigma_data:g})"


class ELBOWeight:
    """`lambda = -1/2 d log-SNR/dt = g(t)^2 / (2 sigma(t)^2)`: on an eps network with `reduce="sum"` this is VDM's
    continuous-time diffusion loss `-1/2 E_t[SNR'(t)/SNR(t) |eps - eps_hat|^2]` (Kingma et al. 2021, eq. 17),
    the diffusion term of the ELBO in nats."""

    def __call__(self, t, process):
        _, g2 = _need(process, "ELBOWeight")._sde_coeffs(t)
        return g2 / (2 * process._coefficients(t).sigma ** 2)

    def __repr__(self):
        return "ELBOWeight()"


WEIGHTINGS = {"constant": Constant, "sigma2": SigmaSquared, "likelihood": LikelihoodWeight, "edm": EDMWeight,
              "elbo": ELBOWeight}


# ---- the loss -----------------------------------------------------------------------------------------------

class DenoisingLoss:
    """`loss(denoiser, x0, generator=None, class_labels=None) -> [B]`: weighted MSE of one denoising step.

    Args:
        noise:  noise-level sampler, `noise(n, process, generator, device) -> t` (`UniformTimesteps`, `UniformTime`,
                `LogNormalSigma`, `GeometricSigmas`).
        weight: weighting, `weight(t, process) -> lambda` (`Constant`, `SigmaSquared`, `LikelihoodWeight`, `EDMWeight`).
        target: the prediction the network must make ("eps", "x0", "score", "v", "flow", "edm"); `None` = whatever
                the `Denoiser` predicts. A `Denoiser` predicting something else raises `ValueError`.
        space:  "raw": the error of the network's own output against its exact target (default);
                "x0":  the error of the denoiser output `D` against `x0` (Karras et al. 2022, eq. 2 and 8).
        reduce: "mean" or "sum" of the squared error over the non-batch dimensions.
    """

    def __init__(self, noise, weight, target: str | None = None, space: str = "raw", reduce: str = "mean",
                 name: str = "mse"):
        check_choice(space, "space", ("raw", "x0"))
        check_choice(reduce, "reduce", ("mean", "sum"))
        if target is not None:
            check_choice(target, "target", ("eps", "x0", "score", "v", "flow", "edm"))
        self.noise, self.weight, self.target, self.space, self.reduce, self.name = \
            noise, weight, target, space, reduce, name

    def __call__(self, denoiser: Denoiser, x0: torch.Tensor, generator: torch.Generator | None = None,
                 class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.target is not None and denoiser.target != self.target:
            raise ValueError(f"loss {self.name!r} trains a network predicting {self.target!r}, "
                             f"got a Denoiser with target={denoiser.target!r}")
        if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.ndim < 2:
            raise ValueError(f"x0 must be a floating tensor of shape [B, ...], got {getattr(x0, 'shape', x0)!r}")
        edm = denoiser.target == "edm"
        process = None if edm else denoiser.process
        t = self.noise(x0.shape[0], process, generator, x0.device)
        eps = randn_like(x0, generator)
        cond = {} if class_labels is None else {"class_labels": class_labels}
        if edm:
            alpha, sigma = torch.ones_like(t), t
        else:
            c = process._coefficients(t)
            alpha, sigma = c.alpha, c.sigma
        x_t = coef(alpha, x0) * x0 + coef(sigma, x0) * eps
        out = denoiser.raw(x_t, t, **cond).to(x0.dtype)
        if edm:
            c_skip, c_out, _, _ = edm_precond(sigma, denoiser.sigma_data)
            if self.space == "x0":
                err = coef(c_skip, x0) * x_t + coef(c_out, x0) * out - x0
            else:  # F's own target: (x0 - c_skip x) / c_out
                err = out - (x0 - coef(c_skip, x0) * x_t) / coef(c_out, x0)
        elif self.space == "x0":
            err = x0_from_target(denoiser.target, x_t, out, *c) - x0
        elif denoiser.target == "eps":
            err = out - eps
        elif denoiser.target == "score":
            err = out - score_from_eps(eps, sigma)
        else:
            err = out - target_from_x0(denoiser.target, x_t, x0, *c)
        sq = err.square().flatten(1)
        sq = sq.mean(1) if self.reduce == "mean" else sq.sum(1)
        return self.weight(t, process).to(sq.dtype) * sq

    def __repr__(self):
        return (f"DenoisingLoss({self.name!r}: noise={self.noise!r}, weight={self.weight!r}, target={self.target!r}, "
                f"space={self.space!r}, reduce={self.reduce!r})")


# ---- named losses -------------------------------------------------------------------------------------------

def ddpm_loss(process: NoiseProcess, reduce: str = "mean") -> DenoisingLoss:
    """DDPM `L_simple = E |eps - eps_theta(x_t, t)|^2`, t uniform on the discrete timesteps (Ho et al. 2020, eq. 14)."""
    if getattr(process, "num_timesteps", None) is None:
        raise ValueError(f"loss 'ddpm' needs a discrete process with num_timesteps (e.g. DDPM), got {process!r}")
    return DenoisingLoss(UniformTimesteps(), Constant(), "eps", reduce=reduce, name="ddpm")


def ncsn_loss(process: NoiseProcess, sigma_min: float | None = None, sigma_max: float | None = None,
              num_scales: int = 10, reduce: str = "mean") -> DenoisingLoss:
    """NCSN DSM `E sigma^2 |s_theta(x0 + sigma eps, sigma) + eps/sigma|^2` over `num_scales` geometric sigmas
    (Song & Ermon 2019, eq. 5-6); `None` ends = the process's sigma range."""
    return DenoisingLoss(GeometricSigmas(sigma_min, sigma_max, num_scales), SigmaSquared(), "score",
                         reduce=reduce, name="ncsn")


def score_sde_loss(process: NoiseProcess, likelihood: bool = False, t_min: float | None = None,
                   t_max: float | None = None, reduce: str = "mean") -> DenoisingLoss:
    """Continuous-time DSM (Song et al. 2021, eq. 7) for any process (VP, sub-VP, VE): `t ~ U[t_min, t_max]`,
    `lambda = sigma(t)^2`, or `g(t)^2` with `likelihood=True` (Song, Durkan et al. 2021)."""
    weight = LikelihoodWeight() if likelihood else SigmaSquared()
    return DenoisingLoss(UniformTime(t_min, t_max), weight, "score", reduce=reduce, name="score_sde")


def vdm_loss(process: NoiseProcess, t_min: float | None = None, t_max: float | None = None,
             reduce: str = "sum") -> DenoisingLoss:
    """VDM's continuous-time diffusion loss (Kingma et al. 2021, eq. 17) on an eps network, t ~ U[t_min, t_max]:
    `E_t[-1/2 dlambda/dt |eps - eps_hat|^2]`, summed over dimensions (nats per example) by default."""
    return DenoisingLoss(UniformTime(t_min, t_max), ELBOWeight(), "eps", reduce=reduce, name="vdm")


class VDMLoss:
    """VDM's continuous-time negative ELBO in nats per example (Kingma et al. 2021, eq. 11-13 and 17):

        L(x) = KL(q(z_1 | x) || p(z_1)) + E[-log p(x | z_0)] + 1/2 E_t[gamma'(t) |eps - eps_hat(z_t, t)|^2]

    * prior: `q(z_1 | x) = N(alpha_1 x, sigma_1^2 I)` against the process's prior `N(0, sigma_1^2 I)` (the prior
      every sampler and `likelihood` use): `|x|^2 / (2 sigma~_1^2)`, with `sigma~_1 = sigma_1 / alpha_1`;
    * reconstruction: VDM's factorised discrete decoder over `levels` equally spaced values `v_k` in [-1, 1]
      (17 for the digits' grey levels 0..16 scaled by `x / 8 - 1`, 256 for 8-bit images scaled by `x / 127.5 - 1`):
      `p(x_i = v_k | z_0) = softmax_k(-(z_0,i / alpha_0 - v_k)^2 / (2 sigma~_0^2))`, one draw of `z_0` per example.
      So `L / (d ln 2)` bounds the bits per dimension of the discrete data itself (no dequantization);
    * diffusion: `DenoisingLoss(LowDiscrepancyTime(), ELBOWeight(), "eps", reduce="sum")` (the weight
      `g^2 / (2 sigma^2)` is `gamma'(t) / 2`, `gamma = -log SNR`).

    With a process that has a `variance_gradient` context (`processes.VDM`), the shape of the schedule receives
    the gradient of `mean(L_diff^2)` and everything else (network, end points) that of `mean(L)`: the mean of
    `L_diff` does not depend on the shape when the network sees the noise level rather than `t`
    (`noise_cond="log_sigma"`), so the shape minimises its variance (VDM, Sec. 5.2 and App. I.2). The per-example
    factor is `2 (L_diff - mean_batch L_diff) / mean_batch L_diff`: the batch mean is a control variate whose
    expected contribution, `mean(L_diff)` times the gradient of the shape-independent mean, vanishes, and the
    division (a positive factor per batch) makes the shape's gradient free of the loss's units, so that it does not
    dominate the global gradient-norm clip the network shares (it is the gradient of the squared coefficient of
    variation's batch estimate, up to that factor).

    Args:
        levels:            number of equally spaced data values in [-1, 1] (>= 2; data off the levels raise).
        low_discrepancy:   stratified `t` over the batch (`LowDiscrepancyTime`), else i.i.d. `UniformTime`.
        variance_gradient: route the variance gradient to a learned shape (above); False: plain ELBO gradient.
    """

    name = "vdm_elbo"

    def __init__(self, levels: int, low_discrepancy: bool = True, variance_gradient: bool = True):
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an integer >= 2 (17 for digits, 256 for 8-bit images), got {levels!r}")
        self.levels, self.variance_gradient = levels, bool(variance_gradient)
        noise = LowDiscrepancyTime() if low_discrepancy else UniformTime()
        self.diffusion = DenoisingLoss(noise, ELBOWeight(), "eps", reduce="sum", name="vdm")

    def _level_index(self, x0: torch.Tensor) -> torch.Tensor:
        k = (x0 + 1) * ((self.levels - 1) / 2)
        idx = k.round()
        if (idx < 0).any() or (idx > self.levels - 1).any() or ((k - idx).abs() > 1e-3).any():
            raise ValueError(f"loss vdm_elbo: the data are not on levels={self.levels} equally spaced values in "
                             f"[-1, 1] (got values in [{x0.min().item():.4g}, {x0.max().item():.4g}]); set loss.levels")
        return idx.long()

    def terms(self, denoiser: Denoiser, x0: torch.Tensor, generator: torch.Generator | None = None,
              class_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The three terms `{"prior", "reconstruction", "diffusion"}`, each `[B]` in nats."""
        p = denoiser.process
        idx = self._level_index(x0)
        ends = torch.tensor([p.t_min, p.t_max], dtype=torch.float64, device=x0.device)
        sv0, sv1 = p._sigma_ve(ends)
        prior = 0.5 * x0.flatten(1).double().square().sum(1) / sv1 ** 2
        x_ve = x0 + coef(sv0, x0) * randn_like(x0, generator)              # z_0 / alpha_0
        values = torch.linspace(-1, 1, self.levels, dtype=x0.dtype, device=x0.device)
        logits = -0.5 * ((x_ve[..., None] - values) / sv0.to(x0.dtype)) ** 2
        recon = -torch.log_softmax(logits, -1).gather(-1, idx[..., None]).flatten(1).sum(1)
        diff = self.diffusion(denoiser, x0, generator=generator, class_labels=class_labels)
        return {"prior": prior, "reconstruction": recon.to(prior.dtype), "diffusion": diff.to(prior.dtype)}

    def __call__(self, denoiser: Denoiser, x0: torch.Tensor, generator: torch.Generator | None = None,
                 class_labels: torch.Tensor | None = None) -> torch.Tensor:
        context = getattr(denoiser.process, "variance_gradient", None)
        if not self.variance_gradient or context is None:
            return sum(self.terms(denoiser, x0, generator, class_labels).values()).to(x0.dtype)
        scale = {}
        with context(lambda: scale["2L"]):
            t = self.terms(denoiser, x0, generator, class_labels)
        diff = t["diffusion"].detach()
        scale["2L"] = 2 * (diff - diff.mean()) / diff.mean().clamp_min(1e-12)   # control variate; unit-free size
        return sum(t.values()).to(x0.dtype)

    def __repr__(self):
        return f"VDMLoss(levels={self.levels}, variance_gradient={self.variance_gradient})"


def vdm_elbo_loss(process: NoiseProcess, levels: int | None = None, low_discrepancy: bool = True,
                  variance_gradient: bool = True) -> VDMLoss:
    """VDM's whole negative ELBO (`VDMLoss`) for data on `levels` equally spaced values in [-1, 1]."""
    if levels is None:
        raise ValueError("loss vdm_elbo needs levels= (the number of data values in [-1, 1]: 17 for digits, "
                         "256 for 8-bit images)")
    return VDMLoss(levels, low_discrepancy, variance_gradient)


def edm_loss(process: NoiseProcess | None = None, p_mean: float = -1.2, p_std: float = 1.2,
             sigma_data: float = 0.5, reduce: str = "mean") -> DenoisingLoss:
    """EDM loss `E lambda(sigma) |D(x0 + sigma eps, sigma) - x0|^2`, `ln sigma ~ N(p_mean, p_std^2)`,
    `lambda = (sigma^2 + sd^2)/(sigma sd)^2` (Karras et al. 2022, eq. 8, Table 1), on the preconditioned network
    (`Denoiser(..., target="edm", sigma_data=sd)`); `sigma_data` must match the Denoiser's."""
    return _EDMLoss(LogNormalSigma(p_mean, p_std), EDMWeight(sigma_data), "edm", space="x0", reduce=reduce,
                    name="edm")


class _EDMLoss(DenoisingLoss):
    def __call__(self, denoiser, x0, generator=None, class_labels=None):
        if getattr(denoiser, "sigma_data", None) != self.weight.sigma_data:
            raise ValueError(f"loss 'edm' has sigma_data={self.weight.sigma_data:g} but the Denoiser has "
                             f"sigma_data={getattr(denoiser, 'sigma_data', None)!r}; pass the same value to both")
        return super().__call__(denoiser, x0, generator, class_labels)


def _target_loss(target):
    def make(process: NoiseProcess, noise: str = "uniform_time", weight: str = "constant", space: str = "raw",
             sigma_data: float = 0.5, reduce: str = "mean", **noise_kwargs) -> DenoisingLoss:
        check_choice(noise, "noise", NOISE_SAMPLERS)
        check_choice(weight, "weight", WEIGHTINGS)
        lam = EDMWeight(sigma_data) if weight == "edm" else WEIGHTINGS[weight]()
        return DenoisingLoss(NOISE_SAMPLERS[noise](**noise_kwargs), lam, target, space=space, reduce=reduce,
                             name=target or "mse")
    make.__doc__ = (f"Generic target-MSE for a network predicting {target or 'any target'} (Salimans & Ho 2022, "
                    f"Sec. 4): `noise` one of {sorted(NOISE_SAMPLERS)} (keyword arguments go to it), `weight` one of "
                    f"{sorted(WEIGHTINGS)} (`sigma_data` is the \"edm\" weighting's), `space` \"raw\" (the "
                    f"network's own target) or \"x0\" (the denoiser's error `D - x0`: with `weight=\"edm\"` any "
                    f"output type trains on EDM's objective).")
    return make


LOSSES = {
    "ddpm": ddpm_loss, "ncsn": ncsn_loss, "score_sde": score_sde_loss, "vdm": vdm_loss, "edm": edm_loss,
    "vdm_elbo": vdm_elbo_loss,
    "eps": _target_loss("eps"), "x0": _target_loss("x0"), "v": _target_loss("v"), "mse": _target_loss(None),
}


def build_loss(name: str, process: NoiseProcess | None = None, **kwargs) -> DenoisingLoss:
    """The loss `LOSSES[name](process, **kwargs)`; an unknown name or keyword raises `ValueError` naming it."""
    check_choice(name, "loss", LOSSES)
    make = LOSSES[name]
    params = inspect.signature(make).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params) - {"process"})
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for loss {name!r}; valid options are "
                             f"{[p for p in params if p != 'process']}")
    if process is None and name != "edm":
        raise ValueError(f"loss {name!r} needs a process")
    return make(process, **kwargs)


LOSS_FAMILIES = {"diffusion": LOSSES}     # the loss names of each `task`; other tasks add theirs (`unifusion.guidance`)


def loss_choice(name: str, cfg: dict | None = None):
    """The builder `loss.name` names for the config's `task` (the schema's choices of the `loss:` section)."""
    task = (cfg or {}).get("task") or "diffusion"
    return choice_of(LOSS_FAMILIES.get(task, LOSSES), "loss.name" if task == "diffusion" else f"loss.name of a {task}")(
        name)


register_section("loss", head="name", default="ddpm", choices=loss_choice, skip=("process",))
