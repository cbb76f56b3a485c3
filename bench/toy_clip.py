"""Eps-prediction toys with their default deterministic samplers, with and without the clean-data estimate clipped to
the training data's range (`generate(clip_x0=...)`): SW2 against the exact-draw noise floor and the largest |x|
against the data's radius.

    .venv/bin/python bench/toy_clip.py [--runs runs] [--n 2000 4000] [--seeds 0 1 2]   # ~4 min on 2 idle cores

Trains `toy_vp` and `toy_ddpm` as shipped into `RUNS/<config>` unless a checkpoint is there, then samples each
`seeds x n` with the config's `sample:` settings, `clip_x0=False` and `True`. SW2 is against 20000 exact draws
(seed 123) with 256 fixed projections; the floor is `metrics.vector_floor` at the same n (5 draws). Writes
`bench/results/toy_clip.json` and prints the table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from unifusion import metrics
from unifusion.data import toy_2d
from unifusion.train import load_config, load_model, train_from_config
from unifusion.train.generate import generate
from unifusion.utils import atomic_write

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 4000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for config in ("toy_vp", "toy_ddpm"):
        run = Path(args.runs) / config
        if not (run / "checkpoint.safetensors").exists():
            train_from_config(load_config(config, ["train.progress=false"]), out=run)
        d = load_model(run)
        sc, name = d.config["sample"], d.config["data"]["name"]
        ref = toy_2d(name, 20000, torch.Generator().manual_seed(123))
        radius = ref.norm(dim=1).max().item()
        for n in args.n:
            floor = metrics.vector_floor(lambda m, g, name=name: toy_2d(name, m, g), ref, n,
                                         generator=torch.Generator().manual_seed(5))["sw2"]
            for clip in (False, True):
                for seed in args.seeds:
                    x, info = generate(d, n, d.data_shape, sampler=sc["sampler"], grid=sc["grid"], steps=sc["steps"],
                                       seed=seed, clip_x0=clip)
                    sw2 = metrics.vector_report(x, ref, generator=torch.Generator().manual_seed(5))["sw2"]
                    rows.append({"config": config, "sampler": sc["sampler"], "grid": sc["grid"], "steps": sc["steps"],
                                 "n": n, "seed": seed, "clip_x0": info["clip_x0"], "sw2": sw2, "floor": floor,
                                 "sw2_over_floor": sw2 / floor,
                                 "max_norm_over_radius": x.norm(dim=1).max().item() / radius})
                    r = rows[-1]
                    print(f"{config:9s} {r['sampler']}/{r['grid']}/{r['steps']} n {n} seed {seed} clip_x0 "
                          f"{'-' if r['clip_x0'] is None else format(r['clip_x0'], '.3f'):>6s}: SW2/floor "
                          f"{r['sw2_over_floor']:6.2f}  max|x|/radius {r['max_norm_over_radius']:6.2f}", flush=True)
    atomic_write(RESULTS / "toy_clip.json", json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
