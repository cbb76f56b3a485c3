"""A diffusers `AutoencoderKL` (Stable Diffusion's VAE and its relatives) behind unifusion's `Autoencoder` interface.

Owns the adapter only: `encode` returns the VAE's `latent_dist` as a `DiagonalGaussian` (same mean and log-variance),
`decode` is `vae.decode(z).sample`, and the latent normalisation is the VAE config's own
`scaling_factor` / `shift_factor` (diffusers: `latents = (z - shift_factor) * scaling_factor`; shift 0 when the
config has none). The downsampling factor is `2^(len(block_out_channels) - 1)`, as in diffusers' pipelines.
Needs `diffusers` (the `dev` and `bench` extras); nothing is downloaded: `from_folder` reads a local folder written
by `save_pretrained`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .autoencoder import Autoencoder, DiagonalGaussian

__all__ = ["DiffusersAutoencoder"]


class DiffusersAutoencoder(Autoencoder):
    """`Autoencoder` view of a diffusers `AutoencoderKL`.

    Args:
        vae:         the `diffusers.AutoencoderKL`.
        image_shape: `(C, H, W)` of the images (default: the config's `in_channels` and `sample_size`).
    """

    def __init__(self, vae, image_shape=None):
        super().__init__()
        cfg = vae.config
        self.vae = vae
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.latent_channels = int(cfg.latent_channels)
        size = cfg.sample_size if isinstance(cfg.sample_size, (list, tuple)) else (cfg.sample_size,) * 2
        self.image_shape = tuple(int(s) for s in image_shape) if image_shape is not None else \
            (int(cfg.in_channels), int(size[0]), int(size[1]))
        self.scale_factor = float(cfg.scaling_factor)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        d = self.vae.encode(x).latent_dist
        return DiagonalGaussian(d.mean, d.logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample

    @classmethod
    def from_folder(cls, path) -> "DiffusersAutoencoder":
        """The `AutoencoderKL` saved in the local folder `path` (`save_pretrained`); a folder that is not one raises
        `ValueError` naming it."""
        from diffusers import AutoencoderKL

        path = Path(path)
        try:
            vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{path} is not a diffusers AutoencoderKL folder: {str(e).splitlines()[0]}") from None
        return cls(vae)
