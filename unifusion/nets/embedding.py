"""Noise-level and class-label embeddings: how a network is told `noise_cond` without knowing the formulation.

This module owns
* `PositionalEmbedding`: the sinusoidal embedding of the Transformer (Vaswani et al. 2017, Sec. 3.5) used by
  DDPM (Ho et al. 2020, App. B) and DDPM++ (Song et al. 2021; Karras et al. 2022, `networks.py`), with an
  input `scale`;
* `FourierEmbedding`: random Fourier features (Tancik et al. 2020) as in NCSN++ (Song et al. 2021, App. H.1);
* `NoiseEmbedding`: one of the two followed by the usual two-layer MLP, and an optional class-label
  embedding with a "no label" token for classifier-free guidance (Ho & Salimans 2022).

What to use per `noise_cond` (`Denoiser` docs): the network only sees a float `[B]`.
* `noise_cond="t"` with DDPM integer timesteps (or `time_scale=999`), inputs in [0, 1000]:
  `kind="positional", scale=1, max_positions=1e4` (DDPM's choice: angular frequencies 1 .. 1e-4).
* `noise_cond="t"` with raw continuous time in [0, 1] (`time_scale=1`), or `noise_cond="log_sigma"` / the EDM
  target (`c_noise = ln(sigma)/4`, about [-1.6, 1.1]): `kind="positional", scale=1000, max_positions=1e4`
  (frequencies 1000 .. 0.1: the input range then looks like DDPM's) or `kind="fourier", scale=16` (NCSN++).
* Default, robust to all three: `kind="positional", scale=1000, max_positions=1e7`: 64 log-spaced frequencies
  (for `dim=128`) from 1000 down to 1e-4, so every range above meets frequencies that resolve it.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..utils import check_choice, check_class_labels

__all__ = ["PositionalEmbedding", "FourierEmbedding", "NoiseEmbedding", "EMBEDDINGS"]


class PositionalEmbedding(nn.Module):
    """`[cos(scale c w_i), sin(scale c w_i)]` with `w_i = max_positions^(-i / (dim/2))` (Vaswani et al. 2017)."""

    def __init__(self, dim: int, scale: float = 1000.0, max_positions: float = 1e7):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be an even integer >= 2, got {dim!r}")
        half = dim // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float64) / half)
        self.register_buffer("freqs", (scale * freqs).float(), persistent=False)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        arg = c.float()[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """`[cos(2 pi c b_i), sin(2 pi c b_i)]`, `b_i ~ N(0, scale^2)` fixed at construction (Tancik et al. 2020;
    NCSN++ uses `scale=16` on `log sigma`). The frequencies are a saved buffer, so checkpoints carry them;
    they are drawn from a private generator seeded with `seed`, so two constructions agree."""

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be an even integer >= 2, got {dim!r}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        arg = (2 * math.pi) * c.float()[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


EMBEDDINGS = {"positional": PositionalEmbedding, "fourier": FourierEmbedding}


class NoiseEmbedding(nn.Module):
    """Noise level (and optional class label) to a conditioning vector of size `out_dim` (DDPM, App. B:
    sinusoid, Linear, SiLU, Linear; class labels added as in Dhariwal & Nichol 2021 / EDM's `map_label`).

    Args:
        emb_dim:       size of the sinusoidal / Fourier features.
        out_dim:       size of the returned vector.
        kind:          "positional" or "fourier" (see the module docstring for which `noise_cond` wants which).
        scale:         input scale of the embedding (positional: multiplies `noise_cond`; fourier: frequency std;
                       `None` = 1000 for positional, 16 for fourier).
        max_positions: positional only: the frequencies run from `scale` down to `scale / max_positions`.
        num_classes:   0 = unconditional; `> 0` adds a label embedding with an extra "no label" row.
        label_dropout: probability, in training mode only, of replacing a label by "no label" (0 = never;
                       classifier-free guidance training, Ho & Salimans 2022). Uses the global RNG like
                       `nn.Dropout`, so the training loop's seed makes it reproducible.
    """

    def __init__(self, emb_dim: int, out_dim: int, kind: str = "positional", scale: float | None = None,
                 num_classes: int = 0, label_dropout: float = 0.0, max_positions: float = 1e7):
        super().__init__()
        check_choice(kind, "embedding", EMBEDDINGS)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        if not (0.0 <= label_dropout < 1.0):
            raise ValueError(f"label_dropout must lie in [0, 1), got {label_dropout!r}")
        if kind == "positional":
            self.embed = PositionalEmbedding(emb_dim, 1000.0 if scale is None else scale, max_positions)
        else:
            self.embed = FourierEmbedding(emb_dim, 16.0 if scale is None else scale)
        self.mlp = nn.Sequential(nn.Linear(emb_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        self.num_classes, self.label_dropout = num_classes, float(label_dropout)
        self.label = nn.Embedding(num_classes + 1, out_dim) if num_classes else None
        if self.label is not None:
            nn.init.zeros_(self.label.weight[num_classes])  # "no label" starts as the unconditional model

    def forward(self, noise_cond: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if noise_cond.ndim != 1:
            raise ValueError(f"noise_cond must have shape [B], got {tuple(noise_cond.shape)}")
        emb = self.mlp(self.embed(noise_cond))
        if self.label is None:
            if class_labels is not None:
                raise ValueError("class_labels were given to a network built with num_classes=0")
            return emb
        return emb + self.label(self._labels(class_labels, noise_cond))

    def _labels(self, y: torch.Tensor | None, noise_cond: torch.Tensor) -> torch.Tensor:
        """Labels `[B]` in `0..num_classes-1`, `-1` (or `None` for all) meaning "no label", as embedding rows."""
        null = self.num_classes
        if y is None:
            return torch.full(noise_cond.shape, null, dtype=torch.long, device=noise_cond.device)
        y = check_class_labels(y, noise_cond.shape[0], self.num_classes, noise_cond.device)
        y = torch.where(y < 0, null, y)
        if self.training and self.label_dropout > 0:
            drop = torch.rand(y.shape, device=y.device) < self.label_dropout
            y = torch.where(drop, null, y)
        return y
