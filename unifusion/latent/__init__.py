"""Latent diffusion: any diffusion model of unifusion run in the latent space of an autoencoder.

Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent Diffusion Models"): an autoencoder maps images
to a smaller latent space, diffusion of either formulation runs there, samples are decoded. Here the latent space
is a transform around the data (images -> normalised latents, cached once or encoded per step) and around the
samples (latents -> images); processes, losses, networks, samplers and consistency models are unchanged.

* `autoencoder`: the `Autoencoder` interface, `DiagonalGaussian`, `KLAutoencoder`, `IdentityAutoencoder`;
* `autoencoder_task`: the autoencoder's loss and training, `estimate_latent_scale`, its checkpoints;
* `diffusion`: the `latent:` config section, `LatentTask`, the latent cache, latent models' loading and decoding;
* `diffusers_vae`: `DiffusersAutoencoder`, a diffusers `AutoencoderKL` behind the same interface (needs diffusers).
"""
from .autoencoder import AUTOENCODERS, Autoencoder, DiagonalGaussian, IdentityAutoencoder, KLAutoencoder
from .autoencoder_task import (AE_DEFAULTS, AutoencoderTask, estimate_latent_scale, load_autoencoder,
                               save_autoencoder, train_autoencoder_from_config)
from .diffusion import (LATENT_DEFAULTS, LatentTask, autoencoder_of, build_latent_run, decode_samples,
                        train_from_config)

__all__ = ["Autoencoder", "DiagonalGaussian", "KLAutoencoder", "IdentityAutoencoder", "AUTOENCODERS",
           "AE_DEFAULTS", "AutoencoderTask", "estimate_latent_scale", "load_autoencoder", "save_autoencoder",
           "train_autoencoder_from_config", "LATENT_DEFAULTS", "LatentTask", "build_latent_run", "train_from_config",
           "autoencoder_of", "decode_samples"]
