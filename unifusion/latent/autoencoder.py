"""Autoencoders for latent diffusion: the interface, the diagonal-Gaussian posterior and a small KL autoencoder.

This module owns
* `Autoencoder`: what latent diffusion needs of any autoencoder (Rombach et al. 2022, "High-Resolution Image
  Synthesis with Latent Diffusion Models", Sec. 3): `encode(x)` -> a `DiagonalGaussian` posterior or a tensor,
  `decode(z)`, `latent_shape`, and the latent normalisation `z_diffusion = scale_factor * (z - shift_factor)`
  (Stable Diffusion's `0.18215` is such a scale factor, with shift 0; `scale.estimate_latent_scale` measures it).
  `latents_from_images` / `images_from_latents` are the two conversions every caller uses;
* `DiagonalGaussian`: the posterior `N(mean, diag exp(logvar))` with `sample`, `mode` and the closed-form
  `kl()` to `N(0, I)`, `0.5 * sum(mean^2 + var - 1 - logvar)` (Kingma & Welling 2014, App. B);
* `KLAutoencoder`: a small convolutional KL-regularised autoencoder in the shape of LDM's `AutoencoderKL`
  (Rombach et al. 2022, App. G: residual blocks with GroupNorm and SiLU, one downsampling per level, a
  diagonal-Gaussian latent), downsampling by `2^(len(channel_mult) - 1)`;
* `IdentityAutoencoder`: the transform that adds nothing (pixel space seen as a latent space; tests and checks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nets.unet import Downsample, Upsample, _norm
from ..utils import check_positive_int, randn_like

__all__ = ["DiagonalGaussian", "Autoencoder", "KLAutoencoder", "IdentityAutoencoder", "AUTOENCODERS"]


class DiagonalGaussian:
    """The posterior `N(mean, diag(exp(logvar)))` of an encoder, per example (LDM's `DiagonalGaussianDistribution`).

    Args:
        mean:   `[B, ...]`.
        logvar: `[B, ...]`, clamped to [-30, 20] as in LDM.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean, self.logvar = mean, logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """`mean + std * eps`, `eps ~ N(0, I)` from `generator` (reparametrised: differentiable in mean and std)."""
        return self.mean + self.std * randn_like(self.mean, generator)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """`KL(N(mean, var) || N(0, I))` per example `[B]`: `0.5 * sum(mean^2 + var - 1 - logvar)`."""
        return 0.5 * (self.mean ** 2 + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class Autoencoder(nn.Module):
    """The interface of an autoencoder for latent diffusion.

    Subclasses set `image_shape` (`(C, H, W)` it was built for), `factor` (spatial downsampling),
    `latent_channels`, and implement `encode(x) -> DiagonalGaussian | Tensor` and `decode(z) -> images`, both on raw
    (unnormalised) latents. `scale_factor` and `shift_factor` normalise the latents the diffusion model sees.
    """

    image_shape: tuple
    factor: int
    latent_channels: int
    scale_factor: float = 1.0
    shift_factor: float = 0.0

    def latent_shape_of(self, image_shape) -> tuple:
        """The latent shape `(latent_channels, H / factor, W / factor)` of images of shape `(C, H, W)`; a shape the
        autoencoder cannot take (other channel count, sides not divisible by `factor`) raises `ValueError`."""
        shape = tuple(int(s) for s in image_shape)
        c = self.image_shape[0]
        if len(shape) != 3 or shape[0] != c or shape[1] % self.factor or shape[2] % self.factor:
            raise ValueError(f"images of shape {list(shape)} do not fit this autoencoder: it takes {c}-channel images "
                             f"[{c}, H, W] with H and W divisible by its downsampling factor {self.factor}")
        return (self.latent_channels, shape[1] // self.factor, shape[2] // self.factor)

    @property
    def latent_shape(self) -> tuple:
        """The latent shape of the images the autoencoder was built for."""
        return self.latent_shape_of(self.image_shape)

    def latents_from_images(self, x: torch.Tensor, generator: torch.Generator | None = None,
                            sample: bool = True) -> torch.Tensor:
        """Normalised latents `scale_factor * (z - shift_factor)` of images `x`, `z` a posterior sample from
        `generator` (`sample=False`: the posterior mean; a deterministic encoder's output as is)."""
        return latents_from_posterior(self.encode(x), self.scale_factor, self.shift_factor, generator, sample)

    def images_from_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Images decoded from normalised latents: `decode(z / scale_factor + shift_factor)`."""
        return self.decode(z / self.scale_factor + self.shift_factor)


def latents_from_posterior(posterior, scale_factor: float, shift_factor: float,
                           generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
    """`scale_factor * (z - shift_factor)` for `z` drawn from `posterior` (a `DiagonalGaussian`; its mean when
    `sample=False`) or `z = posterior` itself when the encoder is deterministic (a tensor)."""
    if isinstance(posterior, DiagonalGaussian):
        posterior = posterior.sample(generator) if sample else posterior.mode()
    return (posterior - shift_factor) * scale_factor


class _ResBlock(nn.Module):
    """`x + conv(silu(norm(conv(silu(norm(x))))))` with a 1x1 skip when the channels change (LDM's `ResnetBlock`)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm0, self.conv0 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm1, self.conv1 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv0(F.silu(self.norm0(x)))
        return self.skip(x) + self.conv1(F.silu(self.norm1(h)))


class KLAutoencoder(Autoencoder):
    """A convolutional autoencoder with a diagonal-Gaussian latent (LDM's `AutoencoderKL`, small).

    Args:
        image_shape:     `(C, H, W)` of the training images (H, W divisible by the factor).
        latent_channels: channels of the latent (4 in Stable Diffusion).
        channels:        channels at full resolution.
        channel_mult:    channel multiplier per level; the factor is `2^(len(channel_mult) - 1)`.
        num_blocks:      residual blocks per level (the decoder has one more, as in LDM).
    """

    def __init__(self, image_shape, latent_channels: int = 4, channels: int = 32, channel_mult=(1, 2, 2),
                 num_blocks: int = 1):
        super().__init__()
        mult = tuple(channel_mult)
        if not mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mult):
            raise ValueError(f"channel_mult must be a non-empty list of integers >= 1, got {list(mult)!r}")
        for v, name in ((latent_channels, "latent_channels"), (channels, "channels"), (num_blocks, "num_blocks")):
            check_positive_int(v, name)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.factor, self.latent_channels = 2 ** (len(mult) - 1), latent_channels
        self.latent_shape_of(self.image_shape)        # checks the image shape
        c_in, chans = self.image_shape[0], [channels * m for m in mult]
        enc = [nn.Conv2d(c_in, chans[0], 3, padding=1)]
        ch = chans[0]
        for level, c in enumerate(chans):
            for _ in range(num_blocks):
                enc.append(_ResBlock(ch, c))
                ch = c
            if level < len(chans) - 1:
                enc.append(Downsample(ch))
        enc += [_ResBlock(ch, ch), _norm(ch), nn.SiLU(), nn.Conv2d(ch, 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv2d(latent_channels, ch, 3, padding=1), _ResBlock(ch, ch)]
        for level, c in reversed(list(enumerate(chans))):
            for _ in range(num_blocks + 1):
                dec.append(_ResBlock(ch, c))
                ch = c
            if level > 0:
                dec.append(Upsample(ch))
        dec += [_norm(ch), nn.SiLU(), nn.Conv2d(ch, c_in, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


class IdentityAutoencoder(Autoencoder):
    """`encode(x) = x`, `decode(z) = z`, scale 1, shift 0: latent diffusion through it is pixel-space diffusion.

    Args:
        image_shape: `(C, H, W)` of the images.
    """

    def __init__(self, image_shape):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.factor, self.latent_channels = 1, self.image_shape[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


AUTOENCODERS = {"kl": KLAutoencoder, "identity": IdentityAutoencoder}   # the `autoencoder.kind` of a config
