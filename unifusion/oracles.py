"""Exact answers: closed-form denoisers, scores and densities to test everything else against.

This module owns
* `GaussianMixture`: data `x0 ~ sum_k w_k N(mu_k, C_k)` (any dimension, diagonal or full `C_k`). For any
  process, `x_t = alpha x0 + sigma eps` is again a mixture, `sum_k w_k N(alpha mu_k, alpha^2 C_k + sigma^2 I)`,
  so its density, its score and the posterior mean `E[x0 | x_t]` are closed-form (Bishop 2006, eq. 2.116
  and 9.7; the Gaussian-mixture oracle of Karras et al. 2022, App. B.3 style experiments);
* `EmpiricalData`: the optimal denoiser of a finite data set, the softmax-weighted average of its points
  (Karras et al. 2022, eq. 57; Kadkhodaie et al. 2024), with its exact smoothed density;
* presets: `eight_gaussians()`, `grid_gaussians()` (5 x 5), `mixture_64d()`.

Every oracle is itself a denoiser in VE coordinates: `oracle(x, sigma) == oracle.denoiser(x, sigma)`, so it
can be handed to any sampler. Computations are batched and log-sum-exp stable, in the dtype of `x`.

Conditional answers: a mixture's component index is its class label. `denoiser / score / log_prob(x, sigma,
class_labels=y)` (and `oracle(x, sigma, class_labels=y)`) are those of the mixture restricted to component
`y` (`-1`: the whole mixture), and `log_responsibilities(x, sigma)` is the exact classifier
`log p(y | x_sigma)`, so every guidance formula (Ho & Salimans 2022; Dhariwal & Nichol 2021) has a closed form.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .parametrization import eps_from_score, target_from_x0
from .processes import NoiseProcess
from .utils import (as_float_tensor, check_choice, check_class_labels, check_finite, check_nonnegative,
                    check_positive_int)

__all__ = ["GaussianMixture", "EmpiricalData", "eight_gaussians", "grid_gaussians", "mixture_64d"]


def _check_x(x: torch.Tensor, dim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor of shape [B, {dim}], got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"x must have shape [B, {dim}], got {tuple(x.shape)}")
    return check_finite(x, "x")


def _check_level(c, name: str, x: torch.Tensor) -> torch.Tensor:
    """A noise level / scale: scalar or `[B]`, >= 0, as a `[B, 1]` column in float64 on `x`'s device."""
    c = check_nonnegative(as_float_tensor(c, name, dtype=torch.float64, device=x.device), name)
    if c.ndim == 0:
        c = c.expand(x.shape[0])
    if c.shape != (x.shape[0],):
        raise ValueError(f"{name} must be a scalar or have shape [{x.shape[0]}], got {tuple(c.shape)}")
    return c[:, None]


class _Oracle:
    """Shared calling convention: the oracle is a VE-coordinate denoiser `D(x, sigma, class_labels=None)`.
    `num_classes` is the number of labels it knows (a mixture's components; 0: only -1, "no label")."""

    num_classes = 0

    def __call__(self, x, sigma, class_labels=None, **unused):
        return self.denoiser(x, sigma, class_labels)

    def _answer(self, x, sigma, class_labels, i: int):
        x = _check_x(x, self.dim)
        y = None if class_labels is None else check_class_labels(class_labels, x.shape[0], self.num_classes, x.device)
        return self._posterior(x, 1.0, _check_level(sigma, "sigma", x), y)[i]

    def denoiser(self, x, sigma, class_labels=None):
        """`E[x0 | x0 + sigma eps = x (, y)]` (VE coordinates); `class_labels` `[B]`: condition on class `y`."""
        return self._answer(x, sigma, class_labels, 1)

    def score(self, x, sigma, class_labels=None):
        """`grad_x log p_sigma(x (| y))` of the sigma-smoothed data density."""
        return self._answer(x, sigma, class_labels, 2)

    def log_prob(self, x, sigma=0.0, class_labels=None):
        """`log p_sigma(x (| y))` per example, `p_sigma = p_data * N(0, sigma^2 I)`."""
        return self._answer(x, sigma, class_labels, 0)

    def process_model(self, process: NoiseProcess, target: str = "eps") -> nn.Module:
        """The exact `target`-predictor `model(x_t, t)` of `process`, computed in the process's own
        coordinates (not through VE coordinates): what a perfectly trained network would output."""
        check_choice(target, "target", ("eps", "x0", "score", "v", "flow"))
        return _ExactProcessModel(self, process, target)


class _ExactProcessModel(nn.Module):
    def __init__(self, oracle, process, target):
        super().__init__()
        self.oracle, self.process, self.target = oracle, process, target

    def forward(self, x_t, t, class_labels=None, **unused):
        t = torch.as_tensor(t, device=x_t.device).to(torch.float64)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        c = self.process._coefficients(t)
        y = None if class_labels is None else \
            check_class_labels(class_labels, x_t.shape[0], self.oracle.num_classes, x_t.device)
        _, x0, score = self.oracle._posterior(x_t, c.alpha[:, None], c.sigma[:, None], y)
        if self.target == "score":
            return score
        if self.target == "eps":
            return eps_from_score(score, c.sigma).to(x_t.dtype)
        return target_from_x0(self.target, x_t, x0, *c)


class GaussianMixture(_Oracle):
    """`p(x0) = sum_k w_k N(x0; mu_k, C_k)` with exact smoothed density, score and denoiser.

    Args:
        weights: `[K]` positive (normalised here).
        means:   `[K, d]`.
        covs:    a variance (float, isotropic, shared), `[K]` (isotropic per component), `[K, d]` (diagonal)
                 or `[K, d, d]` (full, symmetric positive semi-definite).
    """

    def __init__(self, weights, means, covs):
        means = check_finite(as_float_tensor(means, "means", dtype=torch.float64), "means")
        if means.ndim != 2:
            raise ValueError(f"means must have shape [K, d], got {tuple(means.shape)}")
        K, d = means.shape
        w = check_finite(as_float_tensor(weights, "weights", dtype=torch.float64), "weights")
        if w.shape != (K,) or (w <= 0).any():
            raise ValueError(f"weights must be {K} positive numbers, got shape {tuple(w.shape)}")
        c = check_finite(as_float_tensor(covs, "covs", dtype=torch.float64), "covs")
        self.U = None
        if c.ndim == 0 or c.shape == (K,):
            lam = c.reshape(-1, 1).expand(K, d).clone()
        elif c.shape == (K, d):
            lam = c.clone()
        elif c.shape == (K, d, d):
            if not torch.allclose(c, c.transpose(1, 2), atol=1e-10 * float(c.abs().max().clamp_min(1.0))):
                raise ValueError("covs must be symmetric")
            lam, self.U = torch.linalg.eigh(c)
        else:
            raise ValueError(f"covs must be a scalar or have shape [{K}], [{K}, {d}] or [{K}, {d}, {d}], got "
                             f"{tuple(c.shape)}")
        if (lam < -1e-12 * float(lam.abs().max().clamp_min(1.0))).any():
            raise ValueError(f"covs must be positive semi-definite, got an eigenvalue {lam.min().item():.3g}")
        self.weights, self.means, self.lam = w / w.sum(), means, lam.clamp_min(0.0)
        self.K, self.dim, self.num_classes = K, d, K
        self._cache: dict = {}

    def _params(self, dtype, device):
        key = (dtype, device)
        if key not in self._cache:
            cast = lambda a: None if a is None else a.to(dtype=dtype, device=device)
            self._cache[key] = (cast(self.weights.log()), cast(self.means), cast(self.lam), cast(self.U))
        return self._cache[key]

    def _components(self, x, alpha, sigma):
        """`(log w_k, log N(x; alpha mu_k, alpha^2 C_k + sigma^2 I), z_k)` per component, `[K]`, `[B, K]`,
        `[B, K, d]`, with `z_k = (alpha^2 C_k + sigma^2 I)^-1 (x - alpha mu_k)` in eigen-coordinates, and `a`."""
        logw, mu, lam, U = self._params(x.dtype, x.device)
        alpha = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        a, s2 = alpha[..., None], (sigma ** 2)[..., None]           # [B, 1, 1] or []
        r = x[:, None, :] - a * mu[None]                             # [B, K, d]
        y = r if U is None else torch.einsum("kij,bki->bkj", U, r)   # eigen-coordinates
        var = a ** 2 * lam[None] + s2                                # [B, K, d]
        z = y / var
        log_n = -0.5 * (y * z).sum(-1) - 0.5 * torch.log(2 * math.pi * var).sum(-1)
        return logw, log_n, z, a

    def _posterior(self, x, alpha, sigma, labels=None):
        """`(log p(x), E[x0 | x], grad log p(x))` for `x = alpha x0 + sigma eps`; alpha, sigma `[B, 1]` or floats.
        `labels` `[B]` (or None): rows with `y >= 0` get the answers of component `y` alone."""
        _, mu, lam, U = self._params(x.dtype, x.device)
        logw, log_n, z, a = self._components(x, alpha, sigma)
        logits = logw[None] + log_n                                  # [B, K]
        if labels is not None:                                       # p(x | y): component y with weight 1
            own = labels[:, None] == torch.arange(self.K, device=x.device)
            logits = torch.where(labels[:, None] < 0, logits, log_n.masked_fill(~own, -math.inf))
        logp = torch.logsumexp(logits, dim=1)
        resp = torch.softmax(logits, dim=1)[..., None]               # [B, K, 1]
        dx0 = a * lam[None] * z                                      # posterior-mean shift, eigen-coordinates
        if U is not None:
            z = torch.einsum("kij,bkj->bki", U, z)
            dx0 = torch.einsum("kij,bkj->bki", U, dx0)
        x0 = (resp * (mu[None] + dx0)).sum(1)
        score = -(resp * z).sum(1)
        return logp, x0, score

    def sample_labelled(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64,
                        device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` exact draws from the mixture and their components: `(x [n, d], labels int64 [n])`."""
        check_positive_int(n, "n")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64) * self.lam[k].sqrt()
        if self.U is not None:
            z = torch.einsum("nij,nj->ni", self.U[k], z)
        return (self.means[k] + z).to(dtype=dtype, device=device), k.to(device)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64, device=None):
        """`n` exact draws from the mixture, `[n, d]` (the same draws as `sample_labelled`)."""
        return self.sample_labelled(n, generator, dtype, device)[0]

    def log_responsibilities(self, x, sigma=0.0) -> torch.Tensor:
        """The exact classifier of the sigma-smoothed mixture: `log p(k | x_sigma)`, `[B, K]` (Bishop 2006, eq. 9.13).
        Differentiable in `x`; `exp` of it sums to 1 over `k`."""
        x = _check_x(x, self.dim)
        logw, log_n, _, _ = self._components(x, 1.0, _check_level(sigma, "sigma", x))
        return torch.log_softmax(logw[None] + log_n, dim=1)

    def component(self, x, sigma=0.0) -> torch.Tensor:
        """The most probable mixture component of each row of `x` under the sigma-smoothed mixture, `[B]`."""
        return self.log_responsibilities(x, sigma).argmax(1)

    def __repr__(self):
        return f"GaussianMixture(K={self.K}, d={self.dim}, {'full' if self.U is not None else 'diagonal'} covariances)"


class EmpiricalData(_Oracle):
    """The empirical distribution of `points` (`[N, d]`) and its optimal denoiser
    `D(x, sigma) = sum_i softmax_i(-|x - y_i|^2 / (2 sigma^2)) y_i` (Karras et al. 2022, eq. 57).
    Memory is bounded by processing the points in chunks of `chunk` rows."""

    def __init__(self, points, chunk: int = 8192):
        p = check_finite(as_float_tensor(points, "points", dtype=torch.float64), "points")
        if p.ndim != 2 or p.shape[0] < 1:
            raise ValueError(f"points must have shape [N, d] with N >= 1, got {tuple(p.shape)}")
        self.points, self.dim, self.chunk = p, p.shape[1], check_positive_int(chunk, "chunk")
        self._cache: dict = {}

    def _pts(self, dtype, device):
        key = (dtype, device)
        if key not in self._cache:
            p = self.points.to(dtype=dtype, device=device)
            self._cache[key] = (p, (p ** 2).sum(1))
        return self._cache[key]

    def _posterior(self, x, alpha, sigma, labels=None):
        pts, sq = self._pts(x.dtype, x.device)        # no classes: `labels` can only be -1 ("no label")
        alpha = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
        s2 = torch.as_tensor(sigma, dtype=x.dtype, device=x.device) ** 2
        if (s2 == 0).any():
            raise ValueError("sigma must be > 0 for EmpiricalData (the data density is a set of point masses)")
        xs = (x ** 2).sum(1, keepdim=True)
        m = torch.full((x.shape[0], 1), -math.inf, dtype=x.dtype, device=x.device)
        den = torch.zeros_like(m)
        num = torch.zeros_like(x)
        for i in range(0, pts.shape[0], self.chunk):  # streaming log-sum-exp over point chunks
            p, q = pts[i:i + self.chunk], sq[i:i + self.chunk]
            d2 = (xs - 2 * alpha * (x @ p.T) + alpha ** 2 * q[None]).clamp_min(0)
            logits = -d2 / (2 * s2)
            m_new = torch.maximum(m, logits.max(1, keepdim=True).values)
            scale, w = torch.exp(m - m_new), torch.exp(logits - m_new)
            den = den * scale + w.sum(1, keepdim=True)
            num = num * scale + w @ p
            m = m_new
        x0 = num / den
        n, d = pts.shape
        logp = (m + den.log()).squeeze(1) - math.log(n) - 0.5 * d * torch.log(2 * math.pi * s2).squeeze(-1)
        score = (alpha * x0 - x) / s2
        return logp, x0, score

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64, device=None):
        """`n` points drawn uniformly with replacement."""
        check_positive_int(n, "n")
        i = torch.randint(self.points.shape[0], (n,), generator=generator)
        return self.points[i].to(dtype=dtype, device=device)

    def __repr__(self):
        return f"EmpiricalData(N={self.points.shape[0]}, d={self.dim})"


def eight_gaussians(radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """Eight equal isotropic Gaussians on a circle of `radius` (the classic 2-D toy)."""
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([ang.cos(), ang.sin()], 1)
    return GaussianMixture(torch.ones(8), means, torch.full((8,), std ** 2))


def grid_gaussians(n: int = 5, spacing: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """`n x n` equal isotropic Gaussians on a centred square grid: a sharp 2-D mixture (25 components by default)."""
    check_positive_int(n, "n")
    g = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * spacing
    means = torch.cartesian_prod(g, g)
    return GaussianMixture(torch.ones(n * n), means, torch.full((n * n,), std ** 2))


def mixture_64d(k: int = 10, d: int = 64, seed: int = 0) -> GaussianMixture:
    """A fixed random `k`-component mixture in `d` dimensions with full, anisotropic covariances
    (eigenvalues log-uniform in [0.01, 0.25]), unequal weights and unit-scale means. Deterministic in `seed`."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(k, d, d, generator=g, dtype=torch.float64))
    lam = torch.exp(torch.empty(k, d, dtype=torch.float64).uniform_(math.log(0.01), math.log(0.25), generator=g))
    covs = q @ torch.diag_embed(lam) @ q.transpose(1, 2)
    covs = 0.5 * (covs + covs.transpose(1, 2))
    weights = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
    return GaussianMixture(weights, means, covs)
