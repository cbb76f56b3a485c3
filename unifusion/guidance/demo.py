"""The guidance rows of `unifusion demo`: a class-conditional VE (EDM) digits model, trained with 10 % label dropout
(Ho & Salimans 2022), sampled with classifier-free guidance at several scales.

`unifusion.demo` calls `demo_rows(ctx)` after its own rows; each row carries the FD, the confident fraction, the
sample grid written by `ctx.evaluate` (sample `i` asks for digit `i mod 10`, so each column of the grid is one
class) and, in its role, the fraction of samples the digits classifier assigns to the requested class.
"""
from __future__ import annotations

import time

import torch

from .transforms import classifier_free

__all__ = ["demo_rows", "DEMO_SCALES"]

DEMO_SCALES = (0.0, 1.0, 2.0, 4.0)      # classifier-free guidance scales of the rows (0: the unconditional model)


def demo_rows(ctx) -> list[dict]:
    """Train the demo's VE config with class labels and return one row per scale in `DEMO_SCALES`."""
    from ..demo import demo_configs
    from ..metrics import digits_class_report
    from ..train import load_model, train_from_config
    from ..train.generate import generate

    cfg = demo_configs(ctx.quick, ctx.seed)["VE"]
    cfg["net"].update(num_classes=10, label_dropout=0.1)
    cfg["out"] = str(ctx.out / "model_ve_cond")
    ckpt = ctx.out / "model_ve_cond" / "checkpoint.safetensors"
    if ckpt.exists():
        ckpt.unlink()
    t0 = time.perf_counter()
    model = load_model(train_from_config(cfg).checkpoint)
    ctx.notes.append(f"class-conditional VE model (label dropout 0.1): {cfg['train']['steps']} steps in "
                     f"{time.perf_counter() - t0:.0f} s; guidance rows: sample i asks for digit i mod 10, agreement = "
                     f"fraction the digits classifier labels as asked")
    labels = torch.arange(ctx.n) % 10
    rows = []
    for w in DEMO_SCALES:
        x, info = generate(classifier_free(model, w), ctx.n, (64,), sampler="heun", steps=18, seed=ctx.seed,
                           class_labels=labels)
        ev = ctx.evaluate(x, f"ve_cond_cfg{w:g}")
        agree = digits_class_report(x, labels, seed=ctx.seed)["agreement"]
        rows.append({"model": "VE-cond", "sampler": "heun", "nfe": info["nfe"], "fd": ev["fd"],
                     "confident": ev["confident"], "seconds": info["seconds"], "picture": ev["picture"],
                     "role": f"classifier-free guidance w={w:g}: class agreement {agree:.1%} (columns: digits 0-9)"})
    return rows
