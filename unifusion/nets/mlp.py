"""A residual MLP for vector data `[B, dim]` (2-D toys, digits as 64-vectors).

Pre-norm residual blocks conditioned on the noise embedding by adding a projection of it to the hidden
state (the time-conditioning of DDPM's residual blocks, Ho et al. 2020, App. B, with linear layers in place
of convolutions). The output layer starts at zero, so an EDM-preconditioned model starts as `D = c_skip x`
(Karras et al. 2022, `networks.py`, `init_zero` on the last layer).
"""
from __future__ import annotations

import torch
from torch import nn

from ..utils import check_positive_int
from .embedding import NoiseEmbedding

__all__ = ["MLP"]


class _Block(nn.Module):
    def __init__(self, hidden: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc0 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, h, emb):
        r = self.fc0(nn.functional.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc1(self.drop(nn.functional.silu(r)))


class MLP(nn.Module):
    """`net(x, noise_cond, class_labels=None) -> [B, out_dim]` for vectors `x` `[B, dim]`.

    Args:
        dim:           data dimension.
        hidden:        width of the residual stream.
        depth:         number of residual blocks.
        emb_dim:       size of the noise (and label) embedding.
        num_classes:   0 = unconditional; `> 0` adds a label embedding (`class_labels` `[B]` ints, -1 = no label).
        dropout:       dropout inside the blocks (0 = none).
        embedding:     "positional" or "fourier" noise features (`nets.embedding` says which suits which `noise_cond`).
        emb_scale:     input scale of those features (`None`: 1000 positional, 16 fourier).
        emb_max_positions: positional frequencies run from `emb_scale` to `emb_scale / emb_max_positions` (default
                       1000 .. 1e-4: fits integer timesteps, t in [0, 1] and `ln(sigma)/4` alike; DDPM's own: 1, 1e4).
        label_dropout: training-time probability of dropping a label to "no label" (0 = never).
        out_dim:       output size (`None`: `dim`, a denoiser; the number of classes for a noise-conditional
                       classifier).
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 4, emb_dim: int = 128, num_classes: int = 0,
                 dropout: float = 0.0, embedding: str = "positional", emb_scale: float | None = None,
                 label_dropout: float = 0.0, emb_max_positions: float = 1e7, out_dim: int | None = None):
        super().__init__()
        for v, name in ((dim, "dim"), (hidden, "hidden"), (depth, "depth"), (emb_dim, "emb_dim")):
            check_positive_int(v, name)
        if not (0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.dim = dim
        self.emb = NoiseEmbedding(emb_dim, emb_dim, embedding, emb_scale, num_classes, label_dropout,
                                  emb_max_positions)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, emb_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim if out_dim is None else check_positive_int(out_dim, "out_dim"))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, noise_cond: torch.Tensor, class_labels: torch.Tensor | None = None):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP(dim={self.dim}) expects x of shape [B, {self.dim}], got {tuple(x.shape)}")
        noise_cond = torch.as_tensor(noise_cond, device=x.device)
        if noise_cond.ndim == 0:
            noise_cond = noise_cond.expand(x.shape[0])
        emb = nn.functional.silu(self.emb(noise_cond, class_labels)).to(x.dtype)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(self.norm(h)))
