"""From a config to a trained model and back: `DiffusionTask`, `build_run`, `train_from_config`, `load_model`.

Owns the wiring of the pieces a config names: data (`unifusion.data.get_dataset`), process
(`unifusion.processes.get_process`), network (`unifusion.nets.build_net`), the `Denoiser` that presents it in
VE coordinates (Karras et al. 2022, Sec. 4) and the loss (`unifusion.losses.build_loss`). A checkpoint carries
its config and data shape, so `load_model(path)` rebuilds the exact network without the data.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import yaml

from ..parametrization import Denoiser
from ..processes import get_process
from ..utils import atomic_write
from .checkpoint import CheckpointError, read_checkpoint
from .config import check_config, merge, DEFAULTS
from .loop import CHECKPOINT_NAME, FitResult, TrainConfig, fit
from .pretrained import from_pretrained, is_pretrained

__all__ = ["DiffusionTask", "build_data", "build_denoiser", "build_run", "run_config", "train_from_config",
           "load_model"]


class DiffusionTask:
    """The task of a denoising loss: one trainable module `net`, the loss `loss_fn(denoiser, x0, generator,
    class_labels) -> [B]` of `unifusion.losses`."""

    def __init__(self, denoiser: Denoiser, loss_fn):
        self.denoiser, self.loss_fn = denoiser, loss_fn
        self.modules = {"net": denoiser.net}

    def loss(self, batch, generator):
        x, labels = batch
        return self.loss_fn(self.denoiser, x, generator=generator, class_labels=labels)

    def to(self, device):
        self.denoiser.to(device)
        return self


def _section(cfg: dict, name: str, head: str) -> tuple[str, dict]:
    sec = dict(cfg[name])
    return sec.pop(head), sec


def _build(section: str, cls, make, kwargs: dict, *args):
    """`make(*args, **kwargs)` with `kwargs` checked against `cls`'s signature first: an unknown key is named with
    the valid ones, a value whose type does not match a numeric / boolean / string default is named with the type
    expected; a `TypeError` inside the builder becomes a one-line `ValueError` naming the section."""
    import inspect
    from .config import _type_ok

    if cls is not None:
        params = inspect.signature(cls).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            valid = [k for k, p in params.items() if k not in ("self", "process") and p.kind is not p.VAR_POSITIONAL]
            unknown = sorted(set(kwargs) - set(valid))
            if unknown:
                raise ValueError(f"unknown config key '{section}.{unknown[0]}'; valid keys in {section!r} are "
                                 f"{sorted(valid)}")
        for k, v in kwargs.items():
            d = params[k].default if k in params else None
            if isinstance(d, (bool, int, float, str)):
                ok, what = _type_ok(d, v)
                if not ok:
                    raise ValueError(f"config key '{section}.{k}' must be {what}, got {v!r}")
    try:
        return make(*args, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad option in config section {section!r}: {str(e).splitlines()[0]}") from None


def build_data(cfg: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(data, labels)` of the config's `data` section; labels only when the net is class-conditional."""
    from ..data import get_dataset

    name, kwargs = _section(cfg, "data", "name")
    data, labels = get_dataset(name, **kwargs)
    if not torch.isfinite(data).all():
        raise ValueError(f"data set {name!r} contains NaN or Inf; finite values are required")
    if not cfg["net"].get("num_classes"):
        labels = None
    elif labels is None:
        raise ValueError(f"net.num_classes={cfg['net']['num_classes']} needs labels, but data set {name!r} has none")
    return data.float(), labels


def build_denoiser(cfg: dict, data_shape) -> Denoiser:
    """The `Denoiser` of the config's `process`, `net` and `model` sections for data of shape `[N, *data_shape]`."""
    from ..nets import NETS, build_net
    import inspect

    from ..processes import PROCESSES

    pname, pkw = _section(cfg, "process", "name")
    process = _build("process", PROCESSES.get(pname), get_process, pkw, pname)
    kind, nkw = _section(cfg, "net", "kind")
    if kind in NETS:
        params = inspect.signature(NETS[kind]).parameters
        shape = tuple(data_shape)
        auto = {"dim": shape[0] if len(shape) == 1 else None,
                "in_channels": shape[0] if len(shape) == 3 else None,
                "img_resolution": shape[-1] if len(shape) == 3 else None}
        for k, v in auto.items():
            if k in params and k not in nkw and v is not None:
                nkw[k] = v
    net = _build("net", NETS.get(kind), build_net, nkw, kind)
    m = cfg["model"]
    return Denoiser(net, process, m["target"], m["sigma_data"], m["noise_cond"], m["time_scale"])


def build_run(cfg: dict):
    """`(task, data, labels)` for a checked config."""
    from ..losses import build_loss
    import inspect
    from ..losses import LOSSES

    check_config(cfg)
    data, labels = build_data(cfg)
    torch.manual_seed(cfg["seed"])                  # network initialisation
    denoiser = build_denoiser(cfg, data.shape[1:])
    lname, lkw = _section(cfg, "loss", "name")
    if lname in LOSSES and "sigma_data" in inspect.signature(LOSSES[lname]).parameters:
        lkw.setdefault("sigma_data", cfg["model"]["sigma_data"])
    loss = _build("loss", LOSSES.get(lname), build_loss, lkw, lname, denoiser.process)
    return DiffusionTask(denoiser, loss), data, labels


def train_config(cfg: dict) -> TrainConfig:
    t = dict(cfg["train"])
    t["betas"], t["ema_decays"] = tuple(t["betas"]), tuple(t["ema_decays"])
    return TrainConfig(**t)


def run_config(cfg: dict, build, resume: bool = False, out=None, extra_meta=None) -> FitResult:
    """Build a run with `build(cfg) -> (task, data, labels)` and `fit` it: the one set-up shared by
    `unifusion train` (`train_from_config`) and `unifusion distill`. Refuses to overwrite a checkpoint unless
    `resume`; rank 0 writes `config.yaml` atomically; the checkpoint's meta holds the data shape plus
    `extra_meta(task)`. `out` overrides `cfg['out']`."""
    cfg = copy.deepcopy(cfg)
    if out is not None:
        cfg["out"] = str(out)
    task, data, labels = build(cfg)
    out = Path(cfg["out"])
    if not resume and (out / CHECKPOINT_NAME).exists():
        raise ValueError(f"{out / CHECKPOINT_NAME} exists; pass --resume to continue it or choose another out folder")
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    meta = {"data_shape": list(data.shape[1:]), **(extra_meta(task) if extra_meta is not None else {})}
    return fit(task, data, labels, train=train_config(cfg), seed=cfg["seed"], out=out, config=cfg, meta=meta,
               resume=resume)


def train_from_config(cfg: dict, resume: bool = False, out=None) -> FitResult:
    """Build the run of `cfg` and `fit` it; writes `config.yaml`, `log.jsonl` and `checkpoint.safetensors` under
    `out` (default `cfg['out']`)."""
    return run_config(cfg, build_run, resume=resume, out=out)


def load_model(checkpoint_path, ema=True, device="cpu") -> Denoiser:
    """The trained `Denoiser` of a checkpoint written by `train_from_config` (its config as `.config`), or of a
    `save_pretrained` folder (which holds one set of weights; `ema` is then ignored).

    `ema=True`: the first EMA decay's weights (the raw weights if the run kept no EMA); `False`: the raw weights;
    a float: the EMA of that decay. A truncated / corrupted checkpoint or one whose tensors do not fit its
    config raises `CheckpointError` (a `ValueError`).
    """
    path = Path(checkpoint_path)
    if is_pretrained(path) and not (path / CHECKPOINT_NAME).exists():
        return from_pretrained(path, device)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    tensors, info = read_checkpoint(path)
    if "data_shape" not in info or "config" not in info or info.get("modules") != ["net"]:
        raise CheckpointError(f"{path} is not a diffusion-model checkpoint (no data shape / net); "
                              f"it may come from another task")
    cfg = merge(DEFAULTS, info["config"])
    decays = info.get("ema_decays", [])
    if ema is True:
        prefix = "ema0.net." if decays else "model.net."
    elif ema is False or ema is None:
        prefix = "model.net."
    else:
        if float(ema) not in decays:
            raise ValueError(f"ema={ema!r}: this checkpoint keeps EMA decays {decays}")
        prefix = f"ema{decays.index(float(ema))}.net."
    try:
        denoiser = build_denoiser(cfg, info["data_shape"])
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        denoiser.net.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not match its config: {str(e).splitlines()[0]}") from None
    denoiser.config, denoiser.data_shape = cfg, tuple(info["data_shape"])
    denoiser.checkpoint_step = int(info["step"])
    return denoiser.to(device).eval().requires_grad_(False)
