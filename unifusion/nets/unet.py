"""A U-Net for images `[B, C, H, W]` in the DDPM++ family.

The architecture of DDPM (Ho et al. 2020, App. B) as refined into DDPM++ (Song et al. 2021, App. H; EDM's
`SongUNet`, Karras et al. 2022): residual blocks with GroupNorm, SiLU, dropout and an adaptive scale/shift
from the noise embedding; self-attention at chosen resolutions; skip connections from every encoder block
to the decoder; residual sums scaled by 1/sqrt(2); the last convolution of each block and of the network
initialised to zero. Down/up-sampling are average pooling and nearest-neighbour upsampling followed by a
3x3 convolution (DDPM's `resamp_with_conv`). Works from 8x8 (digits) to 32x32 (CIFAR-10) and beyond.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import check_positive_int
from .embedding import NoiseEmbedding

__all__ = ["UNet"]


def _norm(ch: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels (EDM's `GroupNorm(min_channels_per_group=4)`)."""
    groups = min(32, ch // 4) or 1
    while ch % groups:
        groups -= 1
    return nn.GroupNorm(groups, ch, eps=1e-6)


def _zero(m: nn.Module) -> nn.Module:
    nn.init.zeros_(m.weight)
    nn.init.zeros_(m.bias)
    return m


class ResBlock(nn.Module):
    """`h = conv(silu(norm(x))); h = conv(drop(silu(norm(h) (1 + scale) + shift))); out = (h + skip(x)) / sqrt 2`."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm0, self.conv0 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * cout)
        self.norm1, self.conv1 = _norm(cout), _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.drop(h))
        return (h + self.skip(x)) * (1 / math.sqrt(2))


class Attention(nn.Module):
    """Multi-head self-attention over the pixels, residual, scaled by 1/sqrt(2) (DDPM++)."""

    def __init__(self, ch: int, head_channels: int = 64):
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.norm, self.qkv = _norm(ch), nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x):
        b, c, hgt, wid = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, hgt * wid).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return (x + self.proj(a.transpose(-1, -2).reshape(b, c, hgt, wid))) * (1 / math.sqrt(2))


class _Level(nn.Module):
    """One ResBlock, optionally followed by attention."""

    def __init__(self, cin, cout, emb_dim, dropout, attn):
        super().__init__()
        self.res = ResBlock(cin, cout, emb_dim, dropout)
        self.attn = Attention(cout) if attn else None

    def forward(self, x, emb):
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, emb=None):
        return self.conv(F.avg_pool2d(x, 2))


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, emb=None):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """`net(x, noise_cond, class_labels=None) -> [B, out_channels, H, W]` for images `x` `[B, in_channels, H, W]`.

    Args:
        img_resolution:   H = W; must be divisible by `2^(len(channel_mult) - 1)`.
        in_channels:      image channels.
        out_channels:     output channels (`None` = `in_channels`).
        model_channels:   channels at the first level (DDPM++ CIFAR-10: 128).
        channel_mult:     channel multiplier per level; one level per entry, halving the resolution in between.
        num_blocks:       residual blocks per level in the encoder (the decoder has one more, DDPM).
        attn_resolutions: resolutions with self-attention after each block (empty = none; the middle always has one).
        dropout:          dropout inside the residual blocks (0 = none).
        num_classes:      0 = unconditional; `> 0` adds a label embedding (`class_labels` `[B]` ints, -1 = no label).
        embedding:        "positional" or "fourier" noise features; `emb_scale`, `emb_max_positions` their input
                          scale and frequency range (default 1000 .. 1e-4; `nets.embedding` says which suits which
                          `noise_cond`).
        label_dropout:    training-time probability of dropping a label to "no label" (0 = never).
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int | None = None,
                 model_channels: int = 128, channel_mult=(1, 2, 2, 2), num_blocks: int = 2,
                 attn_resolutions=(16,), dropout: float = 0.1, num_classes: int = 0,
                 embedding: str = "positional", emb_scale: float | None = None, label_dropout: float = 0.0,
                 emb_max_positions: float = 1e7):
        super().__init__()
        for v, name in ((img_resolution, "img_resolution"), (in_channels, "in_channels"),
                        (model_channels, "model_channels"), (num_blocks, "num_blocks")):
            check_positive_int(v, name)
        out_channels = in_channels if out_channels is None else check_positive_int(out_channels, "out_channels")
        channel_mult = tuple(channel_mult)
        if not channel_mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty list of integers >= 1, got {channel_mult!r}")
        if img_resolution % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"img_resolution={img_resolution} is not divisible by 2^{len(channel_mult) - 1} "
                             f"(channel_mult has {len(channel_mult)} levels)")
        if not (0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        emb_dim = 4 * model_channels
        self.emb = NoiseEmbedding(model_channels, emb_dim, embedding, emb_scale, num_classes, label_dropout,
                                  emb_max_positions)
        attn = set(attn_resolutions)

        self.inp = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.enc, skips, ch, res = nn.ModuleList(), [model_channels], model_channels, img_resolution
        for level, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                self.enc.append(_Level(ch, model_channels * mult, emb_dim, dropout, res in attn))
                ch = model_channels * mult
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.enc.append(Downsample(ch))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([_Level(ch, ch, emb_dim, dropout, True), _Level(ch, ch, emb_dim, dropout, False)])
        self.dec = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):
                self.dec.append(_Level(ch + skips.pop(), model_channels * mult, emb_dim, dropout, res in attn))
                ch = model_channels * mult
            if level > 0:
                self.dec.append(Upsample(ch))
                res *= 2
        assert not skips
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, noise_cond: torch.Tensor, class_labels: torch.Tensor | None = None):
        want = (self.in_channels, self.img_resolution, self.img_resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"UNet expects x of shape [B, {want[0]}, {want[1]}, {want[2]}], got {tuple(x.shape)}")
        noise_cond = torch.as_tensor(noise_cond, device=x.device)
        if noise_cond.ndim == 0:
            noise_cond = noise_cond.expand(x.shape[0])
        emb = F.silu(self.emb(noise_cond, class_labels)).to(x.dtype)
        h = self.inp(x)
        hs = [h]
        for m in self.enc:
            h = m(h, emb)
            hs.append(h)
        for m in self.mid:
            h = m(h, emb)
        for m in self.dec:
            h = m(h, emb) if isinstance(m, Upsample) else m(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
