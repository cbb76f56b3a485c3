"""An exact denoiser posing as a network: the Gaussian-mixture oracle behind a run folder.

`MixtureOracle` is a net kind (`net: {kind: mixture_oracle, ...}`) whose output is the closed-form posterior
mean of a Gaussian mixture (`unifusion.oracles.GaussianMixture`): `net(x, c) = E[x0 | x0 + sigma eps = x]` with
`sigma = exp(4 c)`. It reads the noise level the way EDM's `c_noise = ln(sigma) / 4` encodes it, so it is exact
only in VE coordinates with that encoding: `process: edm` (alpha = 1), `model: {target: x0, noise_cond:
log_sigma}`; then the `Denoiser` is the oracle itself and the run's density is the mixture smoothed by
`sigma_min`, known in closed form. It has no trainable parameters: the mixture is stored as buffers, so a
checkpoint carries it (`unifusion.train.oracle.write_oracle_run` writes such a run folder; tests and the tutorial
check the likelihood machinery on it end to end).
"""
from __future__ import annotations

import torch
from torch import nn

from ..oracles import GaussianMixture, eight_gaussians, mixture_64d
from ..utils import check_choice

__all__ = ["MixtureOracle", "PRESETS"]

PRESETS = ("mixture", "eight_gaussians")


class MixtureOracle(nn.Module):
    """`net(x, c, class_labels=None)`: the exact denoiser of a Gaussian mixture at `sigma = exp(4 c)`.

    Args:
        dim:     data dimension (filled in from the data by the config builder).
        preset:  "mixture" (`oracles.mixture_64d(k, dim, seed)`: full covariances) or "eight_gaussians" (dim 2).
        k:       components of the "mixture" preset.
        seed:    seed of the "mixture" preset.
    """

    def __init__(self, dim: int, preset: str = "mixture", k: int = 4, seed: int = 0):
        super().__init__()
        check_choice(preset, "preset", PRESETS)
        gm = eight_gaussians() if preset == "eight_gaussians" else mixture_64d(k, dim, seed)
        if gm.dim != dim:
            raise ValueError(f"preset {preset!r} has dimension {gm.dim}, but the data have dimension {dim}")
        covs = gm.lam if gm.U is None else gm.U @ torch.diag_embed(gm.lam) @ gm.U.transpose(1, 2)
        self.register_buffer("weights", gm.weights.clone())
        self.register_buffer("means", gm.means.clone())
        self.register_buffer("covs", covs.clone())
        self._oracle = None

    def mixture(self) -> GaussianMixture:
        """The `GaussianMixture` of the stored buffers (rebuilt when they change, e.g. by `load_state_dict`)."""
        key = tuple(b._version for b in self.buffers()) + tuple(b.data_ptr() for b in self.buffers())
        if self._oracle is None or self._oracle[0] != key:
            self._oracle = (key, GaussianMixture(self.weights.cpu(), self.means.cpu(), self.covs.cpu()))
        return self._oracle[1]

    def forward(self, x: torch.Tensor, noise_cond: torch.Tensor, class_labels=None) -> torch.Tensor:
        sigma = torch.exp(4 * torch.as_tensor(noise_cond, device=x.device).to(torch.float64))
        return self.mixture().denoiser(x, sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma)
