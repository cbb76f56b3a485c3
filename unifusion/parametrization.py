"""What a network predicts, and how every prediction becomes every other one.

This module owns
* the exact output conversions between noise `eps`, clean data `x0`, score `grad log p_t`,
  VP velocity `v = alpha eps - sigma x0` (Salimans & Ho 2022, "Progressive Distillation", eq. 8 and
  App. D) and flow velocity `u = d x_t/dt` (Lipman et al. 2022; Liu et al. 2022), for any process
  `x_t = alpha x0 + sigma eps`: named `<output>_from_<input>`, all taking `alpha` and `sigma`
  (VDM, Kingma et al. 2021, Sec. 3 / App. E; Tweedie's formula `x0 = (x + sigma^2 score)/alpha`);
* the EDM preconditioning `c_skip, c_out, c_in, c_noise` (Karras et al. 2022, Table 1 and eq. 7);
* `Denoiser`: any network, trained on any process with any target, presented as `D(x~, sigma~)` in
  VE coordinates `x~ = x_t / alpha`, `sigma~ = sigma / alpha` (Karras et al. 2022, Sec. 4). Every sampler
  calls this and nothing else (k-diffusion's `model(x, sigma)` convention);
* `ProcessModel`: the way back, a VE-coordinate denoiser viewed as an eps / x0 / v / score / flow
  predictor at `(x_t, t)` of any process.

Per-example `alpha`, `sigma` of shape `[B]` broadcast through `utils.coef` (`utils.expand_like` cast to the data dtype).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .processes import NoiseProcess
from .schema import register_section
from .utils import check_choice, coef

__all__ = [
    "x0_from_eps", "eps_from_x0", "score_from_eps", "eps_from_score", "score_from_x0", "x0_from_score",
    "v_from_x0", "x0_from_v", "eps_from_v", "v_from_eps", "flow_from_x0", "x0_from_flow",
    "TARGETS", "x0_from_target", "target_from_x0",
    "edm_precond", "Denoiser", "ProcessModel",
]

TARGETS = ("eps", "x0", "score", "v", "flow", "edm")


def _per_example(c, x) -> torch.Tensor:
    """A scalar or `[B]` noise level / time as a float64 `[B]` vector on `x`'s device."""
    c = c.to(device=x.device, dtype=torch.float64) if isinstance(c, torch.Tensor) else \
        torch.as_tensor(c, dtype=torch.float64, device=x.device)  # python floats keep full precision
    return c.expand(x.shape[0]) if c.ndim == 0 else c


# ---- exact conversions at (x_t, alpha, sigma) -------------------------------------------------------
def x0_from_eps(x_t, eps, alpha, sigma):
    """`x0 = (x_t - sigma eps) / alpha` (Ho et al. 2020, eq. 15)."""
    return (x_t - coef(sigma, x_t) * eps) / coef(alpha, x_t)


def eps_from_x0(x_t, x0, alpha, sigma):
    """`eps = (x_t - alpha x0) / sigma`."""
    return (x_t - coef(alpha, x_t) * x0) / coef(sigma, x_t)


def score_from_eps(eps, sigma):
    """`grad log p_t = -eps / sigma` (Song et al. 2021, App. B; VDM eq. 35)."""
    return -eps / coef(sigma, eps)


def eps_from_score(score, sigma):
    """`eps = -sigma * score`."""
    return -coef(sigma, score) * score


def score_from_x0(x_t, x0, alpha, sigma):
    """Tweedie: `grad log p_t = (alpha x0 - x_t) / sigma^2` (Efron 2011; Karras et al. 2022, eq. 3)."""
    return (coef(alpha, x_t) * x0 - x_t) / coef(sigma, x_t) ** 2


def x0_from_score(x_t, score, alpha, sigma):
    """Tweedie: `x0 = (x_t + sigma^2 score) / alpha`."""
    return (x_t + coef(sigma, x_t) ** 2 * score) / coef(alpha, x_t)


def v_from_x0(x_t, x0, alpha, sigma):
    """`v = alpha eps - sigma x0` (Salimans & Ho 2022, eq. 8), with eps from `(x_t, x0)`."""
    return coef(alpha, x_t) * eps_from_x0(x_t, x0, alpha, sigma) - coef(sigma, x_t) * x0


def x0_from_v(x_t, v, alpha, sigma):
    """`x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2)`; for VP this is Salimans & Ho's `alpha x_t - sigma v`."""
    a, s = coef(alpha, x_t), coef(sigma, x_t)
    return (a * x_t - s * v) / (a ** 2 + s ** 2)


def eps_from_v(x_t, v, alpha, sigma):
    """`eps = (sigma x_t + alpha v) / (alpha^2 + sigma^2)`."""
    a, s = coef(alpha, x_t), coef(sigma, x_t)
    return (s * x_t + a * v) / (a ** 2 + s ** 2)


def v_from_eps(x_t, eps, alpha, sigma):
    """`v = alpha eps - sigma x0` with x0 from `(x_t, eps)`."""
    return coef(alpha, x_t) * eps - coef(sigma, x_t) * x0_from_eps(x_t, eps, alpha, sigma)


def flow_from_x0(x_t, x0, alpha, sigma, d_alpha, d_sigma):
    """Flow velocity `u = alpha' x0 + sigma' eps` (Lipman et al. 2022, eq. 15); `u = eps - x0` for rectified flow."""
    return coef(d_alpha, x_t) * x0 + coef(d_sigma, x_t) * eps_from_x0(x_t, x0, alpha, sigma)


def x0_from_flow(x_t, u, alpha, sigma, d_alpha, d_sigma):
    """Invert `flow_from_x0`: `x0 = (sigma u - sigma' x_t) / (alpha' sigma - sigma' alpha)`."""
    a, s, da, ds = (coef(c, x_t) for c in (alpha, sigma, d_alpha, d_sigma))
    return (s * u - ds * x_t) / (da * s - ds * a)


def _identity(x_t, x0, alpha, sigma):
    return x0


# target -> (x0_from_<target>, <target>_from_x0), each called as f(x_t, value, alpha, sigma[, d_alpha, d_sigma])
_CONVERSIONS = {"eps": (x0_from_eps, eps_from_x0), "x0": (_identity, _identity),
                "score": (x0_from_score, score_from_x0), "v": (x0_from_v, v_from_x0),
                "flow": (x0_from_flow, flow_from_x0)}


def _convert(target: str, way: int, x_t, value, alpha, sigma, d_alpha, d_sigma):
    if target not in _CONVERSIONS:
        raise ValueError(f"target={target!r} is not one of {[t for t in TARGETS if t != 'edm']}")
    derivatives = (d_alpha, d_sigma) if target == "flow" else ()
    return _CONVERSIONS[target][way](x_t, value, alpha, sigma, *derivatives)


def x0_from_target(target: str, x_t, out, alpha, sigma, d_alpha=None, d_sigma=None):
    """`x0` from a network output `out` of kind `target` in `TARGETS` (not "edm": that needs the preconditioning)."""
    return _convert(target, 0, x_t, out, alpha, sigma, d_alpha, d_sigma)


def target_from_x0(target: str, x_t, x0, alpha, sigma, d_alpha=None, d_sigma=None):
    """The prediction of kind `target` that corresponds to a clean-data estimate `x0` (inverse of `x0_from_target`)."""
    return _convert(target, 1, x_t, x0, alpha, sigma, d_alpha, d_sigma)


# ---- EDM preconditioning ---------------------------------------------------------------------------
def edm_precond(sigma, sigma_data: float = 0.5):
    """EDM preconditioning (Karras et al. 2022, Table 1, "Ours"): `D = c_skip x + c_out F(c_in x, c_noise)`."""
    c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_in = 1 / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


# ---- the one calling convention --------------------------------------------------------------------
class Denoiser(nn.Module):
    """Present `net` as the VE-coordinate denoiser `D(x~, sigma~) = E[x0 | x~]` (Karras et al. 2022, Sec. 4).

    Args:
        net:        the network, called as `net(input, noise_cond, **cond)`; it never knows the formulation.
        process:    the process it was trained on; `None` only for `target="edm"` (VE coordinates directly).
        target:     what `net` predicts, one of `TARGETS`:
                    "eps" / "x0" / "score" / "v" / "flow": `net(x_t, c(t))` with `x_t = alpha(t) x~` and `t` the
                    process time whose `sigma~(t) = sigma~`; "edm": `net(c_in x~, c_noise)` with the EDM
                    preconditioning (Karras et al. 2022, Table 1).
        sigma_data: data standard deviation of the EDM preconditioning (0.5 for images in [-1, 1]).
        noise_cond: what the network is told about the noise level for the non-EDM targets:
                    "t"         the process time times `time_scale` (DDPM: the integer timestep; score_sde's VP
                                models use t in [0, 1] with time_scale=999),
                    "log_sigma" EDM's `c_noise = ln(sigma~)/4`, the same for every process.
        time_scale: multiplies `t` when `noise_cond="t"` (1 means the raw process time).

    `forward(x, sigma, **cond)`: `x` of shape `[B, ...]`, `sigma` a scalar or `[B]`; returns `[B, ...]` in `x`'s
    dtype. `raw(x_t, t, **cond)` is the network's own output at the process's `(x_t, t)` (what losses compare
    with their target). Noise-level arithmetic is float64 whatever the network's dtype.
    """

    def __init__(self, net: nn.Module | Callable, process: NoiseProcess | None, target: str = "eps",
                 sigma_data: float = 0.5, noise_cond: str = "t", time_scale: float = 1.0):
        super().__init__()
        check_choice(target, "target", TARGETS)
        check_choice(noise_cond, "noise_cond", ("t", "log_sigma"))
        if process is None and target != "edm":
            raise ValueError(f"process=None is only allowed with target='edm', got target={target!r}")
        if not (sigma_data > 0):
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
        if not (time_scale > 0):
            raise ValueError(f"time_scale must be > 0, got {time_scale!r}")
        self.net, self.process, self.target, self.sigma_data = net, process, target, float(sigma_data)
        self.noise_cond, self.time_scale = noise_cond, float(time_scale)

    def _cond(self, t: torch.Tensor) -> torch.Tensor:
        """The network's noise-level input for process time `t` (float64 `[B]`)."""
        if self.noise_cond == "log_sigma":
            return 0.25 * torch.log(self.process._sigma_ve(t))
        return t * self.time_scale

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        s = _per_example(sigma, x)
        if self.target == "edm":
            c_skip, c_out, c_in, c_noise = edm_precond(s, self.sigma_data)
            out = self.net(coef(c_in, x) * x, c_noise.to(x.dtype), **cond)
            return coef(c_skip, x) * x + coef(c_out, x) * out.to(x.dtype)
        t = self.process._t_from_sigma_ve(s)
        p = self.process  # only the flow target needs the derivatives (the SDE coefficients)
        c = p._coefficients(t) if self.target == "flow" else (torch.exp(p._log_alpha(t)), torch.exp(p._log_sigma(t)))
        x_t = coef(c[0], x) * x
        out = self.net(x_t, self._cond(t).to(x.dtype), **cond).to(x.dtype)
        return x0_from_target(self.target, x_t, out, *c)

    def raw(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
        """The network output at the process's own `(x_t, t)`, in its `target` parametrization. For
        `target="edm"` `t` is sigma and this is `F(c_in x, c_noise)`."""
        t = _per_example(t, x_t)
        if self.target == "edm":
            _, _, c_in, c_noise = edm_precond(t, self.sigma_data)
            return self.net(coef(c_in, x_t) * x_t, c_noise.to(x_t.dtype), **cond)
        return self.net(x_t, self._cond(t).to(x_t.dtype), **cond)

    def predict(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
        """Clean-data estimate at the process's own `(x_t, t)`: `D(x_t / alpha(t), sigma~(t))`."""
        if self.process is None:
            raise ValueError("predict(x_t, t) needs a process; this Denoiser works in VE coordinates only")
        t = _per_example(t, x_t)
        alpha = torch.exp(self.process._log_alpha(t))
        return self(x_t / coef(alpha, x_t), self.process._sigma_ve(t), **cond)


class ProcessModel(nn.Module):
    """A VE-coordinate denoiser `D(x~, sigma~)` viewed as a `target`-predictor `model(x_t, t)` of `process`.

    `Denoiser(ProcessModel(D, p, target), p, target)` is `D` again (up to rounding): the round trip the tests check.
    """

    def __init__(self, denoiser: Callable, process: NoiseProcess, target: str = "eps"):
        super().__init__()
        check_choice(target, "target", tuple(t for t in TARGETS if t != "edm"))
        self.denoiser, self.process, self.target = denoiser, process, target

    def forward(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
        t = _per_example(t, x_t)
        c = self.process._coefficients(t)
        x0 = self.denoiser(x_t / coef(c.alpha, x_t), self.process._sigma_ve(t), **cond)
        return target_from_x0(self.target, x_t, x0, *c)


def _check_model(section: dict) -> None:
    check_choice(section["target"], "model.target", TARGETS)
    check_choice(section["noise_cond"], "model.noise_cond", ("t", "log_sigma"))


register_section("model", Denoiser, skip=("net", "process"), check=_check_model)   # the Denoiser's options
