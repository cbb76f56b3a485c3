"""The consistency rows of `unifusion demo`: the demo's VE (EDM) model distilled by consistency distillation
(Song et al. 2023, Algorithm 2) with `unifusion distill`'s machinery, sampled in 1 and 2 steps (Algorithm 1).

`unifusion.demo` calls `demo_rows(ctx)` after its own rows; each row carries the FD, the confident fraction and
the sample grid written by `ctx.evaluate`.
"""
from __future__ import annotations

import time

import torch

from .model import consistency_sigmas, sample_consistency
from .task import distill_config, distill_from_config, load_consistency

__all__ = ["demo_rows", "DEMO_STEPS", "TWO_STEP_CANDIDATES"]

DEMO_STEPS = 1500                                   # distillation steps of the full demo (quick: 10)
TWO_STEP_CANDIDATES = (0.1, 0.18, 0.32, 0.56, 1.0, 2.5)  # intermediate levels tried for the 2-step row (2.5: Karras)


def _two_step_sigma(f, shape, n: int, seed: int) -> float:
    """The intermediate level of 2-step sampling with the lowest digits FD on a validation draw (a seed the reported
    rows do not use), as Song et al. 2023 search theirs; bench/results/consistency.md shows why it matters."""
    from ..metrics import digits_fd

    def fd(s):
        g = torch.Generator().manual_seed(seed + 7919)
        x = sample_consistency(f, torch.randn((n, *shape), generator=g) * f.sigma_max, [f.sigma_max, s], generator=g)
        return digits_fd(x.reshape(n, -1).clamp(-1, 1))
    vals = {s: fd(s) for s in TWO_STEP_CANDIDATES if f.sigma_min < s < f.sigma_max}
    return min(vals, key=vals.get)


def demo_rows(ctx) -> list[dict]:
    """Distil the demo's VE model and return its 1-step and 2-step rows (keys of `unifusion.demo.ROW_KEYS`)."""
    steps = 10 if ctx.quick else DEMO_STEPS
    cfg = distill_config(teacher=ctx.checkpoints["VE"], sets=[
        f"seed={ctx.seed}", f"train.steps={steps}", "train.progress=false", "train.threads=1", "train.lr=5e-4",
        "train.batch_size=256", "train.warmup=0", "train.ckpt_every=0", f"train.log_every={max(1, steps // 10)}",
        "consistency.N=18", "consistency.mu=0.95"])
    out = ctx.out / "model_cd"
    ckpt = out / "checkpoint.safetensors"
    if ckpt.exists():
        ckpt.unlink()
    t0 = time.perf_counter()
    distill_from_config(cfg, out=out)
    seconds = time.perf_counter() - t0
    ctx.notes.append(f"consistency distillation of the VE model: {steps} steps in {seconds:.0f} s "
                     f"(N=18, EMA target mu=0.95, L2, Heun teacher step); `unifusion distill` -> {out}")
    f, shape = load_consistency(out)
    rows, s2 = [], _two_step_sigma(f, shape, ctx.n, ctx.seed)
    for k in (1, 2):
        sig = consistency_sigmas(1, f.sigma_min, f.sigma_max)
        if k == 2:
            sig = torch.tensor([f.sigma_max, s2], dtype=torch.float64)
        g = torch.Generator().manual_seed(ctx.seed)
        t1 = time.perf_counter()
        x = sample_consistency(f, torch.randn((ctx.n, *shape), generator=g) * f.sigma_max, sig, generator=g)
        secs = time.perf_counter() - t1
        ev = ctx.evaluate(x, f"ve_consistency_{k}step")
        levels = ", ".join(f"{s:.3g}" for s in sig.tolist())
        rows.append({"model": "VE -> CD", "sampler": "consistency", "nfe": k, "fd": ev["fd"],
                     "confident": ev["confident"], "seconds": secs, "picture": ev["picture"],
                     "role": f"consistency model, {k} step{'s' if k > 1 else ''} (sigma {levels}"
                             + (", sigma_1 picked on a validation draw)" if k == 2 else ")")})
    return rows
