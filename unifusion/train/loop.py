"""The training loop every model in unifusion trains with: one `fit(task, data, ...)`.

Owns the mechanics, not the objective. A *task* supplies the trainable modules and a per-example loss;
`fit` supplies AdamW (Loshchilov & Hutter 2019) with linear warm-up, global gradient-norm clipping, EMA
(one or several decays, `ema.EMA`), bf16/fp16 autocast on GPU, torchrun DDP, deterministic randomness, a
tqdm bar, JSONL logs, atomic checkpoints and bit-exact resume, and a stop on a non-finite loss.

A task is any object with
    modules: dict[str, nn.Module]                 the trainable modules (what the optimiser, EMA and DDP see)
    loss(batch, generator) -> Tensor [B]          per-example loss; `batch = (x, labels_or_None)`
and optionally
    after_step(step) -> None                      called after each optimiser step (e.g. a target network's EMA)
    state_tensors() -> dict[str, Tensor]          extra state to checkpoint (e.g. that target network)
    load_state_tensors(dict[str, Tensor]) -> None
    to(device) -> task                            move non-trainable parts too (default: move `modules`)

Randomness is a pure function of `(seed, step, micro-batch index)`: the data order is an epoch-wise permutation
drawn from `(seed, epoch)`, and micro-batch `k` of step `s` gets a `torch.Generator` (and a reseeded global RNG,
for dropout) from `numpy.random.SeedSequence([seed, s, k])`. Hence resuming needs no RNG snapshot and continues
bit-exactly on CPU, and a run is reproduced by any run with the same global batch and the same number of
micro-batches per step (`world_size * grad_accum`): one process with `grad_accum=2` matches two DDP processes.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from ..utils import atomic_write, check_choice, check_positive_int, remove_stale_temps
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .distributed import (DistInfo, DistributedFailure, all_reduce_mean, barrier, init_distributed, peer_failures,
                          raise_peer_failure)
from .ema import EMA
from .logs import JsonlLogger

__all__ = ["TrainConfig", "FitResult", "TrainingDiverged", "DistributedFailure", "fit", "write_checkpoint",
           "micro_batch_seed", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.safetensors"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class TrainConfig:
    """Options of `fit` (the `train:` section of a config file).

    Attributes:
        steps:        optimiser steps in total; a resumed run continues up to this.
        batch_size:   global batch per step, over all processes and accumulation.
        grad_accum:   micro-batches per process per step (1: none).
        lr:           AdamW learning rate after warm-up.
        weight_decay: AdamW decoupled weight decay (0: none).
        betas:        AdamW betas.
        warmup:       linear learning-rate warm-up steps (0: none).
        decay_start:  step where a linear decay of the lr to 0 begins (0: constant lr).
        decay_end:    step where that decay reaches 0 (warm-up, stable, decay: "WSD").
        grad_clip:    max global gradient norm (0: no clipping).
        ema_decays:   one weight average per decay (empty: no EMA).
        ema_warmup:   decay min(d, (1+n)/(10+n)) at update n.
        precision:    "auto" (bf16 on GPU, fp32 on CPU), "fp32", "bf16", "fp16" (GPU only).
        device:       "auto", "cpu" or "cuda" (torchrun picks the GPU by LOCAL_RANK).
        log_every:    steps between log lines (0: none).
        ckpt_every:   steps between checkpoints (0: only at the end).
        progress:     tqdm bar on the main process.
        tensorboard:  also write TensorBoard scalars (the `[tensorboard]` extra).
        threads:      torch CPU threads, applied by the CLI (`fit` leaves them alone; 0: torch's default; 1 is
                      fastest for small nets).
        dist_timeout: DDP: seconds a process waits for the others before it stops with an error.
        compile:      torch.compile the trainable modules (GPU: faster steps after a slow first).
    """

    steps: int = 1000
    batch_size: int = 256
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    warmup: int = 0
    decay_start: int = 0
    decay_end: int = 0
    grad_clip: float = 1.0
    ema_decays: tuple = (0.999,)
    ema_warmup: bool = True
    precision: str = "auto"
    device: str = "auto"
    log_every: int = 100
    ckpt_every: int = 0
    progress: bool = True
    tensorboard: bool = False
    threads: int = 0
    dist_timeout: float = 600.0
    compile: bool = False

    def validate(self) -> "TrainConfig":
        for name in ("steps", "batch_size", "grad_accum"):
            check_positive_int(getattr(self, name), f"train.{name}")
        for name in ("warmup", "log_every", "ckpt_every", "threads", "decay_start", "decay_end"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"train.{name} must be an integer >= 0, got {v!r}")
        if not (_number(self.dist_timeout) and 0 < self.dist_timeout < math.inf):
            raise ValueError(f"train.dist_timeout must be a number of seconds > 0, got {self.dist_timeout!r}")
        if not (_number(self.lr) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"train.lr must be > 0, got {self.lr!r}")
        if not (_number(self.weight_decay) and _number(self.grad_clip) and self.weight_decay >= 0
                and self.grad_clip >= 0):
            raise ValueError(f"train.weight_decay and train.grad_clip must be >= 0, got "
                             f"{self.weight_decay!r} and {self.grad_clip!r}")
        if len(self.betas) != 2 or not all(_number(b) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {list(self.betas)!r}")
        if not all(_number(d) and 0 < d < 1 for d in self.ema_decays):
            raise ValueError(f"train.ema_decays must be numbers in (0, 1), got {list(self.ema_decays)!r}")
        if (self.decay_start or self.decay_end) and not self.decay_start < self.decay_end:
            raise ValueError(f"train.decay_start must be < train.decay_end (or both 0), got {self.decay_start} "
                             f"and {self.decay_end}")
        check_choice(self.precision, "train.precision", ("auto", "fp32", "bf16", "fp16"))
        check_choice(self.device, "train.device", ("auto", "cpu", "cuda"))
        return self

    def lr_at(self, s: int) -> float:
        """The learning rate of step `s` (0-based): linear warm-up, constant, then an optional linear decay to 0
        between `decay_start` and `decay_end` (the warm-up-stable-decay schedule; a run can be extended by a
        decay resumed from a stable-phase checkpoint)."""
        lr = self.lr * min(1.0, (s + 1) / self.warmup) if self.warmup else self.lr
        if self.decay_end and s >= self.decay_start:
            lr *= max(0.0, (self.decay_end - s) / (self.decay_end - self.decay_start))
        return lr


@dataclass
class FitResult:
    """What `fit` leaves behind."""
    step: int                               # optimiser steps done in total
    loss: float                             # mean loss of the last logging window
    checkpoint: Path | None                 # the last checkpoint written (None without `out`)
    ema: EMA | None                         # the weight averages
    history: list = field(default_factory=list)  # the log records of this call


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the weights of that step were not applied."""


def micro_batch_seed(seed: int, step: int, k: int) -> tuple[int, int]:
    """Two 32-bit seeds (loss generator, global RNG) for micro-batch `k` of step `step`."""
    a, b = np.random.SeedSequence([seed, step, k]).generate_state(2)
    return int(a), int(b)


class _Order:
    """Global batch indices of step `s`: positions `[s B, (s+1) B)` of a stream of epoch-wise permutations."""

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch, self.seed = n, batch, seed
        self.perm = lru_cache(maxsize=4)(self._perm)

    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch, 0xDA7A]).generate_state(1)[0]))
        return torch.randperm(self.n, generator=g)

    def __call__(self, s: int) -> torch.Tensor:
        pos, end, out = s * self.batch, (s + 1) * self.batch, []
        while pos < end:
            e, off = divmod(pos, self.n)
            take = min(self.n - off, end - pos)
            out.append(self.perm(e)[off:off + take])
            pos += take
        return torch.cat(out)


class _LossModule(nn.Module):
    """The task's loss as one module, so DDP sees every trainable parameter and syncs its gradient."""

    def __init__(self, task):
        super().__init__()
        self.mods = nn.ModuleDict(task.modules)
        object.__setattr__(self, "task", task)

    def forward(self, x, labels, generator):
        return self.task.loss((x, labels), generator)


def _precision(name: str, device: torch.device) -> torch.dtype | None:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if name == "fp32":
        return None
    if device.type != "cuda":
        raise ValueError(f"train.precision={name!r} needs a GPU; on CPU use 'fp32' or 'auto'")
    return torch.bfloat16 if name == "bf16" else torch.float16


_RESUMABLE = {"train.steps", "train.log_every", "train.ckpt_every", "train.progress", "train.device",
              "train.tensorboard", "train.threads", "train.compile", "train.dist_timeout", "out"}
_SCHEDULE = {"train.decay_start", "train.decay_end"}   # resumable while the steps already taken keep their lr


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _schedule(train: dict) -> TrainConfig:
    """The learning-rate schedule of a stored `train` section (keys a checkpoint lacks take their defaults)."""
    keys = ("lr", "warmup", "decay_start", "decay_end")
    return TrainConfig(**{k: train[k] for k in keys if k in train})


def config_difference(a: dict, b: dict, ignore=_RESUMABLE) -> list[str]:
    """Keys whose values differ between two (nested) configs, except those a resumed run may change."""
    fa, fb = _flat(a), _flat(b)
    return sorted(k for k in set(fa) | set(fb) if k not in ignore and fa.get(k) != fb.get(k))


def fit(task, data: torch.Tensor, labels: torch.Tensor | None = None, *, train: TrainConfig | None = None,
        seed: int = 0, out=None, config: dict | None = None, meta: dict | None = None,
        resume: bool = False, dist: DistInfo | None = None) -> FitResult:
    """Train `task` on `data` (`[N, ...]`, optional `labels` `[N]`) for `train.steps` optimiser steps.

    Args:
        train:  the loop's options (`TrainConfig()` if None).
        seed:   the one seed every random draw derives from (see the module docstring).
        out:    run folder for `checkpoint.safetensors`, `log.jsonl` and `config.yaml` (None: write nothing). Nothing
                is written there before every check (the resume check included) has passed.
        config: the full run configuration stored in checkpoints and `config.yaml` (what `load_model` rebuilds the
                model from).
        meta:   extra JSON stored in checkpoints (e.g. the data shape).
        resume: continue from `out/checkpoint.safetensors` if it exists (its config must match `config`, except
                `train.steps` and logging options; checked before anything else is done).
        dist:   process info (default: `init_distributed(train.device, train.dist_timeout)`, i.e. torchrun's
                environment).

    Raises `TrainingDiverged` (a `ValueError`) on a non-finite loss, naming the step and the last good checkpoint,
    and `DistributedFailure` (a `ValueError`) when another process fails or does not answer within
    `train.dist_timeout` seconds. Leaves torch's thread count alone (the CLI applies `train.threads`).
    """
    train = (train or TrainConfig()).validate()
    dist = dist or init_distributed(train.device, train.dist_timeout)
    dev, main = dist.device, dist.is_main
    n_micro = dist.world_size * train.grad_accum
    if train.batch_size % n_micro:
        raise ValueError(f"train.batch_size={train.batch_size} must be divisible by world_size x grad_accum = "
                         f"{n_micro}")
    if not isinstance(data, torch.Tensor) or data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"data must be a tensor of shape [N, ...] with N >= 1, got "
                         f"{getattr(data, 'shape', type(data))}")
    if not torch.isfinite(data).all():
        raise ValueError("data contains NaN or Inf; finite values are required")
    if labels is not None and labels.shape[:1] != data.shape[:1]:
        raise ValueError(f"labels must have shape [{data.shape[0]}], got {tuple(labels.shape)}")
    micro = train.batch_size // n_micro
    autocast_dtype = _precision(train.precision, dev)
    config = config if config is not None else {"train": _plain(asdict(train)), "seed": seed}
    out = Path(out) if out is not None else None
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    state = _read_resumable(ckpt_path, config, n_micro) if resume and ckpt_path is not None else None

    if hasattr(task, "to"):
        task.to(dev)
    else:
        for m in task.modules.values():
            m.to(dev)
    wrapper = _LossModule(task)
    params = [p for p in wrapper.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the task has no trainable parameters")
    model = wrapper
    if dist.world_size > 1:
        with peer_failures(dist.rank, train.dist_timeout):
            model = torch.nn.parallel.DistributedDataParallel(wrapper, device_ids=[dev] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(params, lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay,
                            fused=dev.type == "cuda" or None)  # one kernel for all parameters on a GPU
    ema = EMA(task.modules, train.ema_decays, train.ema_warmup) if train.ema_decays else None
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None

    if train.compile:
        for m in task.modules.values():
            m.compile()                      # in place: parameters and state_dict keys stay those of the module
    start = _restore(ckpt_path, state, task, opt, ema, scaler) if state is not None else 0
    logger = _open_run_folder(out if main else None, config, start if resume else None, train.tensorboard)
    order = _Order(data.shape[0], train.batch_size, seed)
    last_good = (ckpt_path, start) if start else (None, 0)
    info = dict(meta or {}, seed=seed, config=config, micro_batches=n_micro, world_size=dist.world_size,
                ema_decays=list(train.ema_decays), modules=sorted(task.modules))

    bar = None
    if main and train.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=train.steps, initial=start, unit="step", dynamic_ncols=True)
    history, window, t_window, result_loss = [], [], time.perf_counter(), float("nan")
    wrapper.train()
    try:
        for s in range(start, train.steps):
            lr = train.lr_at(s)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = order(s)
            opt.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=dev)
            for a in range(train.grad_accum):
                k = dist.rank * train.grad_accum + a
                sel = idx[k * micro:(k + 1) * micro]
                x = data[sel].to(dev, non_blocking=True)
                y = labels[sel].to(dev, non_blocking=True) if labels is not None else None
                s_gen, s_global = micro_batch_seed(seed, s, k)
                torch.manual_seed(s_global)
                gen = torch.Generator().manual_seed(s_gen)      # on the CPU: same draws on any device
                sync = model.no_sync() if (model is not wrapper and a < train.grad_accum - 1) else nullcontext()
                with sync:
                    with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                        per_example = model(x, y, gen)
                    loss = per_example.float().mean() / train.grad_accum
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                loss_sum += loss.detach()
            if scaler is not None:
                scaler.unscale_(opt)
            gnorm = torch.nn.utils.clip_grad_norm_(params, train.grad_clip if train.grad_clip > 0 else math.inf)
            loss_val = float(all_reduce_mean(loss_sum))
            if not math.isfinite(loss_val):
                where = (f"last good checkpoint: {last_good[0]} (step {last_good[1]})" if last_good[0] is not None
                         else "no checkpoint was written yet")
                logger.log({"step": s + 1, "event": "diverged", "loss": str(loss_val)})
                raise TrainingDiverged(f"loss became {loss_val} at step {s + 1}; stopped without applying it; {where}")
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if ema is not None:
                ema.update(s)
            if hasattr(task, "after_step"):
                task.after_step(s)
            step = s + 1
            window.append(loss_val)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_val:.4g}", refresh=False)
            if (train.log_every and step % train.log_every == 0) or step == train.steps:
                now = time.perf_counter()
                result_loss = float(np.mean(window))
                rec = {"step": step, "loss": result_loss, "lr": lr, "grad_norm": float(gnorm),
                       "steps_per_s": len(window) / max(now - t_window, 1e-9),
                       "examples_per_s": len(window) * train.batch_size / max(now - t_window, 1e-9)}
                history.append(rec)
                logger.log(rec)
                window, t_window = [], now
            if ckpt_path is not None and ((train.ckpt_every and step % train.ckpt_every == 0) or step == train.steps):
                if main:
                    write_checkpoint(ckpt_path, task, opt, ema, scaler, dict(info, step=step))
                barrier()
                last_good = (ckpt_path, step)
    except RuntimeError as e:
        raise_peer_failure(e, dist.rank, train.dist_timeout)
        raise
    finally:
        if bar is not None:
            bar.close()
        logger.close()
    done = max(start, train.steps)
    return FitResult(done, result_loss, last_good[0], ema, history)


def _plain(d: dict) -> dict:
    """`d` with tuples as lists (what JSON and YAML files hold)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _open_run_folder(out: Path | None, config: dict, resume_step: int | None, tensorboard: bool) -> JsonlLogger:
    """Prepare the run folder once every check has passed: remove the temporary files a crash left, write
    `config.yaml` (atomically) and open the log (cut back to `resume_step`, or started empty). `None`: no folder."""
    if out is None:
        return JsonlLogger(None)
    for name in (CHECKPOINT_NAME, "config.yaml", "log.jsonl"):
        remove_stale_temps(out / name)
    logger = JsonlLogger(out / "log.jsonl", resume_step=resume_step, tensorboard=tensorboard)
    atomic_write(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return logger


def write_checkpoint(path: Path, task, opt, ema, scaler, info: dict) -> Path:
    """Save every tensor of the run (modules, EMA, optimiser state, the task's state) and `info` plus the optimiser's
    hyper-parameters, scaler state and RNG scheme to `path` (`save_checkpoint`: atomic, checksummed)."""
    tensors = {f"model.{name}.{k}": v for name, m in task.modules.items() for k, v in m.state_dict().items()}
    if ema is not None:
        tensors.update(ema.state_tensors())
    osd = opt.state_dict()
    tensors.update({f"optim.{pid}.{k}": v for pid, st in osd["state"].items() for k, v in st.items()})
    if hasattr(task, "state_tensors"):
        tensors.update({f"task.{k}": v for k, v in task.state_tensors().items()})
    info = dict(info, param_groups=[_plain(g) for g in osd["param_groups"]],
                scaler=scaler.state_dict() if scaler is not None else None,
                rng={"seed": info["seed"], "next_step": info["step"],
                     "scheme": "SeedSequence([seed, step, micro_batch]); data order SeedSequence([seed, epoch])"})
    return save_checkpoint(path, tensors, info)


def _check_resumable(path: Path, info: dict, config: dict, n_micro: int) -> None:
    """Raise `CheckpointError` unless the checkpoint's `info` can be continued by a run of `config` with `n_micro`
    micro-batches per step (bit-exactly: the same config up to `_RESUMABLE`, the same lr at the steps taken)."""
    diff = config_difference(info.get("config", {}), config, _RESUMABLE | _SCHEDULE)
    if diff:
        raise CheckpointError(f"checkpoint {path} comes from another config (differs in: {', '.join(diff[:8])}); "
                              f"use another `out` folder or the same config")
    old_train, new_train = info.get("config", {}).get("train"), config.get("train")
    old_lr = _schedule(old_train) if isinstance(old_train, dict) else None
    new_lr = _schedule(new_train) if isinstance(new_train, dict) else None
    if old_lr is not None and new_lr is not None and old_lr != new_lr:   # a decay added or moved: check the past
        changed = next((s for s in range(int(info["step"])) if old_lr.lr_at(s) != new_lr.lr_at(s)), None)
        if changed is not None:
            raise CheckpointError(f"checkpoint {path}: train.decay_start/decay_end change the learning rate of step "
                                  f"{changed + 1}, which it already took; a decay may only start at or after step "
                                  f"{info['step']}")
    if info.get("micro_batches") != n_micro:
        raise CheckpointError(f"checkpoint {path} was trained with {info.get('micro_batches')} micro-batches per step "
                              f"(world_size x grad_accum), this run has {n_micro}; bit-exact resume needs the same")


def _read_resumable(path: Path, config: dict, n_micro: int) -> tuple[dict, dict] | None:
    """`(tensors, info)` of the checkpoint at `path` once `_check_resumable` passed; None if there is none."""
    if not path.exists():
        return None
    tensors, info = read_checkpoint(path)
    _check_resumable(path, info, config, n_micro)
    return tensors, info


def _restore(path: Path, state: tuple[dict, dict], task, opt, ema, scaler) -> int:
    """Restore modules, EMA, optimiser, scaler and task state from a checkpoint's `(tensors, info)`; return the
    step to continue from."""
    tensors, info = state
    try:
        for name, m in task.modules.items():
            pre = f"model.{name}."
            m.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})
        if ema is not None:
            ema.load_state_tensors(tensors)
        state = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        groups = info["param_groups"]
        for g in groups:
            g["betas"] = tuple(g["betas"])
        opt.load_state_dict({"state": state, "param_groups": groups})
        if scaler is not None and info.get("scaler"):
            scaler.load_state_dict(info["scaler"])
        if hasattr(task, "load_state_tensors"):
            task.load_state_tensors({k[5:]: v for k, v in tensors.items() if k.startswith("task.")})
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {str(e).splitlines()[0]}") from None
    return int(info["step"])
