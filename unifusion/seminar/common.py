"""What every claim shares: the result record, the digits training budget, parallel training and sample scores.

Digits models are the demo's (`unifusion.demo`): MLPs on the 64 pixels, trained by `train_from_config` in
worker processes of one CPU thread each (`demo._train_one`), scored by the shipped classifier's Frechet distance
(`metrics.digits_fd`), its pixel-space counterpart (`pixel_fd`) and the copy fraction (`metrics.copy_fraction`):
a model whose samples are mostly copies of training digits (copy fraction > `MEMORIZING`) is flagged as memorizing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["ClaimResult", "Budget", "MEMORIZING", "digits_config", "TARGET_SETS", "train_configs", "pixel_fd",
           "score_samples", "sample_digits", "fmt"]

MEMORIZING = 0.5  # copy fraction above which a model is flagged as memorizing (a fresh sampler scores about 1/361)


@dataclass
class ClaimResult:
    """One claim, measured: the stated test, the numbers, PASS or FAIL, tables (Markdown lines) and figures."""
    number: str
    title: str
    test: str
    passed: bool
    measured: str
    table: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    seconds: float = 0.0
    data: dict = field(default_factory=dict)


@dataclass
class Budget:
    """How much work the digits claims do. The default is sized for 10 minutes on 2 idle cores (the whole report
    takes about 1000 CPU seconds, most of it training the 20 models of claim 2 two at a time);
    `Budget.quick_budget()` is a smoke run (tests)."""
    steps: int = 2000          # training steps of each digits model (batch 256)
    hidden: int = 256          # MLP width
    depth: int = 3             # MLP residual blocks
    seeds: int = 5             # seeds per target (claim 2)
    n: int = 720               # samples per FD (two chunks of 360, the test split's size)
    cd_steps: int = 3000       # consistency distillation steps (claim 6; the teacher is the EDM model of seed 0)
    nll_n: int = 360           # test digits per likelihood (claim 7)
    hutchinson: int = 1        # Hutchinson estimates per test digit (claim 7)
    workers: int = 2           # training processes at once
    quick: bool = False

    @classmethod
    def quick_budget(cls) -> "Budget":
        return cls(steps=40, hidden=32, depth=1, seeds=2, n=360, cd_steps=6, nll_n=8, hutchinson=1, workers=1,
                   quick=True)


# The four output parametrizations of claim 2 on one objective: EDM's, `lambda(sigma) |D - x0|^2` with
# `lambda = (sigma^2 + sd^2) / (sigma sd)^2` and log-normal sigma (centred as the shipped digits_ve config). The eps,
# x0 and v networks (VP process) are trained on their denoiser's error (`loss.space=x0`), the EDM network on its
# preconditioned target, which is the same loss (tests/test_losses.py); only the network's output type differs.
_EDM_OBJECTIVE = ["loss.noise=lognormal", "loss.p_mean=-0.6", "loss.p_std=1.2", "loss.weight=edm",
                  "loss.sigma_data=0.75", "loss.space=x0"]
TARGET_SETS = {
    "eps": ["process.name=vp", "model.target=eps", "model.noise_cond=log_sigma", "loss.name=eps", *_EDM_OBJECTIVE],
    "x0": ["process.name=vp", "model.target=x0", "model.noise_cond=log_sigma", "loss.name=x0", *_EDM_OBJECTIVE],
    "v": ["process.name=vp", "model.target=v", "model.noise_cond=log_sigma", "loss.name=v", *_EDM_OBJECTIVE],
    "edm": ["process.name=edm", "model.target=edm", "model.sigma_data=0.75", "loss.name=edm", "loss.p_mean=-0.6"],
}


def digits_config(target: str, seed: int, budget: Budget, steps: int | None = None) -> dict:
    """The training config of one digits model of the report: `TARGET_SETS[target]` on the demo's MLP."""
    from ..train import load_config

    steps = steps or budget.steps
    sets = [f"seed={seed}", f"train.steps={steps}", f"net.hidden={budget.hidden}", f"net.depth={budget.depth}",
            "net.emb_dim=128", "train.batch_size=256", "train.lr=2e-3", f"train.warmup={min(200, steps // 4)}",
            "train.ema_decays=[0.999]", "train.threads=1", "train.progress=false", "train.ckpt_every=0",
            f"train.log_every={max(1, steps // 4)}", *TARGET_SETS[target]]
    return load_config(None, sets)


def train_configs(cfgs: dict, out: Path, workers: int = 2) -> dict:
    """Train every config (`name -> config`) into `out / name`, `workers` processes at once (one CPU thread each,
    `demo._train_one`; `workers=1`: in this process, on its threads); returns `name -> (checkpoint path, seconds)`.
    An old checkpoint there is replaced."""
    from ..demo import _train_one

    for name, cfg in cfgs.items():
        cfg["out"] = str(Path(out) / name)
        (Path(cfg["out"]) / "checkpoint.safetensors").unlink(missing_ok=True)
    if workers <= 1:
        return {name: _train_one(cfg) for name, cfg in cfgs.items()}
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                initializer=torch.set_num_threads, initargs=(1,)) as ex:   # its own processes
        futures = {name: ex.submit(_train_one, cfg) for name, cfg in cfgs.items()}
        return {name: f.result() for name, f in futures.items()}


@torch.no_grad()
def pixel_fd(samples: torch.Tensor) -> float:
    """The Frechet distance in raw pixel space between samples `[N, 64]` and the digits training split, at the
    test split's count: the mean over disjoint chunks of 360 (as `metrics.digits_fd` in classifier features)."""
    from ..data import load_digits
    from ..metrics import frechet_distance_from_stats, gaussian_stats

    x = samples.reshape(samples.shape[0], -1).double().clamp(-1, 1)
    ref = gaussian_stats(load_digits("train")[0].double())
    chunks = [x[i:i + 360] for i in range(0, x.shape[0] - 359, 360)] or [x]
    return float(np.mean([frechet_distance_from_stats(*gaussian_stats(c), *ref) for c in chunks]))


def score_samples(samples: torch.Tensor) -> dict:
    """`fd` (classifier features), `pixel_fd`, `copy_fraction` and the memorization flag of digits samples."""
    from ..metrics import copy_fraction, digits_fd

    x = samples.reshape(samples.shape[0], -1).clamp(-1, 1)
    cf = copy_fraction(x)
    return {"fd": digits_fd(x), "pixel_fd": pixel_fd(x), "copy_fraction": cf, "memorizing": cf > MEMORIZING}


def sample_digits(model, n: int, seed: int, sampler: str = "heun", steps: int = 18, **options) -> tuple:
    """`(samples [n, 64], nfe, seconds)` from a digits model with one of `unifusion.samplers`."""
    from ..train.generate import generate

    t0 = time.perf_counter()
    x, info = generate(model, n, (64,), sampler=sampler, steps=steps, seed=seed, **options)
    return x, info["nfe"], time.perf_counter() - t0


def fmt(v, spec: str = ".3g") -> str:
    """A number for a table (`-` for None)."""
    return "-" if v is None else format(v, spec)
