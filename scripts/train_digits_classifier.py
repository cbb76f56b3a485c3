"""Train the digits classifier whose features define the digits Frechet distance (`unifusion.metrics`).

Deterministic: fixed seed, one CPU thread, the project's fixed digits split (`unifusion.data.digits`), training
split only; the test split is touched once, to report accuracy. Writes, each atomically (temp file + rename),
    <out>.safetensors   the weights (no pickle)
    <out>.json          architecture, training settings, train/test accuracy, the torch version used

    python scripts/train_digits_classifier.py                      # writes unifusion/assets/digits_classifier.*
    python scripts/train_digits_classifier.py --steps 2 --out /tmp/clf   # a quick check of the code path
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from unifusion.data.digits import load_digits
from unifusion.metrics import CLASSIFIER_PATH, DigitsClassifier
from unifusion.utils import atomic_write

DEFAULTS = dict(steps=3000, batch=128, lr=2e-3, weight_decay=1e-2, noise=0.3, shift=1, seed=0)


def augment(x: torch.Tensor, g: torch.Generator, noise: float, shift: int) -> torch.Tensor:
    """Random translations by up to `shift` pixels (background -1 filled in) plus Gaussian pixel noise of std
    `noise`, so the features stay meaningful on imperfect generated digits."""
    img = x.reshape(-1, 8, 8)
    if shift:
        pad = torch.nn.functional.pad(img, (shift,) * 4, value=-1.0)
        dx, dy = torch.randint(0, 2 * shift + 1, (2, img.shape[0]), generator=g)
        rows = (torch.arange(8)[None, :] + dy[:, None])[:, :, None]
        cols = (torch.arange(8)[None, :] + dx[:, None])[:, None, :]
        img = pad[torch.arange(img.shape[0])[:, None, None], rows, cols]
    x = img.reshape(-1, 64)
    return x + noise * torch.randn(x.shape, generator=g)


@torch.no_grad()
def accuracy(model: DigitsClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of `model` on pixels `x` `[N, 64]` with labels `y`."""
    return float((model(x).argmax(1) == y).double().mean())


def train(steps: int, batch: int, lr: float, weight_decay: float, noise: float, shift: int, seed: int) -> tuple:
    """AdamW with cosine decay on minibatches of the training split; returns `(model, train_acc, test_acc)`."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_tr, y_tr = load_digits("train")
    x_te, y_te = load_digits("test")
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(steps):
        idx = torch.randint(x_tr.shape[0], (batch,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(augment(x_tr[idx], g, noise, shift)), y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model, accuracy(model, x_tr, y_tr), accuracy(model, x_te, y_te)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k, v in DEFAULTS.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    p.add_argument("--out", type=Path, default=CLASSIFIER_PATH.with_suffix(""),
                   help="output path without suffix (default: the shipped unifusion/assets/digits_classifier)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch < 1:
        p.error(f"--steps and --batch must be >= 1, got {args.steps} and {args.batch}")
    from safetensors.torch import save_file

    cfg = {k: getattr(args, k) for k in DEFAULTS}
    model, acc_tr, acc_te = train(**cfg)
    out = Path(args.out)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(out.with_suffix(".safetensors"), lambda tmp: save_file(state, str(tmp)))
    meta = {"arch": {"hidden": model.body[0].out_features, "n_features": model.head.in_features, "n_classes": 10},
            "train": cfg, "train_accuracy": acc_tr, "test_accuracy": acc_te, "torch": torch.__version__,
            "data": "sklearn digits, unifusion.data.digits split (1437 train / 360 test), pixels x/8 - 1"}
    atomic_write(out.with_suffix(".json"), json.dumps(meta, indent=1) + "\n")
    print(f"train accuracy {acc_tr:.4f}  test accuracy {acc_te:.4f}  -> {out.with_suffix('.safetensors')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
