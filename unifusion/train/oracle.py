"""Run folders whose model is an exact oracle: `write_oracle_run`.

A checkpoint in the format `train_from_config` writes, whose net is `nets.MixtureOracle` (a Gaussian mixture's
closed-form denoiser, no trainable weights), with the data it models saved beside it. Everything that takes a
trained run (`load_model`, `unifusion sample`, `unifusion nll`, the samplers) then runs on a model whose
answers are known exactly: the PF-ODE density is the mixture's, smoothed by `sigma_min` (`MixtureOracle.mixture()`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..utils import atomic_write
from .checkpoint import save_checkpoint
from .config import dump_config, load_config
from .loop import CHECKPOINT_NAME
from .task import build_denoiser

__all__ = ["write_oracle_run"]


def write_oracle_run(out, dim: int = 8, preset: str = "mixture", k: int = 4, seed: int = 0, n: int = 512) -> Path:
    """Write a run folder `out` (checkpoint, `config.yaml` and `data.npz` with `n` exact draws of the mixture) whose
    model is the exact denoiser of `MixtureOracle(dim, preset, k, seed)` on the EDM process with sigma in
    [0.002, 1000] (VE coordinates): at sigma_max = 1000 the smoothed mixture and the Gaussian prior
    `N(0, sigma_max^2 I)` differ by less than 1e-3 nats, so the PF-ODE density is the mixture's to that accuracy
    (at EDM's 80 the unit-scale means would leave about 0.03 nats). Returns the checkpoint path."""
    out = Path(out)
    cfg = load_config(None, [f"out={out}", f"data.name={out / 'data.npz'}", "process.name=edm",
                             "process.sigma_max=1000.0",
                             "model.target=x0", "model.noise_cond=log_sigma", "net.kind=mixture_oracle",
                             f"net.preset={preset}", f"net.k={k}", f"net.seed={seed}", "train.steps=1",
                             "train.ema_decays=[]", "sample.sampler=heun"])
    denoiser = build_denoiser(cfg, (dim,))
    x = denoiser.net.mixture().sample(n, torch.Generator().manual_seed(seed + 1))
    atomic_write(out / "data.npz", lambda tmp: np.savez(tmp, x=x.numpy()))
    atomic_write(out / "config.yaml", dump_config(cfg))
    tensors = {f"model.net.{key}": v for key, v in denoiser.net.state_dict().items()}
    meta = {"data_shape": [dim], "step": 0, "seed": seed, "config": cfg, "ema_decays": [], "modules": ["net"],
            "oracle": f"MixtureOracle(dim={dim}, preset={preset!r}, k={k}, seed={seed})"}
    return save_checkpoint(out / CHECKPOINT_NAME, tensors, meta)
