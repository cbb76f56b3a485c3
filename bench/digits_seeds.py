"""FD / floor of trained digits checkpoints over several sampling seeds (the seed spread of the digits targets).

    python bench/digits_seeds.py runs/bench_train_digits/train_ve_edm runs/bench_train_digits/train_vp_ddpm \
        [--sampler heun --grid edm --steps 18] [--seeds 5] [--n 2000]

Prints, per run, the FD ratio (`unifusion.metrics.digits_report`'s `fd_ratio`) of each seed with its mean and
standard deviation: one 2000-sample draw moves by about +-0.12, so targets are judged on the mean.
"""
import argparse
import statistics

import torch

from unifusion.metrics import digits_report
from unifusion.train import load_model
from unifusion.train.generate import generate


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders or checkpoints of `unifusion train` on digits")
    ap.add_argument("--sampler", default="heun")
    ap.add_argument("--grid", default="edm")
    ap.add_argument("--steps", type=int, default=18, help="grid levels (Heun: 2 x 18 - 1 = 35 NFE)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    for run in a.runs:
        d = load_model(run)
        ratios = []
        for seed in range(a.seeds):
            x, info = generate(d, a.n, tuple(d.data_shape), sampler=a.sampler, grid=a.grid, steps=a.steps, seed=seed)
            ratios.append(digits_report(x.reshape(a.n, -1))["fd_ratio"])
        spread = f" sd {statistics.stdev(ratios):.3f}" if len(ratios) > 1 else ""
        print(f"{run} (step {d.checkpoint_step}) {a.sampler} {info['nfe']} NFE: "
              + ", ".join(f"{r:.3f}" for r in ratios) + f" | mean {statistics.mean(ratios):.3f}{spread}", flush=True)


if __name__ == "__main__":
    main()
