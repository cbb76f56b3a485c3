"""Callbacks: what a training run does besides its steps, as objects `fit` calls at fixed points.

Owns the `Callback` interface and the built-in callbacks: `JsonlLog` (the run's `log.jsonl`, mirrored to
TensorBoard with `train.tensorboard`), `ProgressBar` (tqdm, with `train.progress`), `SamplePreview` (a PNG grid of
samples every N steps) and `Eval` (metrics every N steps, logged). A user adds Weights & Biases, MLflow or anything
else by passing a callback to `fit(..., callbacks=[...])`; the loop itself stays unchanged. Every callback runs on
every process; the built-ins write only on the main one (`run.is_main`).

`run` (a `Run`) is what a callback sees: `step`, `task`, `ema`, `train`, `seed`, `out`, `config`, `dist`,
`is_main`, `data_shape`, and `log(record)` to add a record to the run's log (every callback's `on_log` sees it).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

__all__ = ["Callback", "Run", "JsonlLog", "ProgressBar", "SamplePreview", "Eval", "ema_denoiser", "evaluating",
           "sliced_wasserstein_eval"]


class Callback:
    """Hooks of a training run; override the ones you need (all default to nothing)."""

    def on_start(self, run: "Run") -> None:
        """Before the first step (after a resumed run's state is restored: `run.step` is where it continues)."""

    def on_step(self, run: "Run") -> None:
        """After each optimiser step (`run.step` steps done). Reading device tensors here synchronises a GPU."""

    def on_log(self, run: "Run", record: dict) -> None:
        """For each log record (every `train.log_every` steps, evaluations, events)."""

    def on_checkpoint(self, run: "Run", path: Path) -> None:
        """After a checkpoint of step `run.step` is on disk at `path`."""

    def on_end(self, run: "Run") -> None:
        """When the run stops, finished or not (also after an error)."""


@dataclass
class Run:
    """The state of a run that callbacks see."""
    task: Any
    train: Any
    seed: int
    dist: Any
    out: Path | None = None
    config: dict | None = None
    ema: Any = None
    data_shape: tuple | None = None
    step: int = 0
    callbacks: list = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def log(self, record: dict) -> None:
        """Send `record` to every callback's `on_log`."""
        for cb in self.callbacks:
            cb.on_log(self, record)


class JsonlLog(Callback):
    """Every record as one JSON line (main process only) through a `unifusion.train.logs.JsonlLogger` (which also
    mirrors scalars to TensorBoard when opened with `tensorboard=True`)."""

    def __init__(self, logger):
        self.logger = logger

    def on_log(self, run, record):
        if run.is_main:
            self.logger.log(record)

    def on_end(self, run):
        self.logger.close()


class ProgressBar(Callback):
    """A tqdm bar over the run's steps on the main process, with the loss of the last log line."""

    def __init__(self):
        self.bar = None

    def on_start(self, run):
        if run.is_main:
            self.bar = tqdm(total=run.train.steps, initial=run.step, unit="step", dynamic_ncols=True)

    def on_step(self, run):
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, run, record):
        if self.bar is not None and "event" not in record and "loss" in record:
            self.bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)

    def on_end(self, run):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def ema_denoiser(task, ema, decay_index: int = 0):
    """The task's `denoiser` with the EMA weights of `decay_index` (the raw weights without an EMA); None for a task
    without a `denoiser`. Sample from it inside `evaluating(...)`."""
    from ..parametrization import Denoiser

    den = getattr(task, "denoiser", None)
    if den is None:
        return None
    net = ema.averaged(decay_index)["net"] if ema is not None else den.net
    return Denoiser(net, den.process, den.target, den.sigma_data, den.noise_cond, den.time_scale)


@contextmanager
def evaluating(module):
    """`module` in eval mode inside the block, back in its former modes (per submodule) after it."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.train(mode)


class SamplePreview(Callback):
    """Every `every` steps, `n` samples of the EMA model as a PNG grid (or scatter) `out/previews/step_<step>.png`.

    Args:
        every:   steps between previews.
        n:       samples per preview.
        sampler: a name of `unifusion.samplers.SAMPLERS` (None: the default sampler); `steps`: its grid size.
        seed:    the previews' noise (the same for every preview, so they show the model changing).
        sample:  `sample(run, n, generator) -> samples` instead of the task's EMA denoiser with `generate`.
    """

    def __init__(self, every: int, n: int = 64, sampler: str | None = None, steps: int = 18, seed: int = 0,
                 sample: Callable | None = None):
        self.every, self.n, self.sampler, self.steps, self.seed, self.sample = every, n, sampler, steps, seed, sample

    def on_step(self, run):
        if not (run.is_main and run.out is not None and self.every and run.step % self.every == 0):
            return
        from .pictures import save_picture

        x = self._samples(run)
        if x is None:
            return
        path = Path(run.out) / "previews" / f"step_{run.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_picture(x.float().cpu(), path, run.data_shape, title=f"step {run.step}")
        run.log({"step": run.step, "event": "preview", "path": str(path)})

    @torch.no_grad()
    def _samples(self, run):
        g = torch.Generator().manual_seed(self.seed)
        if self.sample is not None:
            return self.sample(run, self.n, g)
        from .generate import generate

        den = ema_denoiser(run.task, run.ema)
        if den is None:
            return None
        with evaluating(den):
            return generate(den, self.n, run.data_shape, sampler=self.sampler, steps=self.steps, seed=self.seed,
                            device=next(den.parameters()).device)[0]


class Eval(Callback):
    """Every `every` steps, `metrics(run) -> {name: number}`, logged as `{"step", "event": "eval", ...}`."""

    def __init__(self, every: int, metrics: Callable[["Run"], dict]):
        self.every, self.metrics = every, metrics

    def on_step(self, run):
        if self.every and run.step % self.every == 0:
            run.log({"step": run.step, "event": "eval", **self.metrics(run)})


def sliced_wasserstein_eval(reference: torch.Tensor, n: int = 500, sampler: str | None = None, steps: int = 18,
                            seed: int = 0) -> Callable[["Run"], dict]:
    """`metrics` for `Eval`: the sliced Wasserstein distance between `n` EMA samples and `n` reference examples
    (flattened), `unifusion.metrics.sliced_wasserstein`, with a fixed seed."""
    from ..metrics import sliced_wasserstein
    from .generate import generate

    ref = reference[:n].reshape(min(n, reference.shape[0]), -1).double()

    @torch.no_grad()
    def metrics(run) -> dict:
        den = ema_denoiser(run.task, run.ema)
        with evaluating(den):
            x, _ = generate(den, ref.shape[0], run.data_shape, sampler=sampler, steps=steps, seed=seed,
                            device=next(den.parameters()).device)
        g = torch.Generator().manual_seed(seed)
        return {"sw2": float(sliced_wasserstein(x.reshape(x.shape[0], -1).double().cpu(), ref, generator=g))}

    return metrics
