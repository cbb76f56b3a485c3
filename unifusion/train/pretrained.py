"""Trained models as self-contained folders: `save_pretrained(model, folder)` and `from_pretrained(folder)`.

Owns the released-model format: `config.json` (the model's `process`, `net`, `model`, `data` and `sample` config
sections, its data shape, its data bound and where the weights came from) and `model.safetensors` (the network's
weights, normally the EMA; no optimiser state, no RNG state, nothing pickled). The folder is written atomically
(`utils.atomic_write_dir`) and is loadable without the training config or the data: `from_pretrained` rebuilds the
network with `train.task.build_denoiser`.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..utils import atomic_write, atomic_write_dir
from .checkpoint import CheckpointError
from .config import check_config

__all__ = ["PRETRAINED_FORMAT", "save_pretrained", "from_pretrained", "is_pretrained"]

PRETRAINED_FORMAT = "unifusion-pretrained/1"
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
SECTIONS = ("process", "net", "model", "data", "sample")


def save_pretrained(model, folder, config: dict | None = None, data_shape=None) -> Path:
    """Write `model` (a `Denoiser`) to `folder`: `config.json` + `model.safetensors` with the weights it holds now.

    Args:
        model:      the `Denoiser`; a model from `load_model` / `from_pretrained` carries its config and data shape
                    (`.config`, `.data_shape`), and `load_model(run)` (default `ema=True`) holds the EMA weights.
        folder:     the output folder; must not exist yet or be empty (nothing is overwritten).
        config:     the run config (its `process`, `net`, `model`, `data` sections), if `model` has no `.config`.
        data_shape: the shape of one example, if `model` has no `.data_shape`.
    """
    from safetensors.torch import save_file

    config = config if config is not None else getattr(model, "config", None)
    data_shape = data_shape if data_shape is not None else getattr(model, "data_shape", None)
    if config is None or data_shape is None:
        raise ValueError("save_pretrained needs the model's config and data shape: pass a model from load_model / "
                         "from_pretrained, or config= and data_shape=")
    if config.get("latent"):
        raise ValueError("save_pretrained writes pixel-space models; this one is a latent diffusion model (its "
                         "autoencoder is a separate run)")
    meta = {"format": PRETRAINED_FORMAT, "data_shape": [int(n) for n in data_shape],
            **{k: config[k] for k in SECTIONS if k in config},
            "step": getattr(model, "checkpoint_step", None), "weights": getattr(model, "weights", None),
            "data_bound": getattr(model, "data_bound", None)}
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.net.state_dict().items()}

    def write(tmp: Path):
        save_file(state, str(tmp / WEIGHTS_NAME))
        atomic_write(tmp / CONFIG_NAME, json.dumps(meta, indent=2, sort_keys=True))
    return atomic_write_dir(folder, write)


def is_pretrained(folder) -> bool:
    """Whether `folder` looks like a `save_pretrained` folder."""
    path = Path(folder)
    return path.is_dir() and (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def from_pretrained(folder, device="cpu"):
    """The `Denoiser` saved by `save_pretrained` (in eval mode, gradients off), with `.config` (the defaults merged
    with the saved sections) and `.data_shape`. A folder that is missing, incomplete or does not match its config
    raises `CheckpointError` (a `ValueError`) with a one-line message."""
    from safetensors.torch import load_file

    from .task import build_denoiser

    path = Path(folder)
    if not is_pretrained(path):
        raise CheckpointError(f"{path} is not a unifusion pretrained folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        meta = json.loads((path / CONFIG_NAME).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / CONFIG_NAME} is not valid JSON ({e.msg})") from None
    if meta.get("format") != PRETRAINED_FORMAT:
        raise CheckpointError(f"{path / CONFIG_NAME} has format {meta.get('format')!r}; this version reads "
                              f"{PRETRAINED_FORMAT!r}")
    try:
        cfg = check_config({k: meta[k] for k in SECTIONS if k in meta})
    except ValueError as e:
        raise CheckpointError(f"{path / CONFIG_NAME}: {e}") from None
    try:
        state = load_file(str(path / WEIGHTS_NAME))
    except Exception as e:  # safetensors raises its own error types for truncated / garbled files
        raise CheckpointError(f"{path / WEIGHTS_NAME} is truncated or not a safetensors file ({type(e).__name__})") \
            from None
    try:
        denoiser = build_denoiser(cfg, meta["data_shape"])
        denoiser.net.load_state_dict(state)
    except (RuntimeError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path} does not match its config: {str(e).splitlines()[0]}") from None
    denoiser.config, denoiser.data_shape = cfg, tuple(meta["data_shape"])
    denoiser.checkpoint_step, denoiser.weights = meta.get("step"), meta.get("weights")
    denoiser.data_bound = meta.get("data_bound")  # max |x0| of the training data (`generate` clips to it)
    return denoiser.to(device).eval().requires_grad_(False)
