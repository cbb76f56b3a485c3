"""From a config to a trained model and back: `DiffusionTask`, `build_run`, `train_from_config`, `load_model`.

Owns the wiring of the pieces a config names: data (`unifusion.data.open_dataset`), process
(`unifusion.processes.get_process`), network (`unifusion.nets.build_net`), the `Denoiser` that presents it in
VE coordinates (Karras et al. 2022, Sec. 4) and the loss (`unifusion.losses.build_loss`). A checkpoint carries
its config and data shape, so `load_model(path)` rebuilds the exact network without the data.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..parametrization import Denoiser
from ..processes import get_process
from .checkpoint import CheckpointError, read_checkpoint
from .config import check_config, train_config
from .loop import CHECKPOINT_NAME, FitResult, fit
from .pretrained import from_pretrained, is_pretrained

__all__ = ["DiffusionTask", "build_data", "build_data_tensors", "build_denoiser", "build_task", "build_run",
           "check_run_folder", "run_config", "train_from_config", "load_model", "loader_options", "callbacks"]


class DiffusionTask:
    """The task of a denoising loss: the trainable module `net` (plus `schedule`, the process, when the process
    has trainable parameters: `processes.VDM`), the loss `loss_fn(denoiser, x0, generator, class_labels) -> [B]`
    of `unifusion.losses`, and `meta`, what its checkpoints record beside the data shape (`build_run` sets
    `data_bound`, the training data's max |x0|)."""

    def __init__(self, denoiser: Denoiser, loss_fn, meta: dict | None = None):
        self.denoiser, self.loss_fn, self.meta = denoiser, loss_fn, dict(meta or {})  # meta: for the checkpoint
        self.modules = {"net": denoiser.net}
        if _learned_schedule(denoiser):
            self.modules["schedule"] = denoiser.process

    def loss(self, batch, generator):
        x, labels = batch
        return self.loss_fn(self.denoiser, x, generator=generator, class_labels=labels)

    def to(self, device):
        self.denoiser.to(device)
        return self


def _learned_schedule(denoiser: Denoiser) -> bool:
    """Whether the denoiser's process has trainable parameters (a learned noise schedule)."""
    return isinstance(denoiser.process, torch.nn.Module) and any(p.requires_grad for p in denoiser.process.parameters())


def _section(cfg: dict, name: str, head: str) -> tuple[str, dict]:
    sec = dict(cfg[name])
    return sec.pop(head), sec


def _build(section: str, make, *args, **kwargs):
    """`make(*args, **kwargs)` (options the schema has checked), a `TypeError` inside the builder becoming one
    `ValueError` line naming the section."""
    try:
        return make(*args, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad option in config section {section!r}: {str(e).splitlines()[0]}") from None


def data_source(cfg: dict) -> tuple[str, dict]:
    """`(name, options)` of the config's data set: its `data` section without the loader's keys."""
    from ..data.loader import LoaderOptions

    name, kwargs = _section(cfg, "data", "name")
    return name, {k: v for k, v in kwargs.items() if k not in vars(LoaderOptions())}


def build_data(cfg: dict) -> torch.utils.data.Dataset:
    """The `Dataset` of the config's `data` section (read lazily where it is a file); its labels are kept only when
    the net is class-conditional."""
    from ..data import open_dataset, without_labels

    name, kwargs = data_source(cfg)
    ds = _build("data", open_dataset, name, **kwargs)
    if not cfg["net"].get("num_classes"):
        return without_labels(ds)
    if getattr(ds, "labels", None) is None:
        raise ValueError(f"net.num_classes={cfg['net']['num_classes']} needs labels, but data set {name!r} has none")
    return ds


def build_data_tensors(cfg: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(x, labels)`: the config's data set in memory, float32 (pixels scaled to [-1, 1]), for runs that transform
    all of it first (a latent cache, a latent scale)."""
    from ..data.loader import in_memory

    return in_memory(build_data(cfg))


def loader_options(cfg: dict):
    """The `LoaderOptions` of the config's `data` section."""
    from ..data.loader import LoaderOptions

    return LoaderOptions(**{k: cfg["data"][k] for k in vars(LoaderOptions())})


def build_denoiser(cfg: dict, data_shape) -> Denoiser:
    """The `Denoiser` of the config's `process`, `net` and `model` sections for data of shape `[N, *data_shape]`."""
    import inspect

    from ..nets import NETS, build_net

    pname, pkw = _section(cfg, "process", "name")
    process = _build("process", get_process, pname, **pkw)
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
    net = _build("net", build_net, kind, **nkw)
    m = cfg["model"]
    return Denoiser(net, process, m["target"], m["sigma_data"], m["noise_cond"], m["time_scale"])


def build_task(cfg: dict, data_shape) -> DiffusionTask:
    """The `DiffusionTask` of the config's process / model / net / loss sections for data of shape
    `[N, *data_shape]`, the network initialised from `cfg["seed"]`."""
    import inspect

    from ..losses import LOSSES, build_loss

    torch.manual_seed(cfg["seed"])                  # network initialisation
    denoiser = build_denoiser(cfg, data_shape)
    lname, lkw = _section(cfg, "loss", "name")
    if lname in LOSSES and "sigma_data" in inspect.signature(LOSSES[lname]).parameters:
        lkw.setdefault("sigma_data", cfg["model"]["sigma_data"])
    loss = _build("loss", build_loss, lname, denoiser.process, **lkw)
    return DiffusionTask(denoiser, loss)


def build_run(cfg: dict):
    """`(task, data, None)` for a config: the `DiffusionTask` and the `Dataset` it trains on."""
    from ..data.loader import data_bound, example_shape

    cfg = check_config(cfg)
    data = build_data(cfg)
    task = build_task(cfg, example_shape(data))
    task.meta["data_bound"] = data_bound(data)      # max |x0|, which sampling clips the model's estimate to
    return task, data, None


def callbacks(cfg: dict, task, data) -> list:
    """The callbacks a config asks for: sample previews (`train.preview_every`) and evaluations
    (`train.eval_every`: sliced Wasserstein distance to the first `train.eval_n` training examples)."""
    from ..data.loader import fetch_batch, to_device
    from .callbacks import Eval, SamplePreview, sliced_wasserstein_eval

    t, smp, out = cfg["train"], cfg["sample"], []
    if t["preview_every"] and hasattr(task, "denoiser"):
        out.append(SamplePreview(t["preview_every"], t["preview_n"], smp["sampler"], smp["steps"] or 18, smp["seed"]))
    if t["eval_every"] and hasattr(task, "denoiser") and isinstance(data, torch.utils.data.Dataset) \
            and not isinstance(data, torch.utils.data.IterableDataset):
        x, _, _ = fetch_batch(data, range(min(t["eval_n"], len(data))))
        ref, _ = to_device(x, None, "cpu")
        out.append(Eval(t["eval_every"], sliced_wasserstein_eval(ref, t["eval_n"], smp["sampler"],
                                                                 smp["steps"] or 18, smp["seed"])))
    return out


def check_run_folder(out, resume: bool) -> Path:
    """`out` as a run folder a run may write: not a file, and holding no checkpoint unless `resume`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={str(out)!r} is a file; a run folder is needed")
    if not resume and (out / CHECKPOINT_NAME).exists():
        raise ValueError(f"{out / CHECKPOINT_NAME} exists; pass --resume to continue it or choose another out folder")
    return out


def run_config(cfg: dict, build, resume: bool = False, out=None, extra_meta=None) -> FitResult:
    """Build a run with `build(cfg) -> (task, data, labels)` and `fit` it: the one set-up shared by
    `unifusion train` (`train_from_config`) and `unifusion distill`. Refuses to overwrite a checkpoint unless
    `resume`; `fit` writes `config.yaml` once its checks have passed; the checkpoint's meta holds the data shape,
    the task's own `meta` dict if it has one (a transformed task's data shape, e.g. latents; a diffusion task's data
    bound), and `extra_meta(task)`. `out` overrides `cfg['out']`."""
    from ..data.loader import example_shape

    cfg = copy.deepcopy(cfg)
    if out is not None:
        cfg["out"] = str(out)
    out = check_run_folder(cfg["out"], resume)
    task, data, labels = build(cfg)
    shape = example_shape(data) if labels is None else tuple(data.shape[1:])
    meta = {"data_shape": list(shape), **getattr(task, "meta", {}),
            **(extra_meta(task) if extra_meta is not None else {})}
    return fit(task, data, labels, train=train_config(cfg), seed=cfg["seed"], out=out, config=cfg, meta=meta,
               resume=resume, loader=loader_options(cfg), callbacks=callbacks(cfg, task, data))


def train_from_config(cfg: dict, resume: bool = False, out=None) -> FitResult:
    """Build the run of `cfg` and `fit` it; writes `config.yaml`, `log.jsonl` and `checkpoint.safetensors` under
    `out` (default `cfg['out']`). `cfg['task']` picks the builder: "diffusion" (`build_run`) or "classifier"
    (`unifusion.guidance.noise_classifier.build_classifier_run`, a noise-conditional classifier)."""
    build = build_run
    if cfg.get("task") == "classifier":
        from ..guidance.noise_classifier import build_classifier_run as build
    return run_config(cfg, build, resume=resume, out=out)


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
    if "data_shape" not in info or "config" not in info or info.get("modules") not in (["net"], ["net", "schedule"]):
        raise CheckpointError(f"{path} is not a diffusion-model checkpoint (no data shape / net); "
                              f"it may come from another task")
    cfg = check_config(info["config"])
    decays = info.get("ema_decays", [])
    if ema is True:
        prefix = "ema0." if decays else "model."
    elif ema is False or ema is None:
        prefix = "model."
    else:
        if float(ema) not in decays:
            raise ValueError(f"ema={ema!r}: this checkpoint keeps EMA decays {decays}")
        prefix = f"ema{decays.index(float(ema))}."
    try:
        denoiser = build_denoiser(cfg, info["data_shape"])
        for name in info["modules"]:
            module = denoiser.net if name == "net" else denoiser.process
            pre = f"{prefix}{name}."
            module.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})
    except (RuntimeError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not match its config: {str(e).splitlines()[0]}") from None
    denoiser.config, denoiser.data_shape = cfg, tuple(info["data_shape"])
    denoiser.data_bound = info.get("data_bound")  # max |x0| of the training data (None in older checkpoints)
    denoiser.checkpoint_step = int(info["step"])
    return denoiser.to(device).eval().requires_grad_(False)
