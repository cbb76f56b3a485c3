"""Networks that never know the formulation: called as `net(x, noise_cond, class_labels=None)`.

`MLP` for vectors, `UNet` (DDPM++ family) for images, the noise/label embeddings, `MixtureOracle` (an exact
Gaussian-mixture denoiser in a network's place, for checking the pipeline end to end), and `build_net(kind,
**kwargs)` so a YAML config can name any of `NETS`: "mlp", "unet", "mixture_oracle", and "diffusers_unet2d"
(diffusers' `UNet2DModel`, `unifusion.interop.diffusers.DiffusersUNet2D`, needs the `[diffusers]` extra), which is
imported on first use.
"""
from __future__ import annotations

import importlib
import inspect

from torch import nn

from ..schema import choice_of, register_section
from ..utils import check_choice
from .embedding import EMBEDDINGS, FourierEmbedding, NoiseEmbedding, PositionalEmbedding
from .mlp import MLP
from .oracle import MixtureOracle
from .unet import UNet

__all__ = ["MLP", "UNet", "MixtureOracle", "NETS", "build_net", "PositionalEmbedding", "FourierEmbedding",
           "NoiseEmbedding",
           "EMBEDDINGS"]


class _Registry(dict):
    """name -> network class; a value given as "module:Class" is imported on first access (optional backends)."""

    def __getitem__(self, kind):
        value = super().__getitem__(kind)
        if isinstance(value, str):
            module, name = value.split(":")
            value = getattr(importlib.import_module(module), name)
            self[kind] = value
        return value

    def get(self, kind, default=None):
        return self[kind] if kind in self else default


NETS = _Registry(mlp=MLP, unet=UNet, mixture_oracle=MixtureOracle,
                 diffusers_unet2d="unifusion.interop.diffusers:DiffusersUNet2D")


def build_net(kind: str, **kwargs) -> nn.Module:
    """The network `NETS[kind](**kwargs)`; an unknown `kind` or keyword raises `ValueError` naming it."""
    check_choice(kind, "net kind", NETS)
    valid = list(inspect.signature(NETS[kind]).parameters)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown {kind} option(s) {unknown}; valid options are {valid}")
    if "channel_mult" in kwargs:
        kwargs["channel_mult"] = tuple(kwargs["channel_mult"])
    if "attn_resolutions" in kwargs:
        kwargs["attn_resolutions"] = tuple(kwargs["attn_resolutions"])
    return NETS[kind](**kwargs)


register_section("net", head="kind", default="mlp", choices=choice_of(NETS, "net.kind"))
