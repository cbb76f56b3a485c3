"""The training loop every model in unifusion trains with: one `fit(task, data, ...)`, put together from parts.

Owns the order of a run, not its pieces: the data (`unifusion.data.loader.StepLoader`: a deterministic order over
any `Dataset`, per-rank micro-batches, worker processes, uint8 until the device), the optimiser step
(`step.TrainStep`: AdamW with warm-up, clipping, EMA, autocast, DDP, compile, channels-last), the schedule
(`schedule`: learning rate, every-N-steps events), the checkpoint writer (`state`: atomic checkpoints, bit-exact
resume) and the callbacks (`callbacks`: the JSONL/TensorBoard log, sample previews, evaluations, or a user's own).

A task is any object with
    modules: dict[str, nn.Module]                 the trainable modules (what the optimiser, EMA and DDP see)
    loss(batch, generator) -> Tensor [B]          per-example loss; `batch = (x, labels_or_None)`
and optionally
    after_step(step) -> None                      called after each optimiser step (e.g. a target network's EMA)
    state_tensors() -> dict[str, Tensor]          extra state to checkpoint (e.g. that target network)
    load_state_tensors(dict[str, Tensor]) -> None
    to(device) -> task                            move non-trainable parts too (default: move `modules`)

Randomness is a pure function of `(seed, step, micro-batch index)`: the data order is an epoch-wise permutation
drawn from `(seed, epoch)`, the x-flips of a step from `(seed, step)`, and micro-batch `k` of step `s` gets a
`torch.Generator` (and a reseeded global RNG, for dropout) from `numpy.random.SeedSequence([seed, s, k])`. Hence
resuming needs no RNG snapshot and continues bit-exactly on CPU (the checkpoint's data position is its step), and
a run is reproduced by any run with the same global batch and the same number of micro-batches per step
(`world_size * grad_accum`): one process with `grad_accum=2` matches two DDP processes.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data.loader import (LoaderError, LoaderOptions, StepLoader, check_loader_options, example_shape, flip_mask,
                           is_worker_death, loader_failure, to_device)
from ..schema import plain, register_section
from ..utils import atomic_write, check_choice, check_positive_int, remove_stale_temps
from .callbacks import JsonlLog, ProgressBar, Run
from .distributed import DistInfo, DistributedFailure, barrier, init_distributed, raise_peer_failure
from .ema import EMA
from .logs import JsonlLogger
from .schedule import due, lr_at
from .state import read_resumable, restore_state, write_state
from .step import COMPILE_MODES, NonFiniteLoss, TrainStep, micro_batch_seed

__all__ = ["TrainConfig", "FitResult", "TrainingDiverged", "DistributedFailure", "fit", "micro_batch_seed",
           "CHECKPOINT_NAME", "as_dataset"]

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
        compile_mode: torch.compile's mode: "default", "reduce-overhead" (CUDA graphs), "max-autotune",
                      "max-autotune-no-cudagraphs".
        channels_last: image networks and batches in channels-last memory (faster convolutions on a GPU).
        preview_every: steps between PNG grids of EMA samples in `out/previews/` (0: none; `train_from_config`).
        preview_n:    samples per preview.
        eval_every:   steps between evaluations, logged (0: none; `train_from_config`: sliced Wasserstein
                      distance between `eval_n` EMA samples and as many training examples).
        eval_n:       samples per evaluation.
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
    compile_mode: str = "default"
    channels_last: bool = False
    preview_every: int = 0
    preview_n: int = 64
    eval_every: int = 0
    eval_n: int = 500

    def validate(self) -> "TrainConfig":
        for name in ("steps", "batch_size", "grad_accum", "preview_n", "eval_n"):
            check_positive_int(getattr(self, name), f"train.{name}")
        for name in ("warmup", "log_every", "ckpt_every", "threads", "decay_start", "decay_end", "preview_every",
                     "eval_every"):
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
        check_choice(self.compile_mode, "train.compile_mode", COMPILE_MODES)
        return self

    def lr_at(self, s: int) -> float:
        """The learning rate of step `s` (0-based): `schedule.lr_at` of this section's `lr`, `warmup`, `decay_start`,
        `decay_end`."""
        return lr_at(s, self.lr, self.warmup, self.decay_start, self.decay_end)


def _check_train(section: dict) -> None:
    TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}).validate()


register_section("train", TrainConfig, check=_check_train)


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


def as_dataset(data, labels=None) -> torch.utils.data.Dataset:
    """`data` as a `Dataset`: a tensor `[N, ...]` (with optional `labels` `[N]`) becomes an `ArrayDataset` (checked
    finite); a `Dataset` is used as it is."""
    from ..data import ArrayDataset

    if isinstance(data, torch.utils.data.Dataset):
        if labels is not None:
            raise ValueError("labels go with a tensor; a Dataset yields its own (x, label) examples")
        return data
    if not isinstance(data, torch.Tensor) or data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"data must be a Dataset or a tensor of shape [N, ...] with N >= 1, got "
                         f"{getattr(data, 'shape', type(data))}")
    if data.is_floating_point() and not torch.isfinite(data).all():
        raise ValueError("data contains NaN or Inf; finite values are required")
    return ArrayDataset(data, labels)


class _Window:
    """The log window: losses summed on the device (read once per log line), steps and time."""

    def __init__(self, device):
        self.device, self.t0 = device, time.perf_counter()
        self.loss, self.n = torch.zeros((), device=device), 0

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss
        self.n += 1

    def record(self, step: int, lr: float, grad_norm: torch.Tensor, batch: int, skipped: int) -> dict:
        """The log record of the window that ends after `step` (reading the device's sums), then a new window."""
        now = time.perf_counter()
        secs, n = max(now - self.t0, 1e-9), self.n
        rec = {"step": step, "loss": float(self.loss) / max(n, 1), "lr": lr, "grad_norm": float(grad_norm),
               "steps_per_s": n / secs, "examples_per_s": n * batch / secs}
        if skipped:
            rec["skipped_examples"] = skipped
        self.loss, self.n, self.t0 = torch.zeros((), device=self.device), 0, now
        return rec


def _on_device(batches, train, dist, seed: int, x_flip: bool, memory_format):
    """`(step, micro_batches, skipped)` per optimiser step: this process's micro-batches of the step as
    `(x, labels)` on the device (x-flipped by the step's coins for their positions in the global batch), and the
    unreadable examples replaced so far."""
    micro = train.batch_size // (dist.world_size * train.grad_accum)
    layout = memory_format or torch.contiguous_format
    pending, skipped = [], 0
    for s, a, x, y, k in batches:
        kk = dist.rank * train.grad_accum + a
        flip = flip_mask(seed, s, train.batch_size)[kk * micro:(kk + 1) * micro] if x_flip else None
        pending.append(to_device(x, y, dist.device, flip, memory_format=layout))
        skipped += k
        if a == train.grad_accum - 1:
            yield s, pending, skipped
            pending = []


def fit(task, data, labels: torch.Tensor | None = None, *, train: TrainConfig | None = None, seed: int = 0,
        out=None, config: dict | None = None, meta: dict | None = None, resume: bool = False,
        dist: DistInfo | None = None, loader: LoaderOptions | None = None, callbacks=()) -> FitResult:
    """Train `task` on `data` for `train.steps` optimiser steps.

    Args:
        data:      a `torch.utils.data.Dataset` (map-style or iterable; examples `x` or `(x, label)`, images as uint8
                   `[C, H, W]`), or a tensor `[N, ...]` with optional `labels` `[N]`.
        train:     the loop's options (`TrainConfig()` if None).
        seed:      the one seed every random draw derives from (see the module docstring).
        out:       run folder for `checkpoint.safetensors`, `log.jsonl` and `config.yaml` (None: write nothing). Nothing
                   is written there before every check (the resume check included) has passed.
        config:    the full run configuration stored in checkpoints and `config.yaml` (what `load_model` rebuilds
                   the model from).
        meta:      extra JSON stored in checkpoints (e.g. the data shape).
        resume:    continue from `out/checkpoint.safetensors` if it exists (its config must match `config`, except
                   `train.steps`, logging and loader options).
        dist:      process info (default: `init_distributed(train.device, train.dist_timeout)`, i.e. torchrun's
                   environment).
        loader:    worker processes, prefetch and x-flip (`LoaderOptions()` if None).
        callbacks: `callbacks.Callback`s called at every step, log line and checkpoint (the JSONL log is built in).

    Raises `TrainingDiverged` (a `ValueError`) on a non-finite loss, naming the step and the last good checkpoint,
    `LoaderError` (a `ValueError`) when the data cannot be read (a dead worker, an unreadable file), naming the
    last checkpoint, and `DistributedFailure` (a `ValueError`) when another process fails or does not answer within
    `train.dist_timeout` seconds. Leaves torch's thread count alone (the CLI applies `train.threads`).
    """
    train = (train or TrainConfig()).validate()
    opts = loader or LoaderOptions()
    check_loader_options(opts.num_workers, opts.prefetch)
    dist = dist or init_distributed(train.device, train.dist_timeout)
    n_micro = dist.world_size * train.grad_accum
    if train.batch_size % n_micro:
        raise ValueError(f"train.batch_size={train.batch_size} must be divisible by world_size x grad_accum = "
                         f"{n_micro}")
    dataset = as_dataset(data, labels)
    shape = example_shape(dataset)
    if opts.x_flip and len(shape) != 3:
        raise ValueError(f"data.x_flip needs images [C, H, W], got examples of shape {list(shape)}")
    iterable = isinstance(dataset, torch.utils.data.IterableDataset)
    config = config if config is not None else {"train": plain(asdict(train)), "seed": seed}
    out = Path(out) if out is not None else None
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    state = read_resumable(ckpt_path, config, n_micro, None if iterable else len(dataset)) \
        if resume and ckpt_path is not None else None

    step = TrainStep(task, train, dist, seed)
    start = restore_state(ckpt_path, state, step) if state is not None else 0
    logs = [JsonlLog(_open_run_folder(out, config, start if resume else None, train.tensorboard))] \
        if (out is not None and dist.is_main) else []
    bar = [ProgressBar()] if train.progress else []
    run = Run(task, train, seed, dist, out, config, step.ema, shape, start, logs + bar + list(callbacks))
    batches = StepLoader(dataset, batch_size=train.batch_size, grad_accum=train.grad_accum, rank=dist.rank,
                         world_size=dist.world_size, seed=seed, start=start, stop=train.steps,
                         num_workers=opts.num_workers, prefetch=opts.prefetch, pin_memory=dist.device.type == "cuda")
    info = dict(meta or {}, seed=seed, config=config, micro_batches=n_micro, world_size=dist.world_size,
                ema_decays=list(train.ema_decays), modules=sorted(task.modules))
    ckpts = _Checkpoints(ckpt_path, start, step, info, batches, opts.x_flip)
    history, window = [], _Window(dist.device)
    step.train_mode()
    with _reported_failures(run, ckpts):
        for cb in run.callbacks:
            cb.on_start(run)
        left_out = getattr(dataset, "skipped", None)
        if left_out:                               # unreadable files a reader left out when it opened the data
            run.log({"step": start, "event": "unreadable_skipped", "count": len(left_out), "first": str(left_out[0])})
        for s, micro_batches, skipped in _on_device(batches, train, dist, seed, opts.x_flip, step.memory_format):
            loss, gnorm = step(s, micro_batches)
            window.add(loss)
            run.step = s + 1
            log_now = due(run.step, train.log_every, train.steps)
            ckpt_now = ckpt_path is not None and due(run.step, train.ckpt_every, train.steps)
            if (log_now or ckpt_now) and (bad := step.first_nonfinite()) is not None:
                raise NonFiniteLoss(bad, "NaN or Inf")           # the GPU's deferred check, before anything is kept
            if log_now:
                history.append(window.record(run.step, train.lr_at(s), gnorm, train.batch_size, skipped))
                run.log(history[-1])
            for cb in run.callbacks:
                cb.on_step(run)
            if ckpt_now:
                ckpts.write(run)
    loss = history[-1]["loss"] if history else float("nan")
    return FitResult(max(start, train.steps), loss, ckpts.last[0], step.ema, history)


class _Checkpoints:
    """The run's checkpoints: writes one (main process) and tells the others (a barrier, then `on_checkpoint`),
    and names the last good one for error messages."""

    def __init__(self, path: Path | None, start: int, step: TrainStep, info: dict, batches: StepLoader,
                 x_flip: bool):
        self.path, self.step, self.info, self.batches, self.x_flip = path, step, info, batches, x_flip
        self.last = (path, start) if start else (None, 0)

    def where(self) -> str:
        return (f"last checkpoint: {self.last[0]} (step {self.last[1]})" if self.last[0] is not None
                else "no checkpoint was written yet")

    def write(self, run: Run) -> None:
        if run.is_main:
            data = dict(self.batches.position(run.step), x_flip=self.x_flip)
            write_state(self.path, self.step, dict(self.info, step=run.step, data=data))
        barrier()
        self.last = (self.path, run.step)
        for cb in run.callbacks:
            cb.on_checkpoint(run, self.path)


@contextmanager
def _reported_failures(run: Run, ckpts: _Checkpoints):
    """The errors of a running loop as `fit` documents them (each naming the last checkpoint); the callbacks'
    `on_end` in every case."""
    try:
        yield
    except NonFiniteLoss as e:
        run.log({"step": e.step, "event": "diverged", "loss": str(e.value)})
        raise TrainingDiverged(f"loss became {e.value} at step {e.step}; stopped without applying it; "
                               f"{ckpts.where()}") from None
    except LoaderError as e:
        raise LoaderError(f"{e}; {ckpts.where()}") from e
    except RuntimeError as e:
        if is_worker_death(e):                              # torch's SIGCHLD handler, raised wherever we were
            raise LoaderError(f"{loader_failure(e, run.step + 1)}; {ckpts.where()}") from e
        raise_peer_failure(e, run.dist.rank, run.train.dist_timeout)
        raise
    finally:
        for cb in run.callbacks:
            cb.on_end(run)


def _open_run_folder(out: Path, config: dict, resume_step: int | None, tensorboard: bool) -> JsonlLogger:
    """Prepare the run folder once every check has passed: remove the temporary files a crash left, write
    `config.yaml` (atomically) and open the log (cut back to `resume_step`, or started empty)."""
    from .config import dump_config

    for name in (CHECKPOINT_NAME, "config.yaml", "log.jsonl"):
        remove_stale_temps(out / name)
    logger = JsonlLogger(out / "log.jsonl", resume_step=resume_step, tensorboard=tensorboard)
    atomic_write(out / "config.yaml", dump_config(config))
    return logger
