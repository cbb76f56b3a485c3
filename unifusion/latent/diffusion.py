"""Latent diffusion runs: the `latent:` config section, latents for training, and decoding of samples.

This module owns the two transforms that make any unifusion model a latent diffusion model (Rombach et al. 2022):
* around the data: training images become normalised latents `scale * (z - shift)`, `z ~ q(z|x)`, either from
  posterior moments encoded once and cached to disk (`encode: cache`, a safetensors file next to the autoencoder
  checkpoint, keyed by the autoencoder's checksum and the data section) or by running the encoder on each batch
  (`encode: online`); in both a fresh posterior sample is drawn per step unless `sample_posterior: false` (then
  the posterior mean). `LatentTask` wraps any `fit` task (diffusion, consistency distillation or training) so its
  loss sees latents; processes, losses and networks are unchanged;
* around the samples: `decode_samples` decodes what any sampler drew in latent space, with the autoencoder and
  latent scale stored in the model's checkpoint (and refuses an autoencoder checkpoint that changed since).

`train_from_config` trains any config: an autoencoder config (`autoencoder:` section), a latent diffusion config
(`latent:` section) or a pixel-space one (`unifusion.train.train_from_config`).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..schema import register_section
from ..train.checkpoint import CheckpointError
from ..utils import atomic_write, check_choice
from .autoencoder import Autoencoder, DiagonalGaussian, latents_from_posterior
from .autoencoder_task import autoencoder_digest, load_autoencoder, train_autoencoder_from_config

__all__ = ["LatentConfig", "LATENT_DEFAULTS", "LatentTask", "check_latent_section", "encode_dataset",
           "build_latent_run", "train_from_config", "latent_info", "autoencoder_of", "decode_samples"]

@dataclass
class LatentConfig:
    """The `latent:` section of a latent diffusion config.

    Attributes:
        autoencoder:      a checkpoint (file or run folder) or a diffusers AutoencoderKL folder.
        encode:           "cache": posterior moments encoded once, cached to disk; "online": the encoder per batch.
        sample_posterior: draw z ~ q(z|x) per step (False: the posterior mean).
    """
    autoencoder: str | None = None
    encode: str = "cache"
    sample_posterior: bool = True


LATENT_DEFAULTS: dict = asdict(LatentConfig())


def check_latent_section(sec) -> dict:
    """`LATENT_DEFAULTS` updated by the `latent:` section `sec`; an unknown key or a bad value raises `ValueError`."""
    if not isinstance(sec, dict):
        raise ValueError(f"config section 'latent' must be a mapping, got {sec!r}")
    for k in sec:
        if k not in LATENT_DEFAULTS:
            raise ValueError(f"unknown config key 'latent.{k}'; valid keys are {sorted(LATENT_DEFAULTS)}")
    c = dict(LATENT_DEFAULTS, **sec)
    if not isinstance(c["autoencoder"], str) or not c["autoencoder"]:
        raise ValueError(f"latent.autoencoder must name an autoencoder checkpoint, got {c['autoencoder']!r}")
    check_choice(c["encode"], "latent.encode", ("cache", "online"))
    if not isinstance(c["sample_posterior"], bool):
        raise ValueError(f"latent.sample_posterior must be true or false, got {c['sample_posterior']!r}")
    return c


register_section("latent", LatentConfig, check=check_latent_section, optional=True)


class LatentTask:
    """Any `fit` task trained on latents: `loss((x, labels), g) = task.loss((to_latents(x, g), labels), g)`.

    Args:
        task:       the wrapped task (its modules are the trainable ones; `after_step`, `state_tensors`, ... are its).
        to_latents: `(batch, generator) -> latents` without gradient (None: the batch already holds latents).
        meta:       checkpoint metadata: the latent `data_shape` and the autoencoder's `latent_info`.
        autoencoder: moved with the task by `to(device)`.
    """

    def __init__(self, task, to_latents=None, meta: dict | None = None, autoencoder: Autoencoder | None = None):
        self.task, self.to_latents, self.meta, self.autoencoder = task, to_latents, dict(meta or {}), autoencoder
        self.modules = task.modules

    def loss(self, batch, generator):
        x, labels = batch
        if self.to_latents is not None:
            with torch.no_grad():
                x = self.to_latents(x, generator)
        return self.task.loss((x, labels), generator)

    def __getattr__(self, name):            # after_step and the other hooks of the task
        if name == "task":
            raise AttributeError(name)
        return getattr(self.task, name)

    def _digest(self) -> torch.Tensor:
        return torch.frombuffer(bytearray.fromhex(self.meta["latent"]["sha256"]), dtype=torch.uint8)

    def state_tensors(self) -> dict:
        """The task's state plus the autoencoder's fingerprint, so that a resumed run checks its latents."""
        inner = self.task.state_tensors() if hasattr(self.task, "state_tensors") else {}
        return {**inner, "autoencoder_sha256": self._digest()} if "latent" in self.meta else inner

    def load_state_tensors(self, tensors: dict) -> None:
        tensors = dict(tensors)
        saved = tensors.pop("autoencoder_sha256", None)
        if saved is not None and "latent" in self.meta and not torch.equal(saved, self._digest()):
            raise CheckpointError(f"autoencoder {self.meta['latent']['autoencoder']} changed since this run's "
                                  f"checkpoint was written; resume with the autoencoder it was trained with")
        if hasattr(self.task, "load_state_tensors"):
            self.task.load_state_tensors(tensors)

    def to(self, device):
        if hasattr(self.task, "to"):
            self.task.to(device)
        else:
            for m in self.modules.values():
                m.to(device)
        if self.autoencoder is not None:
            self.autoencoder.to(device)
        return self


@torch.no_grad()
def _moments(autoencoder: Autoencoder, data: torch.Tensor, batch_size: int = 256):
    """`(mean, std)` of the raw posterior of every image (std None for a deterministic encoder)."""
    means, stds = [], []
    for i in range(0, data.shape[0], batch_size):
        post = autoencoder.encode(data[i:i + batch_size])
        means.append(post.mean if isinstance(post, DiagonalGaussian) else post)
        stds.append(post.std if isinstance(post, DiagonalGaussian) else None)
    mean = torch.cat(means).float().contiguous()
    return mean, (None if stds[0] is None else torch.cat(stds).float().contiguous())


def encode_dataset(autoencoder: Autoencoder, data: torch.Tensor, cache: Path | None = None, key: dict | None = None):
    """`(mean, std)` of the posterior of every image of `data` (raw latents; std None for a deterministic encoder),
    read from `cache` (a safetensors file) when it holds the same `key`, else encoded and written there atomically
    (by the main process only)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    text = json.dumps(key or {}, sort_keys=True)
    if cache is not None and cache.is_file():
        try:
            with safe_open(str(cache), framework="pt") as f:
                if (f.metadata() or {}).get("key") == text:
                    t = {k: f.get_tensor(k) for k in f.keys()}
                    if t["mean"].shape[0] == data.shape[0]:
                        return t["mean"], t.get("std")
        except Exception:            # a damaged cache is encoded again
            pass
    mean, std = _moments(autoencoder, data)
    if cache is not None and int(os.environ.get("RANK", "0")) == 0:
        tensors = {"mean": mean} if std is None else {"mean": mean, "std": std}
        atomic_write(cache, lambda tmp: save_file(tensors, str(tmp), metadata={"key": text}))
    return mean, std


def _check_net_shape(cfg: dict, latent_shape, where: str) -> None:
    """A net section that states its input shape must state the autoencoder's latent shape."""
    c, h, w = latent_shape
    want = {"in_channels": c, "out_channels": c, "img_resolution": h if h == w else None, "dim": c * h * w}
    for k, v in cfg["net"].items():
        if k in want and v is not None and v != want[k]:
            raise ValueError(f"autoencoder {where} gives latents of shape {list(latent_shape)}, but the config has "
                             f"net.{k}={v!r} (it should be {want[k]!r}, or be left out)")


def _cache_path(path: str) -> Path:
    p = Path(path)
    return (p if p.is_dir() else p.parent) / "latents"


def build_latent_run(cfg: dict, build_task=None):
    """`(task, data, labels)` of a checked config with a `latent:` section: `build_task(cfg, latent_shape)` (default
    `unifusion.train.task.build_task`, the diffusion task) wrapped in a `LatentTask`, with the data `fit` sees
    (cached posterior moments, latents, or images for `encode: online`). Errors (no autoencoder, latent shape
    other than the net section's, images the autoencoder cannot take) come before anything is encoded."""
    from ..train.task import build_data_tensors
    from ..train.task import build_task as build_diffusion_task

    if cfg.get("autoencoder") is not None:
        raise ValueError("a config has either an 'autoencoder' section (train an autoencoder) or a 'latent' section "
                         "(latent diffusion), not both")
    sec = check_latent_section(cfg["latent"])
    where = sec["autoencoder"]
    ae = load_autoencoder(where)
    data, labels = build_data_tensors(cfg)
    if data.ndim != 4:
        raise ValueError(f"latent diffusion needs images [N, C, H, W]; data set {cfg['data'].get('name')!r} has shape "
                         f"{list(data.shape)}")
    try:
        shape = ae.latent_shape_of(data.shape[1:])
    except ValueError as e:
        raise ValueError(f"data set {cfg['data'].get('name')!r}: {e} (autoencoder {where})") from None
    _check_net_shape(cfg, shape, where)
    task = (build_task or build_diffusion_task)(cfg, shape)
    meta = {"data_shape": list(shape), "latent": latent_info(ae, where, data.shape[1:])}
    scale, shift = ae.scale_factor, ae.shift_factor
    if sec["encode"] == "online":
        def encode(x, g):
            return ae.latents_from_images(x, g, sec["sample_posterior"])
        return LatentTask(task, encode, meta, ae), data, labels
    key = {"autoencoder": meta["latent"]["sha256"], "data": cfg["data"]}
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    mean, std = encode_dataset(ae, data, _cache_path(where) / f"{name}.safetensors", key)
    if std is None or not sec["sample_posterior"]:
        return LatentTask(task, None, meta, ae), latents_from_posterior(mean, scale, shift), labels
    c = mean.shape[1]

    def draw(moments, g):                    # cached [mean, std] -> a posterior sample, normalised
        return latents_from_posterior(DiagonalGaussian(moments[:, :c], 2 * moments[:, c:].log()), scale, shift, g)
    return LatentTask(task, draw, meta, ae), torch.cat([mean, std], 1), labels


def latent_info(autoencoder: Autoencoder, path: str, image_shape) -> dict:
    """What a latent model's checkpoint keeps of its autoencoder: where it is, its fingerprint, its latent scale
    and the image shape it decodes to."""
    return {"autoencoder": str(path), "sha256": autoencoder_digest(path), "scale_factor": autoencoder.scale_factor,
            "shift_factor": autoencoder.shift_factor, "image_shape": [int(s) for s in image_shape]}


def train_from_config(cfg: dict, resume: bool = False, out=None):
    """Train any config: an autoencoder (`autoencoder:` section), a latent diffusion model (`latent:` section) or a
    pixel-space model (`unifusion.train.train_from_config`). Returns `fit`'s `FitResult`."""
    from ..train.config import check_config
    from ..train.task import run_config
    from ..train.task import train_from_config as train_pixels

    if cfg.get("autoencoder") is not None and cfg.get("latent") is None:
        return train_autoencoder_from_config(cfg, resume=resume, out=out)
    if cfg.get("latent") is not None:
        return run_config(check_config(cfg), build_latent_run, resume=resume, out=out)
    return train_pixels(cfg, resume=resume, out=out)


def _read_meta(path) -> dict:
    from ..train.checkpoint import read_checkpoint
    from ..train.loop import CHECKPOINT_NAME

    p = Path(path)
    return read_checkpoint(p / CHECKPOINT_NAME if p.is_dir() else p)[1]


def autoencoder_of(checkpoint, device="cpu") -> Autoencoder | None:
    """The autoencoder a model checkpoint (of `unifusion train` or `unifusion distill`) decodes its samples with, at
    the latent scale it was trained with; None for a pixel-space model. An autoencoder checkpoint that is missing or
    changed since raises `CheckpointError`."""
    info = _read_meta(checkpoint).get("latent")
    if info is None:
        return None
    if autoencoder_digest(info["autoencoder"]) != info["sha256"]:
        raise CheckpointError(f"autoencoder {info['autoencoder']} changed since {checkpoint} was trained on its "
                              f"latents; decode with the autoencoder it was trained with")
    ae = load_autoencoder(info["autoencoder"], device=device)
    ae.scale_factor, ae.shift_factor = float(info["scale_factor"]), float(info["shift_factor"])
    return ae


@torch.no_grad()
def decode_samples(model, checkpoint, samples: torch.Tensor, info: dict | None = None, batch_size: int = 500):
    """`(images, image_shape)`: `samples` of `model`, loaded from `checkpoint`, decoded to images if it is a latent
    model (its `config` has a `latent:` section; then the checkpoint says which autoencoder), else
    `(samples, None)`. With `info` (`generate`'s), adds `decode_seconds` to its `seconds`."""
    import time

    if (getattr(model, "config", None) or {}).get("latent") is None:
        return samples, None
    ae = autoencoder_of(checkpoint)
    if ae is None:
        raise CheckpointError(f"{checkpoint} has a latent: section but no autoencoder in its metadata")
    t0 = time.perf_counter()
    images = torch.cat([ae.images_from_latents(samples[i:i + batch_size])
                        for i in range(0, samples.shape[0], batch_size)])
    if info is not None:
        info["decode_seconds"] = time.perf_counter() - t0
        info["seconds"] = info.get("seconds", 0.0) + info["decode_seconds"]
    return images, tuple(images.shape[1:])
