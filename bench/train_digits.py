"""Digits training benchmark: wall time until each formulation's samples reach the FD target.

* EDM (VE) model, `configs/digits_ve.yaml`: Heun at 35 NFE, 2000 samples, target FD <= 1.2 x floor.
* VP model (DDPM loss), `configs/digits_vp.yaml`: Heun 35 NFE and DDPM ancestral with 1000 steps, 2000 samples,
  target FD <= 1.5 x floor.
* A CIFAR-10-sized DDPM++ U-Net (`configs/cifar10_unet.yaml`) on random 3x32x32 data: optimiser steps/s and
  images/s (on CPU; with `--device cuda`, bf16 autocast on the GPU).

FD is the Frechet distance in the shipped digits classifier's features, and the floor is the same statistic for
real held-out test digits at the same count (`unifusion.metrics.digits_report`). Training runs in chunks of
`--eval-every` steps (bit-exact resume makes the chunks one run) and the EMA model is evaluated after each.
Writes `bench/results/train_digits.json` and `.md`.

    python bench/train_digits.py                       # the full benchmark (long on 2 CPU cores)
    python bench/train_digits.py --quick               # a smoke run (a minute)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from unifusion.metrics import digits_report
from unifusion.train import TrainConfig, fit, load_config, load_model, train_from_config
from unifusion.train.generate import generate
from unifusion.utils import atomic_write
from unifusion.train.task import DiffusionTask, build_denoiser

ROOT = Path(__file__).resolve().parent


def track(label: str, config: str, sets: list[str], steps: int, every: int, n: int, evals, target: float,
          final_evals, runs: Path, on_eval=None, resume: bool = False, previous=(), seeds: int = 5,
          reevaluate: bool = False) -> dict:
    """Train `config` to `steps` in chunks of `every`, evaluating `evals` after each chunk (the EMA weights, over
    `seeds` sampling seeds: the target is judged on the mean).
    `resume`: continue an interrupted run's checkpoint (its training time so far is summed from its log);
    `previous`: that run's earlier result rows (kept for the steps before the checkpoint);
    `reevaluate`: evaluate the checkpoint's row again (after a change of the metrics; needs `resume`)."""
    run = runs / f"train_{label}"
    cfg = load_config(config, [f"out={run}", "train.progress=false", *sets])
    history, train_s, reached, done = [], 0.0, None, 0
    if resume and (run / "checkpoint.safetensors").exists():
        done = load_model(run).checkpoint_step
        logs = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines() if ln.strip()]
        prev = 0
        for r in logs:
            if "steps_per_s" in r and r["step"] <= done:
                train_s += (r["step"] - prev) / r["steps_per_s"]
                prev = r["step"]
    else:
        shutil.rmtree(run, ignore_errors=True)
    history = [r for r in previous if r["step"] < done or (r["step"] == done and not reevaluate)]
    seen = {r["step"] for r in history}
    stops = [s for s in list(range(every, steps, every)) + [steps] if s > done or (s == done and s not in seen)]
    for i, stop in enumerate(stops):
        cfg["train"]["steps"] = stop
        t0 = time.perf_counter()
        res = train_from_config(cfg, resume=done > 0 or i > 0)
        train_s += time.perf_counter() - t0
        model = load_model(run)
        old = next((r for r in previous if r["step"] == stop), {})   # a re-evaluated row keeps its training loss
        row = {"step": stop, "train_seconds": round(train_s, 1), "loss": res.loss if stop > done else old.get("loss")}
        todo = evals + (final_evals if stop == steps else [])
        for name, sampler, grid, k in todo:
            row[name] = evaluate(model, n, sampler, grid, k, seeds)
        history.append(row)
        reached = _reached(history, evals, target, seeds)
        if on_eval is not None:
            on_eval({"label": label, "config": config, "sets": sets, "target_ratio": target, "n": n,
                     "reached": reached, "history": history})
        print(f"[{label}] step {stop:6d}  train {train_s:7.0f} s  " + "  ".join(
            f"{name}: FD {row[name]['fd']:.3f} ({row[name]['ratio']:.2f}x floor {row[name]['floor']:.3f})"
            for name, *_ in todo), flush=True)
    reached = _reached(history, evals, target, seeds)
    return {"label": label, "config": config, "sets": sets, "target_ratio": target, "n": n,
            "reached": reached, "history": history}


def _reached(history, evals, target: float, seeds: int):
    """The first row whose every tracked sampler meets `target` on the mean over `seeds` seeds (rows of an older,
    single-seed evaluation kept by `--resume` do not count)."""
    hits = [r for r in history if all(r[name]["ratio"] <= target and r[name].get("seeds", 1) >= seeds
                                      for name, *_ in evals)]
    return {"step": hits[0]["step"], "train_seconds": hits[0]["train_seconds"]} if hits else None


def evaluate(model, n: int, sampler: str, grid, steps: int, seeds: int) -> dict:
    """Digits metrics of `n` samples for each sampling seed `0 .. seeds-1`, averaged (one 2000-sample draw's FD ratio
    moves by about +-0.12 between seeds, so a target is judged on the mean); `ratios` keeps the per-seed values and
    `fd_pooled` is one FD of all `n * seeds` samples (little finite-sample bias: the distribution's distance)."""
    reps, xs, nfe, secs = [], [], 0, 0.0
    for seed in range(seeds):
        x, info = generate(model, n, tuple(model.data_shape), sampler=sampler, grid=grid, steps=steps, seed=seed)
        xs.append(x.clamp(-1, 1).reshape(n, -1))
        reps.append(digits_report(xs[-1], floor_repeats=5))
        nfe, secs = info["nfe"], secs + info["seconds"]
    pooled = digits_report(torch.cat(xs), floor_repeats=1)["fd_all"] if seeds > 1 else reps[0]["fd_all"]
    mean = lambda key: statistics.mean(r[key] for r in reps)
    ratios = [r["fd_ratio"] for r in reps]
    return {"nfe": nfe, "fd": mean("fd"), "floor": reps[0]["fd_floor"], "ratio": statistics.mean(ratios),
            "floor_iid": reps[0]["fd_floor_iid"], "ratio_iid": mean("fd_ratio_iid"),
            "ratio_sd": statistics.stdev(ratios) if seeds > 1 else 0.0, "ratios": ratios, "seeds": seeds,
            "confident": mean("confident_fraction"), "nn_ratio": mean("nn_ratio"),
            "copy_fraction": mean("copy_fraction"), "fd_pooled": pooled, "sample_seconds": round(secs, 1)}


def reference_rows() -> dict:
    """The metric on real digits: the 1437 training images themselves (a perfect memorizer) and the 360 test images."""
    from unifusion.data import load_digits

    out = {}
    for split in ("train", "test"):
        x, _ = load_digits(split)
        rep = digits_report(x, floor_repeats=5)
        out[split] = {"n": x.shape[0], "fd": rep["fd"], "floor": rep["fd_floor"], "ratio": rep["fd_ratio"],
                      "ratio_iid": rep["fd_ratio_iid"],
                      "confident": rep["confident_fraction"], "nn_ratio": rep["nn_ratio"]}
    return out


def unet_speed(device: str, batch: int, steps: int, threads: int, precision: str = "auto",
               compile: bool = False) -> dict:
    """Optimiser steps/s of the CIFAR-10-sized U-Net on random data (one warm-up step excluded); `precision` as
    `train.precision` ("auto": bf16 autocast on a GPU, fp32 on the CPU); `compile`: `train.compile` (the first,
    compiling, step is the excluded warm-up)."""
    cfg = load_config("cifar10_unet", [f"train.threads={threads}"])
    den = build_denoiser(cfg, (3, 32, 32))
    from unifusion.losses import build_loss
    task = DiffusionTask(den, build_loss("ddpm", den.process))
    data = torch.rand(4 * batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tc = TrainConfig(steps=steps + 1, batch_size=batch, log_every=1, progress=False, ema_decays=(0.9999,),
                     device=device, precision=precision, threads=threads, compile=compile)
    res = fit(task, data, train=tc)
    rates = [r["steps_per_s"] for r in res.history[1:]]
    sps = len(rates) / sum(1 / r for r in rates)
    params = sum(p.numel() for p in den.net.parameters())
    on_gpu = torch.cuda.is_available() and device != "cpu"
    used = {"auto": "bf16" if on_gpu else "fp32"}.get(precision, precision)
    return {"device": "cuda" if on_gpu else "cpu", "gpu": torch.cuda.get_device_name() if on_gpu else None,
            "batch": batch, "params_M": round(params / 1e6, 2), "steps_per_s": sps, "images_per_s": sps * batch,
            "precision": (f"{used} autocast" if used in ("bf16", "fp16") else "fp32")
            + (", compiled" if compile else ""),
            "threads": threads,
            "peak_memory_GiB": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if on_gpu else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the script, not the targets")
    p.add_argument("--steps-ve", type=int, default=30000)
    p.add_argument("--steps-vp", type=int, default=40000)
    p.add_argument("--eval-every", type=int, default=3000)
    p.add_argument("--n", type=int, default=2000, help="samples per evaluation and seed")
    p.add_argument("--seeds", type=int, default=5, help="sampling seeds per evaluation (targets judged on the mean)")
    p.add_argument("--set", action="append", default=[], help="extra config overrides for both digits runs")
    p.add_argument("--skip", action="append", default=[], choices=["ve", "vp", "unet"])
    p.add_argument("--unet-device", default="cpu")
    p.add_argument("--unet-batch", type=int, default=8)
    p.add_argument("--unet-steps", type=int, default=3)
    p.add_argument("--unet-precision", default=["auto"], nargs="+", choices=["auto", "fp32", "bf16", "fp16"],
                   help="one U-Net measurement per precision (auto: bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--unet-compile", action="store_true", help="also measure each precision with train.compile")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results"))
    p.add_argument("--runs", default="runs/bench_train_digits", help="run folders (checkpoints, logs)")
    p.add_argument("--resume", action="store_true", help="continue the runs' checkpoints in --runs")
    p.add_argument("--reevaluate", action="store_true",
                   help="with --resume: evaluate each run's checkpoint again (after a change of the metrics)")
    p.add_argument("--tag", default="", help="suffix of the result files (e.g. _ve when runs are split)")
    a = p.parse_args(argv)
    if a.reevaluate and not a.resume:
        p.error("--reevaluate needs --resume (it evaluates the checkpoints in --runs again)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    sets = [f"train.threads={a.threads}", *a.set]
    if a.quick:
        a.steps_ve = a.steps_vp = a.eval_every = 100
        a.n, a.unet_steps, a.unet_batch, a.seeds = 400, 1, 2, 2
        a.runs += "_quick"
        sets += ["net.hidden=64", "net.depth=2"]
    t0, load0 = time.perf_counter(), os.getloadavg()
    result = {"machine": {"cpus": os.cpu_count(), "threads": a.threads, "platform": platform.platform(),
                          "torch": torch.__version__, "loadavg_start": load0}, "runs": []}
    result["reference"] = reference_rows()
    name = "train_digits_quick" if a.quick else f"train_digits{a.tag}"

    def write(partial=None):
        """Write the JSON and the table so far (after every evaluation: a long run that is stopped keeps its rows)."""
        res = dict(result, runs=result["runs"] + ([partial] if partial else []))
        res["machine"] = dict(result["machine"], loadavg_end=os.getloadavg())
        res["wall_seconds"] = round(time.perf_counter() - t0, 1)
        for suffix, text in ((".json", json.dumps(res, indent=2)), (".md", table(res))):
            atomic_write(out / f"{name}{suffix}", text)
        return res

    old = {}
    if a.resume and (out / f"{name}.json").exists():
        old = {r["label"]: r["history"] for r in json.loads((out / f"{name}.json").read_text())["runs"]}
    heun = ("heun35", "heun", None, 18)
    if "ve" not in a.skip:
        result["runs"].append(track("ve_edm", "digits_ve", sets, a.steps_ve, a.eval_every, a.n, [heun], 1.2, [],
                                    Path(a.runs), write, a.resume, old.get("ve_edm", ()), a.seeds, a.reevaluate))
    if "vp" not in a.skip:
        anc = ("ancestral1000", "ancestral", "timesteps", 100 if a.quick else 1000)
        result["runs"].append(track("vp_ddpm", "digits_vp", sets, a.steps_vp, a.eval_every, a.n, [heun], 1.5,
                                    [anc], Path(a.runs), write, a.resume, old.get("vp_ddpm", ()), a.seeds,
                                    a.reevaluate))
    if "unet" not in a.skip:
        result["unet"] = [unet_speed(a.unet_device, a.unet_batch, a.unet_steps, a.threads, prec, comp)
                          for prec in a.unet_precision for comp in ((False, True) if a.unet_compile else (False,))]
    print(table(write()))
    return 0


def _ratio(v: dict) -> str:
    return f"{v['ratio']:.2f} +- {v['ratio_sd']:.2f} ({v['seeds']})" if v.get("seeds", 1) > 1 else f"{v['ratio']:.2f}"


def table(result: dict) -> str:
    m = result["machine"]
    lines = [f"Digits training benchmark: {m['cpus']} CPUs, {m['threads']} torch thread(s), torch {m['torch']}, "
             f"load average {m['loadavg_start'][0]:.1f} at start / {m['loadavg_end'][0]:.1f} at end; "
             f"wall {result['wall_seconds']:.0f} s.", "",
             "| model | step | train s | sampler | NFE | FD | floor | FD / floor (mean +- sd over seeds) | target "
             "| FD / i.i.d.-count floor | confident | NN ratio |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    iid = lambda v: f"{v['ratio_iid']:.2f}" if "ratio_iid" in v else ""
    for split, v in result.get("reference", {}).items():
        lines.append(f"| real {split} digits (n={v['n']}) | | | | | {v['fd']:.3f} | {v['floor']:.3f} "
                     f"| {v['ratio']:.2f} | | {iid(v)} | {v['confident']:.3f} | {v['nn_ratio']:.2f} |")
    for run in result["runs"]:
        for row in run["history"]:
            for k, v in row.items():
                if isinstance(v, dict):
                    lines.append(f"| {run['label']} | {row['step']} | {row['train_seconds']:.0f} | {k} | {v['nfe']} "
                                 f"| {v['fd']:.3f} | {v['floor']:.3f} | {_ratio(v)} | {run['target_ratio']} "
                                 f"| {iid(v)} | {v['confident']:.3f} | {v['nn_ratio']:.2f} |")
        r = run["reached"]
        names = sorted({k for row in run["history"] for k, v in row.items() if isinstance(v, dict)})
        tracked = [k for k in names if all(k in row for row in run["history"])]
        when = f"first reached at step {r['step']} after {r['train_seconds']:.0f} s of training" if r else "not reached"
        lines.append(f"| {run['label']} | {', '.join(tracked)} target {run['target_ratio']}x floor {when} "
                     f"| | | | | | | | | | |")
        for k in names:
            if k not in tracked:
                last = [row for row in run["history"] if k in row][-1]
                ok = last[k]["ratio"] <= run["target_ratio"] and last[k].get("seeds", 1) > 1  # as `_reached`
                lines.append(f"| {run['label']} | {k} (final checkpoint only) target {run['target_ratio']}x floor: "
                             f"{'reached' if ok else 'not reached'} at step {last['step']} ({last[k]['ratio']:.2f}x) "
                             f"| | | | | | | | | | |")
    for u in result.get("unet", []):
        mem = f", peak {u['peak_memory_GiB']} GiB" if u.get("peak_memory_GiB") else ""
        lines += ["", f"CIFAR-10-sized U-Net ({u['params_M']}M parameters), random data, batch {u['batch']}, "
                      f"{u['device']}{' ' + u['gpu'] if u['gpu'] else ''}, {u['precision']}, {u['threads']} thread(s): "
                      f"{u['steps_per_s']:.3f} steps/s = {u['images_per_s']:.2f} images/s{mem}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
