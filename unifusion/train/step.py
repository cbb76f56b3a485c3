"""One optimiser step of a training task: the part of the loop that runs on the device.

Owns `TrainStep`: the optimiser (AdamW, Loshchilov & Hutter 2019; one fused kernel on a GPU), gradient
accumulation over micro-batches (DDP's `no_sync` on all but the last), bf16/fp16 autocast (fp16 through a
`GradScaler`), global gradient-norm clipping, the EMA update and the task's `after_step`, plus the options that
make a GPU step fast: channels-last memory, `torch.compile` of the task's modules, and no host-device
synchronisation inside a step. Randomness: micro-batch `k` of step `s` draws from a generator seeded by
`SeedSequence([seed, s, k])` (on the step's device), and the global RNG (dropout) is reseeded from it.

Non-finite losses: on the CPU a step checks its loss before applying it (`NonFiniteLoss`, nothing applied); on a
GPU that check would stall the device every step, so the step hands the fused optimiser a `found_inf` flag (the
update is skipped on the device, as `GradScaler` does) and records the first bad step, which the loop reads at its
next synchronisation point (`first_nonfinite`), before it logs or writes a checkpoint.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from .distributed import all_reduce_mean, peer_failures
from .ema import EMA

__all__ = ["TrainStep", "NonFiniteLoss", "micro_batch_seed", "autocast_dtype", "COMPILE_MODES"]

# torch.compile's modes; "reduce-overhead" also records CUDA graphs (replayed at every call of the same shape)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class NonFiniteLoss(ArithmeticError):
    """The loss of step `step` (1-based) was NaN or infinite."""

    def __init__(self, step: int, value: float):
        super().__init__(f"loss became {value} at step {step}")
        self.step, self.value = step, value


def micro_batch_seed(seed: int, step: int, k: int) -> tuple[int, int]:
    """Two 32-bit seeds (loss generator, global RNG) for micro-batch `k` of step `step`."""
    a, b = np.random.SeedSequence([seed, step, k]).generate_state(2)
    return int(a), int(b)


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `train.precision` on `device` (None: fp32, no autocast)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if name == "fp32":
        return None
    if device.type != "cuda":
        raise ValueError(f"train.precision={name!r} needs a GPU; on CPU use 'fp32' or 'auto'")
    return torch.bfloat16 if name == "bf16" else torch.float16


class _LossModule(nn.Module):
    """The task's loss as one module, so DDP sees every trainable parameter and syncs its gradient."""

    def __init__(self, task):
        super().__init__()
        self.mods = nn.ModuleDict(task.modules)
        object.__setattr__(self, "task", task)

    def forward(self, x, labels, generator):
        return self.task.loss((x, labels), generator)


class TrainStep:
    """`step(s, micro_batches) -> (loss, grad_norm)`: optimiser step `s` (0-based) over this process's micro-batches
    (a list of `(x, labels_or_None)` already on the device), returning device tensors (the loss averaged over every
    micro-batch of every process, the gradient norm before clipping).

    Args:
        task:  the training task (`modules`, `loss`, optional `after_step`, `to`).
        train: the `TrainConfig` (lr schedule, betas, weight decay, clipping, EMA, precision, compile, channels-last).
        dist:  this process's `DistInfo`.
        seed:  the run's seed.
    """

    def __init__(self, task, train, dist, seed: int):
        self.task, self.train, self.dist, self.seed = task, train, dist, seed
        dev = self.device = dist.device
        if hasattr(task, "to"):
            task.to(dev)
        else:
            for m in task.modules.values():
                m.to(dev)
        self.memory_format = torch.channels_last if getattr(train, "channels_last", False) else None
        if self.memory_format is not None:
            for m in task.modules.values():
                m.to(memory_format=self.memory_format)        # 4-D weights only; the rest is unchanged
        self.wrapper = _LossModule(task)
        self.params = [p for p in self.wrapper.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the task has no trainable parameters")
        self.model = self.wrapper
        if dist.world_size > 1:
            with peer_failures(dist.rank, train.dist_timeout):
                self.model = nn.parallel.DistributedDataParallel(self.wrapper,
                                                                 device_ids=[dev] if dev.type == "cuda" else None)
        self.fused = dev.type == "cuda"
        self.opt = torch.optim.AdamW(self.params, lr=train.lr, betas=tuple(train.betas),
                                     weight_decay=train.weight_decay, fused=self.fused or None)
        self.ema = EMA(task.modules, train.ema_decays, train.ema_warmup) if train.ema_decays else None
        self.dtype = autocast_dtype(train.precision, dev)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        if train.compile:
            mode = getattr(train, "compile_mode", "default")
            for m in task.modules.values():   # in place: parameters and state_dict keys stay those of the module
                m.compile(mode=None if mode == "default" else mode)
        self.lazy_check = dev.type == "cuda"
        self._first_bad = torch.full((), -1, dtype=torch.int64, device=dev)

    def generator(self, s: int, k: int) -> torch.Generator:
        """The loss generator of micro-batch `k` of step `s` (on the step's device: no host-to-device copies); also
        reseeds the global RNG (dropout)."""
        s_gen, s_global = micro_batch_seed(self.seed, s, k)
        torch.manual_seed(s_global)
        return torch.Generator(device=self.device).manual_seed(s_gen)

    def __call__(self, s: int, micro_batches) -> tuple[torch.Tensor, torch.Tensor]:
        train, opt = self.train, self.opt
        for g in opt.param_groups:
            g["lr"] = train.lr_at(s)
        opt.zero_grad(set_to_none=True)
        accum = len(micro_batches)
        loss_sum = torch.zeros((), device=self.device)
        for a, (x, labels) in enumerate(micro_batches):
            if self.memory_format is not None and x.ndim == 4:
                x = x.contiguous(memory_format=self.memory_format)
            gen = self.generator(s, self.dist.rank * accum + a)
            last = a == accum - 1
            sync = self.model.no_sync() if (self.model is not self.wrapper and not last) else nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                    per_example = self.model(x, labels, gen)
                loss = per_example.float().mean() / accum
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += loss.detach()
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        gnorm = nn.utils.clip_grad_norm_(self.params, train.grad_clip if train.grad_clip > 0 else math.inf)
        loss_mean = all_reduce_mean(loss_sum)
        finite = torch.isfinite(loss_mean)
        if not self.lazy_check and not bool(finite):
            raise NonFiniteLoss(s + 1, float(loss_mean))
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            if self.fused:
                opt.found_inf = (~finite).float()          # the fused kernel skips the update on the device
            opt.step()
        if self.lazy_check:
            self._first_bad = torch.where(~finite & (self._first_bad < 0), s + 1, self._first_bad)
        if self.ema is not None:
            self.ema.update(s)
        if hasattr(self.task, "after_step"):
            self.task.after_step(s)
        return loss_mean, gnorm

    def first_nonfinite(self) -> int | None:
        """The first step (1-based) whose loss was not finite, or None (a synchronisation point on a GPU)."""
        bad = int(self._first_bad)
        return bad if bad >= 0 else None

    def train_mode(self) -> None:
        self.wrapper.train()
