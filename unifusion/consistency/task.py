"""Consistency distillation and training as tasks of the project's training loop (`unifusion.train.fit`).

This module owns
* `ConsistencyTask`: CD (Song et al. 2023, Algorithm 2: teacher, EMA target `theta-` updated after each optimiser
  step, N fixed) or improved CT (Song & Dhariwal 2023: no target network, the curriculum `N(k)` of the step) as a
  task: trainable `modules`, a per-example `loss`, `after_step`, and the target network / step as checkpointed
  state, so EMA, checkpoints, resume, progress and DDP are those of `unifusion train`;
* the distill config (`DISTILL_DEFAULTS`, the `consistency:` section next to a training config's sections) and
  `build_consistency_run(cfg)`: the student is a copy of the teacher's `Denoiser` (CD, Song et al. 2023, Sec. 4:
  "initialize the consistency model with the teacher") or a fresh network of the config (CT);
* `load_consistency(path)`: the trained `ConsistencyFunction` of a `unifusion distill` checkpoint.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..grids import default_sigma_range
from ..schema import register_section
from ..utils import check_choice, generator_device
from ..nets.embedding import NoiseEmbedding
from .losses import DISTANCES, cd_loss, ct_loss, ema_update, ict_num_scales
from .model import ConsistencyFunction, karras_sigmas

__all__ = ["ConsistencyConfig", "DISTILL_DEFAULTS", "TRAIN_DEFAULTS", "ConsistencyTask", "check_consistency_section",
           "distill_config", "build_consistency_run", "build_consistency_task", "distill_from_config",
           "load_consistency"]

STUDENT = "student"   # the trainable module's name in checkpoints (not "net": `load_model` must not mistake it)


@dataclass
class ConsistencyConfig:
    """The `consistency:` section of a distill config (next to a training config's sections; it has no `loss:`).

    Attributes:
        mode:       "cd": distil `teacher`; "ct": improved consistency training from data.
        teacher:    CD: the teacher's checkpoint (any process / target of `unifusion train`).
        sigma_min:  None: max(0.002, the process's smallest sigma~).
        sigma_max:  None: min(80, the process's largest sigma~).
        sigma_data: None: the config's model.sigma_data.
        rho:        Karras discretization exponent.
        N:          CD: number of noise levels (fixed).
        mu:         CD: EMA decay of the target network (0: the student itself).
        distance:   None: "l2" for CD, "pseudo_huber" for CT; or "l1".
        solver:     CD: the teacher's ODE step, "heun" or "euler".
        s0:         CT: initial N - 1 of the curriculum.
        s1:         CT: final N - 1 of the curriculum.
        p_mean:     CT: log-normal index distribution, mean of log sigma.
        p_std:      CT: ... and its standard deviation.
        guidance:   CD: distil the classifier-free guided teacher of this scale (`unifusion.guidance`).
    """
    mode: str = "cd"
    teacher: str | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    sigma_data: float | None = None
    rho: float = 7.0
    N: int = 18
    mu: float = 0.95
    distance: str | None = None
    solver: str = "heun"
    s0: int = 10
    s1: int = 1280
    p_mean: float = -1.1
    p_std: float = 2.0
    guidance: float | None = None


DISTILL_DEFAULTS: dict = asdict(ConsistencyConfig())


TRAIN_DEFAULTS: dict = {"steps": 2000, "ema_decays": [0.999], "log_every": 100}   # over the teacher's / config's


class ConsistencyTask:
    """CD (`teacher` given) or improved CT (`teacher=None`) as a `fit` task.

    Args:
        f:           the student `ConsistencyFunction`; its denoiser's `net` is the trainable module.
        teacher:     CD: any VE denoiser (evaluated without gradient); None: consistency training.
        N:           CD: the number of Karras levels.
        mu:          CD: the target network's EMA decay.
        distance:    a name in `DISTANCES`.
        solver:      CD: "heun" or "euler".
        total_steps: CT: the K of the curriculum `N(k)` (the run's `train.steps`).
        rho, s0, s1, p_mean, p_std: as in `DISTILL_DEFAULTS`.
        label_dropout: probability of replacing a label by "no label" (-1) for teacher and student alike (the
                     student network's own label dropout is switched off, so both see the same label).
    """

    def __init__(self, f: ConsistencyFunction, teacher=None, *, N: int = 18, mu: float = 0.95, distance: str = "l2",
                 solver: str = "heun", total_steps: int = 1, rho: float = 7.0, s0: int = 10, s1: int = 1280,
                 p_mean: float = -1.1, p_std: float = 2.0, label_dropout: float = 0.0):
        check_choice(distance, "distance", DISTANCES)
        self.f, self.teacher, self.distance, self.solver = f, teacher, DISTANCES[distance], solver
        self.N, self.mu, self.total_steps, self.rho = N, mu, total_steps, rho
        self.s0, self.s1, self.p_mean, self.p_std = s0, s1, p_mean, p_std
        self.label_dropout = float(label_dropout)
        self.modules = {STUDENT: f.denoiser.net}
        self.target = copy.deepcopy(f).requires_grad_(False).eval() if teacher is not None else None
        self.step = 0
        self._sigmas = {}

    def sigmas(self, n: int, device) -> torch.Tensor:
        key = (n, str(device))
        if key not in self._sigmas:
            self._sigmas[key] = karras_sigmas(n, self.f.sigma_min, self.f.sigma_max, self.rho).to(device)
        return self._sigmas[key]

    def num_scales(self) -> int:
        """The current number of levels: `N` for CD, the curriculum `N(k)` for CT."""
        if self.teacher is not None:
            return self.N
        return ict_num_scales(self.step, self.total_steps, self.s0, self.s1)

    def loss(self, batch, generator):
        x, labels = batch
        if labels is not None and self.label_dropout > 0:
            drop = torch.rand(labels.shape, generator=generator, device=generator_device(generator)).to(labels.device)
            labels = torch.where(drop < self.label_dropout, torch.full_like(labels, -1), labels)
        kw = {"class_labels": labels} if labels is not None else None
        sig = self.sigmas(self.num_scales(), x.device)
        if self.teacher is not None:
            return cd_loss(self.f, self.target, self.teacher, x, sig, generator=generator, distance=self.distance,
                           solver=self.solver, model_kwargs=kw)
        return ct_loss(self.f, x, sig, generator=generator, distance=self.distance, p_mean=self.p_mean,
                       p_std=self.p_std, model_kwargs=kw)

    def after_step(self, step: int) -> None:
        self.step = step + 1
        if self.target is not None:
            ema_update(self.target, self.f, self.mu)

    def state_tensors(self) -> dict:
        out = {"step": torch.tensor(self.step)}
        if self.target is not None:
            out.update({f"target.{k}": v for k, v in self.target.denoiser.net.state_dict().items()})
        return out

    def load_state_tensors(self, tensors: dict) -> None:
        self.step = int(tensors["step"])
        if self.target is not None:
            self.target.denoiser.net.load_state_dict(
                {k[len("target."):]: v for k, v in tensors.items() if k.startswith("target.")})

    def to(self, device):
        for m in (self.f, self.target, self.teacher):
            if isinstance(m, torch.nn.Module):
                m.to(device)
        return self


def check_consistency_section(sec: dict) -> dict:
    """`DISTILL_DEFAULTS` updated by `sec`; an unknown key or a bad value raises `ValueError` naming it."""
    for k in sec:
        if k not in DISTILL_DEFAULTS:
            raise ValueError(f"unknown config key 'consistency.{k}'; valid keys are {sorted(DISTILL_DEFAULTS)}")
    c = dict(DISTILL_DEFAULTS, **sec)
    check_choice(c["mode"], "consistency.mode", ("cd", "ct"))
    check_choice(c["solver"], "consistency.solver", ("euler", "heun"))
    if c["distance"] is not None:
        check_choice(c["distance"], "consistency.distance", DISTANCES)
    if c["mode"] == "cd" and not c["teacher"]:
        raise ValueError("consistency.mode='cd' needs consistency.teacher (a checkpoint of `unifusion train`)")
    for k in ("N", "s0", "s1"):
        if isinstance(c[k], bool) or not isinstance(c[k], int) or c[k] < 2:
            raise ValueError(f"consistency.{k} must be an integer >= 2, got {c[k]!r}")
    if not (isinstance(c["mu"], (int, float)) and 0 <= c["mu"] < 1):
        raise ValueError(f"consistency.mu must lie in [0, 1), got {c['mu']!r}")
    for k in ("rho", "p_std"):
        if not (isinstance(c[k], (int, float)) and c[k] > 0):
            raise ValueError(f"consistency.{k} must be > 0, got {c[k]!r}")
    for k in ("sigma_min", "sigma_max", "sigma_data"):
        if c[k] is not None and not (isinstance(c[k], (int, float)) and 0 < c[k] < math.inf):
            raise ValueError(f"consistency.{k} must be a positive number or null, got {c[k]!r}")
    if c["guidance"] is not None:
        from ..guidance import check_scale
        check_scale(c["guidance"], "consistency.guidance")
        if c["mode"] != "cd":
            raise ValueError("consistency.guidance needs a teacher (CD): consistency training has none to guide")
    return c


register_section("consistency", ConsistencyConfig, check=check_consistency_section, optional=True,
                 excludes=("loss",))


def _levels(c: dict, denoiser) -> tuple[float, float, float]:
    """`(sigma_min, sigma_max, sigma_data)` of the consistency function: given ones, else the process's range
    clipped to EDM's [0.002, 80], and the model's `sigma_data`."""
    lo, hi = default_sigma_range(denoiser.process)
    lo = c["sigma_min"] if c["sigma_min"] is not None else lo
    hi = c["sigma_max"] if c["sigma_max"] is not None else min(80.0, hi)
    sd = c["sigma_data"] if c["sigma_data"] is not None else denoiser.sigma_data
    if not lo < hi:
        raise ValueError(f"need consistency.sigma_min < sigma_max, got {lo!r} and {hi!r}")
    return float(lo), float(hi), float(sd)


def build_consistency_run(cfg: dict):
    """`(task, data, None)` for a distill config: the training config's sections plus `consistency:`.
    CD: the student starts as a copy of the teacher (`cfg`'s data / process / model / net / latent sections are
    the teacher's, see `distill_config`); CT: a fresh network of `cfg`. With a `latent:` section the task runs on
    the autoencoder's latents (`unifusion.latent.build_latent_run`)."""
    from ..data.loader import example_shape
    from ..train.task import build_data

    if cfg.get("latent") is not None:
        from ..latent import build_latent_run
        return build_latent_run(cfg, build_consistency_task)
    data = build_data(cfg)
    return build_consistency_task(cfg, example_shape(data)), data, None


def build_consistency_task(cfg: dict, data_shape) -> "ConsistencyTask":
    """The `ConsistencyTask` of a distill config for data of shape `[N, *data_shape]`."""
    from ..train import load_model
    from ..train.task import build_denoiser


    c = check_consistency_section(cfg.get("consistency", {}))
    torch.manual_seed(cfg["seed"])
    if c["mode"] == "cd":
        teacher = load_model(c["teacher"])
        if tuple(teacher.data_shape) != tuple(data_shape):
            raise ValueError(f"teacher {c['teacher']} models data of shape {list(teacher.data_shape)}, but this run's "
                             f"data has shape {list(data_shape)}")
        student = copy.deepcopy(teacher).requires_grad_(True).train()
    else:
        teacher, student = None, build_denoiser(cfg, data_shape)
    if c["guidance"] is not None:
        from ..guidance import classifier_free, num_classes
        if not num_classes(teacher):
            raise ValueError("consistency.guidance needs a class-conditional teacher (trained with net.num_classes)")
        teacher = classifier_free(teacher, c["guidance"])
    label_dropout = 0.0
    for m in student.modules():     # labels are dropped once per example, in the task, for every model call alike
        if isinstance(m, NoiseEmbedding):
            label_dropout, m.label_dropout = max(label_dropout, m.label_dropout), 0.0
    lo, hi, sd = _levels(c, student)
    f = ConsistencyFunction(student, lo, hi, sd)
    distance = c["distance"] or ("l2" if teacher is not None else "pseudo_huber")
    task = ConsistencyTask(f, teacher, N=c["N"], mu=c["mu"], distance=distance, solver=c["solver"],
                           total_steps=cfg["train"]["steps"], rho=c["rho"], s0=c["s0"], s1=c["s1"],
                           p_mean=c["p_mean"], p_std=c["p_std"], label_dropout=label_dropout)
    return task


def load_consistency(path, weights: str = "ema", device="cpu"):
    """`(f, data_shape)`: the trained `ConsistencyFunction` of a `unifusion distill` checkpoint (a file or its run
    folder). `weights`: "ema" (the loop's first EMA decay; the raw weights if none), "raw", or "target" (CD's EMA
    target network). Raises `ValueError` for a checkpoint of another kind."""
    from ..train import CHECKPOINT_NAME, CheckpointError, read_checkpoint
    from ..train.config import DEFAULTS, merge
    from ..train.task import build_denoiser

    check_choice(weights, "weights", ("ema", "raw", "target"))
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    tensors, info = read_checkpoint(path)
    cfg = info.get("config", {})
    if info.get("modules") != [STUDENT] or "consistency" not in cfg or "data_shape" not in info:
        raise CheckpointError(f"{path} is not a `unifusion distill` checkpoint; sample diffusion models with "
                              f"another --sampler")
    base = merge(DEFAULTS, {k: v for k, v in cfg.items() if k != "consistency"})
    c = check_consistency_section(cfg["consistency"])
    prefix = {"ema": "ema0." if info.get("ema_decays") else "model.", "raw": "model.",
              "target": "task.target."}[weights]
    if weights == "target" and c["mode"] != "cd":
        raise ValueError("weights='target' exists only for consistency distillation (CT has no target network)")
    prefix = prefix if weights == "target" else prefix + STUDENT + "."
    try:
        denoiser = build_denoiser(base, info["data_shape"])
        denoiser.net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    except (RuntimeError, TypeError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} does not match its config: {str(e).splitlines()[0]}") from None
    f = ConsistencyFunction(denoiser, info["sigma_min"], info["sigma_max"], info["sigma_data"])
    f.config, f.checkpoint_step = cfg, int(info["step"])
    return f.to(device).eval().requires_grad_(False), tuple(info["data_shape"])


def distill_config(base: dict | None = None, teacher=None, sets=()) -> dict:
    """A checked distill config. CD (`teacher` a checkpoint): the teacher's seed and data / process / model / net /
    train sections (its training settings: lr, batch, ...); CT: those of `base` (a config dict from
    `unifusion.train.load_config`). Then `TRAIN_DEFAULTS` (steps, EMA, logging), then `sets` (`key=value` strings as
    in `unifusion train --set`, `consistency.*` keys included). There is no `loss` section: the loss is the
    consistency loss of `consistency.distance`."""
    from ..train.config import DEFAULTS, apply_overrides, check_config, merge, train_config
    from ..train.checkpoint import read_checkpoint
    from ..train import CHECKPOINT_NAME

    cfg = copy.deepcopy(base) if base is not None else copy.deepcopy(DEFAULTS)
    cons = dict(cfg.pop("consistency", {}) or {})
    if teacher is not None:
        path = Path(teacher)
        _, info = read_checkpoint(path / CHECKPOINT_NAME if path.is_dir() else path)
        tcfg = check_config(info.get("config", {}))
        for sec in ("seed", "data", "process", "model", "net", "train", "latent"):
            if sec in tcfg:
                cfg[sec] = copy.deepcopy(tcfg[sec])
            else:
                cfg.pop(sec, None)
        cons.update(mode="cd", teacher=str(teacher))
    else:
        cons.setdefault("mode", "ct")
    cfg.pop("loss", None)
    cfg["consistency"] = cons
    cfg["train"] = merge(cfg["train"], TRAIN_DEFAULTS)
    cfg["out"] = "runs/distill" if teacher is not None else "runs/ct"
    for item in sets or ():
        key = item.partition("=")[0].strip()
        if key.split(".")[0] == "loss":
            raise ValueError(f"--set {key} does not apply to distill: its loss is the consistency loss "
                             f"(consistency.distance)")
    cfg = apply_overrides(cfg, sets)
    train_config(cfg)
    return cfg


def distill_from_config(cfg: dict, resume: bool = False, out=None):
    """Build the run of a distill config and train it with `unifusion.train.fit` (same checkpoints, resume, EMA,
    progress and DDP as `unifusion train`, through `unifusion.train.task.run_config`); writes `config.yaml`,
    `log.jsonl`, `checkpoint.safetensors` under `out` (default `cfg['out']`). Returns `fit`'s `FitResult`."""
    from ..train.task import run_config

    def meta(task):
        f = task.f
        return {"sigma_min": f.sigma_min, "sigma_max": f.sigma_max, "sigma_data": f.sigma_data, "kind": "consistency"}

    return run_config(cfg, build_consistency_run, resume=resume, out=out, extra_meta=meta)
