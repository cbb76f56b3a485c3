"""FD / floor of trained digits checkpoints over several sampling seeds (the seed spread of the digits targets).

    python bench/digits_seeds.py runs/bench_train_digits/train_ve_edm runs/bench_train_digits/train_vp_ddpm \
        [--sampler heun --grid edm --steps 18] [--seeds 5] [--n 2000] [--ema 0.9995]

Prints, per run, the FD ratio (`unifusion.metrics.digits_report`'s `fd_ratio`) of each seed with its mean and
standard deviation (`train_digits.evaluate`, the benchmark's own protocol): one 2000-sample draw moves by about
+-0.12, so targets are judged on the mean. Also the mean ratio to the i.i.d.-class-count floor, the FD of all
samples pooled, the confident fraction, the nearest-neighbour ratio and the copy fraction.
"""
import argparse

import torch

from train_digits import evaluate
from unifusion.train import load_model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders or checkpoints of `unifusion train` on digits")
    ap.add_argument("--sampler", default="heun")
    ap.add_argument("--grid", default="edm")
    ap.add_argument("--steps", type=int, default=18, help="grid levels (Heun: 2 x 18 - 1 = 35 NFE)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--ema", default="true", help="true: the first EMA; false: raw weights; a decay: that EMA")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    ema = {"true": True, "false": False}.get(a.ema.lower(), None)
    ema = float(a.ema) if ema is None else ema
    for run in a.runs:
        d = load_model(run, ema=ema)
        v = evaluate(d, a.n, a.sampler, a.grid, a.steps, a.seeds)
        print(f"{run} (step {d.checkpoint_step}, ema {a.ema}) {a.sampler} {v['nfe']} NFE: "
              + ", ".join(f"{r:.3f}" for r in v["ratios"]) + f" | mean {v['ratio']:.3f} sd {v['ratio_sd']:.3f}"
              + f" | i.i.d.-count floor {v['ratio_iid']:.3f} | pooled FD {v['fd_pooled']:.3f}"
              + f" | confident {v['confident']:.3f} NN ratio {v['nn_ratio']:.2f} copies {v['copy_fraction']:.3f}",
              flush=True)


if __name__ == "__main__":
    main()
