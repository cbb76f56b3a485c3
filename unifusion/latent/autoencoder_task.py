"""Training an autoencoder with `unifusion train`, its latent scale, and its checkpoints.

This module owns
* the `autoencoder:` config section (`AE_DEFAULTS`): the architecture (`kind` in `AUTOENCODERS` and its options)
  and the loss of Rombach et al. 2022 (Sec. 3, App. G) without the adversarial term: per example
  `sum |x - D(z)| + kl_weight * KL(q(z|x) || N(0, I)) + perceptual_weight * sum (phi(x) - phi(D(z)))^2`,
  `z ~ q(z|x)`, sums over pixels / latents as in LDM (so LDM's `kl_weight=1e-6` keeps its meaning), where `phi`
  are the shipped digits classifier's features of the images seen at 8x8 (`data.digits32_to_digits`; a
  perceptual-style loss in place of LPIPS, for 1x32x32 digits only);
* `AutoencoderTask`: that loss as a task of `unifusion.train.fit`;
* `estimate_latent_scale`: the scale (and optional shift) that give the training latents unit variance,
  Stable Diffusion's `0.18215` measured on the data (Rombach et al. 2022, Sec. 4.3.2 / App. G);
* `train_autoencoder_from_config`: fit, then the scale measured on the training set and stored in the
  checkpoint's metadata; `save_autoencoder` / `load_autoencoder` for the checkpoint (`load_autoencoder` also
  reads a diffusers `AutoencoderKL` folder through `diffusers_vae.DiffusersAutoencoder`).
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..schema import choice_of, register_section
from ..train.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from ..train.loop import CHECKPOINT_NAME
from ..utils import check_choice
from .autoencoder import AUTOENCODERS, Autoencoder, DiagonalGaussian

__all__ = ["AutoencoderLoss", "AE_DEFAULTS", "AE_LOSS_KEYS", "AutoencoderTask", "check_autoencoder_section",
           "estimate_latent_scale", "build_autoencoder_run", "train_autoencoder_from_config", "save_autoencoder",
           "load_autoencoder", "autoencoder_digest"]

MODULE = "autoencoder"     # the trainable module's name in checkpoints (`model.autoencoder.*`)

@dataclass
class AutoencoderLoss:
    """The fixed keys of the `autoencoder:` section (next to `kind`, a name in `AUTOENCODERS`, and its options).

    Attributes:
        kl_weight:         weight of the summed KL term (LDM's 1e-6).
        perceptual_weight: weight of the digits-classifier feature loss (1x32x32 digits only; 0: none).
        shift:             also centre the latents (shift_factor = their mean); False: Stable Diffusion's scale only.
    """
    kl_weight: float = 1.0e-6
    perceptual_weight: float = 0.0
    shift: bool = False


AE_DEFAULTS: dict = {"kind": "kl", **asdict(AutoencoderLoss())}
AE_LOSS_KEYS = tuple(asdict(AutoencoderLoss()))


class AutoencoderTask:
    """The autoencoder loss (module docstring) as a `fit` task: one trainable module `autoencoder`.

    Args:
        autoencoder:       a `KLAutoencoder` (any `Autoencoder` whose `encode` returns a `DiagonalGaussian`).
        kl_weight:         weight of the KL term.
        perceptual_weight: weight of the classifier-feature term (0: not computed).
    """

    def __init__(self, autoencoder: Autoencoder, kl_weight: float = 1e-6, perceptual_weight: float = 0.0):
        self.autoencoder = autoencoder
        self.kl_weight, self.perceptual_weight = float(kl_weight), float(perceptual_weight)
        self.modules = {MODULE: autoencoder}
        self.classifier = None
        if self.perceptual_weight:
            from ..metrics import DigitsClassifier
            self.classifier = copy.deepcopy(DigitsClassifier.load())   # a private copy: `to` moves it

    def loss(self, batch, generator):
        x, _ = batch
        posterior = self.autoencoder.encode(x)
        recon = self.autoencoder.decode(posterior.sample(generator))
        loss = (recon - x).abs().flatten(1).sum(1) + self.kl_weight * posterior.kl()
        if self.classifier is not None:
            from ..data.digits32 import digits32_to_digits
            feats = self.classifier.features(digits32_to_digits(torch.cat([x, recon])))
            loss = loss + self.perceptual_weight * (feats[:len(x)] - feats[len(x):]).pow(2).sum(1)
        return loss

    def to(self, device):
        self.autoencoder.to(device)
        if self.classifier is not None:
            self.classifier.to(device)
        return self


def check_autoencoder_section(sec) -> dict:
    """`AE_DEFAULTS` updated by the `autoencoder:` section `sec`, its kind and loss options checked (the
    architecture options are checked against the kind's signature when it is built)."""
    if not isinstance(sec, dict):
        raise ValueError(f"config section 'autoencoder' must be a mapping, got {sec!r}")
    c = dict(AE_DEFAULTS, **sec)
    check_choice(c["kind"], "autoencoder.kind", AUTOENCODERS)
    for k in ("kl_weight", "perceptual_weight"):
        if isinstance(c[k], bool) or not isinstance(c[k], (int, float)) or not c[k] >= 0:
            raise ValueError(f"autoencoder.{k} must be a number >= 0, got {c[k]!r}")
    if not isinstance(c["shift"], bool):
        raise ValueError(f"autoencoder.shift must be true or false, got {c['shift']!r}")
    return c


register_section("autoencoder", AutoencoderLoss, head="kind", default="kl",
                 choices=choice_of(AUTOENCODERS, "autoencoder.kind"), skip=("image_shape",),
                 check=check_autoencoder_section, optional=True)


def _build_autoencoder(sec: dict, image_shape) -> Autoencoder:
    from ..train.task import _build

    arch = {k: v for k, v in sec.items() if k not in AE_LOSS_KEYS and k != "kind"}
    if "channel_mult" in arch and isinstance(arch["channel_mult"], list):
        arch["channel_mult"] = tuple(arch["channel_mult"])
    cls = AUTOENCODERS[sec["kind"]]
    return _build("autoencoder", cls, tuple(image_shape), **arch)


@torch.no_grad()
def estimate_latent_scale(autoencoder: Autoencoder, data: torch.Tensor, generator: torch.Generator | None = None,
                          shift: bool = False, batch_size: int = 256) -> tuple[float, float]:
    """`(scale_factor, shift_factor)` that give the latents of `data` unit variance: `shift = mean(z)` (0 unless
    `shift`) and `scale = 1 / std(z)` over all latent entries, `z` one posterior sample per image from `generator`
    (what diffusion trains on), as Stable Diffusion's `0.18215` was measured."""
    zs = []
    for i in range(0, data.shape[0], batch_size):
        post = autoencoder.encode(data[i:i + batch_size])
        zs.append((post.sample(generator) if isinstance(post, DiagonalGaussian) else post).double().cpu())
    z = torch.cat(zs)
    s = float(z.mean()) if shift else 0.0
    std = float((z - s).std())
    if not std > 0:
        raise ValueError("the autoencoder's latents have zero variance on the training data; cannot scale them")
    return 1.0 / std, s


def build_autoencoder_run(cfg: dict):
    """`(task, data, labels)` of an autoencoder config (its `data`, `seed` and `autoencoder:` sections)."""
    from ..train.config import check_config
    from ..train.task import build_data_tensors

    check_config(cfg)
    sec = check_autoencoder_section(cfg["autoencoder"])
    data, _ = build_data_tensors(cfg)
    if data.ndim != 4:
        raise ValueError(f"an autoencoder needs images [N, C, H, W]; data set {cfg['data'].get('name')!r} has shape "
                         f"{list(data.shape)}")
    torch.manual_seed(cfg["seed"])
    ae = _build_autoencoder(sec, data.shape[1:])
    if sec["perceptual_weight"] and tuple(data.shape[1:]) != (1, 32, 32):
        raise ValueError(f"autoencoder.perceptual_weight needs 1x32x32 digits (the classifier's features at 8x8), "
                         f"got images {list(data.shape[1:])}")
    return AutoencoderTask(ae, sec["kl_weight"], sec["perceptual_weight"]), data, None


def train_autoencoder_from_config(cfg: dict, resume: bool = False, out=None):
    """Train the autoencoder of `cfg` with `unifusion.train.fit` (checkpoints, resume, EMA, DDP as `unifusion
    train`), then measure its latent scale on the training data with the weights `load_autoencoder` uses and store
    it in the checkpoint's metadata. Returns `fit`'s `FitResult`."""
    from ..train.task import build_data_tensors, run_config

    res = run_config(cfg, build_autoencoder_run, resume=resume, out=out)
    if res.checkpoint is not None and int(os.environ.get("RANK", "0")) == 0:
        ae = load_autoencoder(res.checkpoint, scaled=False)
        data, _ = build_data_tensors(cfg)
        shift = check_autoencoder_section(cfg["autoencoder"])["shift"]
        scale, shift = estimate_latent_scale(ae, data, torch.Generator().manual_seed(cfg["seed"]), shift)
        tensors, info = read_checkpoint(res.checkpoint)
        info = {k: v for k, v in info.items() if k not in ("sha256", "format")}    # save_checkpoint sets them anew
        info["latent_scale"] = {"scale_factor": scale, "shift_factor": shift}
        save_checkpoint(res.checkpoint, tensors, info)
    return res


def save_autoencoder(autoencoder: Autoencoder, path, config: dict | None = None) -> Path:
    """Write any built-in autoencoder (`AUTOENCODERS`) to a checkpoint `load_autoencoder` reads, with its current
    `scale_factor` / `shift_factor`. `config`: its `autoencoder:` section (`kind` and the architecture options;
    default `{"kind": "identity"}` for an `IdentityAutoencoder`)."""
    if config is None:
        if type(autoencoder).__name__ != "IdentityAutoencoder":
            raise ValueError("save_autoencoder needs the autoencoder's config section for this kind")
        config = {"kind": "identity"}
    tensors = {f"model.{MODULE}.{k}": v for k, v in autoencoder.state_dict().items()}
    meta = {"config": {"autoencoder": dict(config)}, "data_shape": list(autoencoder.image_shape), "modules": [MODULE],
            "ema_decays": [], "step": 0,
            "latent_scale": {"scale_factor": autoencoder.scale_factor, "shift_factor": autoencoder.shift_factor}}
    return save_checkpoint(Path(path), tensors, meta)


def _checkpoint_path(path) -> Path:
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() and not (path / "config.json").is_file() else path


def autoencoder_digest(path) -> str:
    """A fingerprint of the autoencoder at `path` (its checkpoint's SHA-256, or that of a diffusers folder's config
    and weights): latent models store it and refuse to decode with an autoencoder that changed."""
    import hashlib

    p = _checkpoint_path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(p.glob("*.json")) + sorted(p.glob("*.safetensors")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        return h.hexdigest()
    if not p.is_file():
        raise CheckpointError(f"no autoencoder at {p}")
    from safetensors import safe_open
    try:
        with safe_open(str(p), framework="pt") as f:
            return json.loads((f.metadata() or {})["unifusion"])["sha256"]
    except Exception:
        raise CheckpointError(f"{p} is not a unifusion checkpoint") from None


def load_autoencoder(path, scaled: bool = True, device="cpu") -> Autoencoder:
    """The autoencoder of a checkpoint written by `unifusion train` with an autoencoder config (or by
    `save_autoencoder`), with its stored `scale_factor` / `shift_factor` (`scaled=False`: 1 and 0), in eval mode
    without gradients. The first EMA decay's weights when the run kept an EMA, else the raw weights. A folder with
    a diffusers `config.json` is read as a diffusers `AutoencoderKL` (`DiffusersAutoencoder`). A missing file or a
    checkpoint of another kind raises a one-line `CheckpointError` (a `ValueError`)."""
    p = _checkpoint_path(path)
    if p.is_dir():
        from .diffusers_vae import DiffusersAutoencoder
        ae = DiffusersAutoencoder.from_folder(p)
        if not scaled:
            ae.scale_factor, ae.shift_factor = 1.0, 0.0
        return ae.to(device).eval().requires_grad_(False)
    if not p.exists():
        raise CheckpointError(f"no autoencoder checkpoint at {p} (train one with `unifusion train digits32_ae`)")
    tensors, info = read_checkpoint(p)
    sec = (info.get("config") or {}).get("autoencoder")
    if info.get("modules") != [MODULE] or not isinstance(sec, dict) or "data_shape" not in info:
        raise CheckpointError(f"{p} is not an autoencoder checkpoint (it has modules {info.get('modules')}); "
                              f"latent.autoencoder must name one written by an autoencoder config")
    prefix = f"ema0.{MODULE}." if info.get("ema_decays") else f"model.{MODULE}."
    try:
        ae = _build_autoencoder(check_autoencoder_section(sec), info["data_shape"])
        ae.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"autoencoder checkpoint {p} does not match its config: "
                              f"{str(e).splitlines()[0]}") from None
    if scaled:
        s = info.get("latent_scale") or {"scale_factor": 1.0, "shift_factor": 0.0}
        ae.scale_factor, ae.shift_factor = float(s["scale_factor"]), float(s["shift_factor"])
    ae.checkpoint_step = int(info.get("step", 0))
    return ae.to(device).eval().requires_grad_(False)
