"""Latent diffusion benchmark on digits at 32x32: the autoencoder, latent vs pixel diffusion at one CPU-time budget,
and consistency distillation of the latent EDM model.

* Autoencoders (`configs/digits32_ae.yaml`, factor 4 -> 4x8x8 and factor 8 -> 4x4x4): training CPU time and the
  FD of the reconstructed test digits (posterior mean, decoded) against the FD floor; target <= 1.5x floor in
  <= 10 minutes of training.
* Latent vs pixel diffusion, both formulations (VP: `digits32_latent_vp` / `digits32_pixel_vp`; VE:
  `digits32_latent_edm` / `digits32_pixel_edm`), each trained for the same process CPU time (`--budget` seconds of
  one thread; the autoencoder's training is not counted: it is shared by every latent model), in chunks of
  `--chunk` steps with bit-exact resume, at a constant learning rate. Then `--n` samples with Heun (18 levels,
  35 NFE); FD of the decoded images, and the sampling CPU time per sample (decoding included), measured back to
  back in one process. Targets: latent FD <= 1.2x pixel FD, latent sampling >= 3x faster per sample.
* Consistency distillation (`unifusion distill`) of the latent EDM model for `--cd-steps` steps: 1-step FD <= 1.5x
  the teacher's (Heun, 35 NFE).

FD: the Frechet distance in the shipped digits classifier's features of the images seen at 8x8
(`unifusion.data.digits32_to_digits`, the least-squares inverse of the bicubic upsampling, exact on real digits32),
at n = 360 (the test split's count, where `digits_report`'s floor is exact); `resid` is the RMS of what that 8x8
view cannot see (`residual_rms`; 0 for real digits32). Stages can run in separate processes (`--stage ae`, then
`vp` and `edm`, each `--space latent` and `--space pixel`, side by side, then `cd`, then `report`), each writing its
JSON under `--runs`; `report` writes
`bench/results/latent.json` and `.md`.

    python bench/latent.py                           # every stage, then the report
    python bench/latent.py --stage vp --budget 300   # one stage
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from unifusion.data import digits32_to_digits, load_digits32
from unifusion.data.digits32 import residual_rms
from unifusion.latent import decode_samples, load_autoencoder, train_from_config
from unifusion.metrics import digits_report
from unifusion.train import load_config, load_model
from unifusion.train.generate import generate
from unifusion.utils import atomic_write

ROOT = Path(__file__).resolve().parent
AES = {"ae4": [], "ae8": ["autoencoder.channel_mult=[1,2,4,4]"]}


def _timed(fn, *args, **kwargs):
    """`(fn(*args, **kwargs), wall seconds, process CPU seconds)`."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0, time.process_time() - c0


def _score(images: torch.Tensor) -> dict:
    rep = digits_report(digits32_to_digits(images.float()))
    return {k: rep[k] for k in ("fd", "fd_floor", "fd_ratio", "fd_floor_iid", "fd_ratio_iid", "confident_fraction",
                                "nn_ratio")} | {"resid": residual_rms(images)}


def stage_ae(runs: Path, args) -> dict:
    """Train both autoencoders (unless their run holds a checkpoint and timing) and score their reconstructions."""
    x, _ = load_digits32("test")
    out = {"real_path": _score(x)}
    for name, sets in AES.items():
        run = runs / name
        timing = run / "timing.json"
        if not timing.exists():
            cfg = load_config("digits32_ae", [f"out={run}", "train.progress=false", *sets])
            _, wall, cpu = _timed(train_from_config, cfg)
            atomic_write(timing, json.dumps({"wall_s": wall, "cpu_s": cpu}))
        t = json.loads(timing.read_text())
        ae = load_autoencoder(run)
        with torch.no_grad():
            rec = ae.images_from_latents(ae.latents_from_images(x, sample=False))
        out[name] = {"latent_shape": list(ae.latent_shape), "scale_factor": ae.scale_factor,
                     "steps": ae.checkpoint_step, "train_cpu_s": t["cpu_s"], "train_wall_s": t["wall_s"],
                     "mse": float((rec - x).pow(2).mean()), **_score(rec)}
        print(f"[{name}] {out[name]}", flush=True)
    return out


def _train_budget(config: str, run: Path, sets: list[str], budget: float, chunk: int) -> dict:
    """Train in chunks of `chunk` steps until `budget` seconds of process CPU time are spent."""
    shutil.rmtree(run, ignore_errors=True)
    cpu = wall = 0.0
    step = 0
    cfg = load_config(config, [f"out={run}", "train.progress=false", "train.decay_start=0", "train.decay_end=0",
                               "train.log_every=0", *sets])
    while cpu < budget:
        step += chunk
        cfg["train"]["steps"] = step
        _, w, c = _timed(train_from_config, cfg, resume=step > chunk)
        cpu, wall = cpu + c, wall + w
    return {"steps": step, "train_cpu_s": cpu, "train_wall_s": wall}


def _sample_scores(run: Path, n: int, steps: int, seed: int = 0) -> dict:
    model = load_model(run)
    (z, info), wall, cpu = _timed(lambda: generate(model, n, model.data_shape, sampler="heun", steps=steps, seed=seed))
    (images, _), dwall, dcpu = _timed(lambda: decode_samples(model, run, z))
    return {"nfe": info["nfe"], "sample_cpu_ms": 1000 * (cpu + dcpu) / n, "sample_wall_ms": 1000 * (wall + dwall) / n,
            "decode_cpu_ms": 1000 * dcpu / n, **_score(images)}


def stage_formulation(kind: str, space: str, runs: Path, args) -> dict:
    """The latent or pixel model of one formulation (`vp` or `edm`) at the CPU budget, then its samples."""
    run = runs / f"{space}_{kind}"
    sets = [f"latent.autoencoder={runs / 'ae4'}"] if space == "latent" else []
    res = _train_budget(f"digits32_{space}_{kind}", run, sets, args.budget,
                        args.chunk if space == "latent" else max(1, args.chunk // 8))
    res.update(_sample_scores(run, args.n, args.steps))
    print(f"[{kind}/{space}] {res}", flush=True)
    return res


def _formulation(runs: Path, kind: str) -> dict | None:
    """The latent and pixel results of one formulation and their two ratios (None if either is missing)."""
    files = [runs / f"{kind}_{space}.json" for space in ("latent", "pixel")]
    if not all(f.exists() for f in files):
        return None
    out = {space: json.loads(f.read_text()) for space, f in zip(("latent", "pixel"), files, strict=True)}
    out["fd_ratio_latent_over_pixel"] = out["latent"]["fd"] / out["pixel"]["fd"]
    out["sampling_speedup"] = out["pixel"]["sample_cpu_ms"] / out["latent"]["sample_cpu_ms"]
    return out


def stage_cd(runs: Path, args) -> dict:
    """Consistency distillation of the latent EDM model; 1-step FD against the teacher's Heun FD."""
    from unifusion.consistency import consistency_sigmas, sample_consistency
    from unifusion.consistency.task import distill_config, distill_from_config, load_consistency

    teacher, run = runs / "latent_edm", runs / "cd_latent_edm"
    sets = [f"out={run}", f"train.steps={args.cd_steps}", "train.batch_size=64", "train.lr=1e-4",
            "train.progress=false", "train.log_every=0", "consistency.N=18", "consistency.mu=0.9"]
    cfg = distill_config(teacher=str(teacher), sets=sets)
    _, wall, cpu = _timed(lambda: distill_from_config(cfg))
    f, shape = load_consistency(run)
    out = {"steps": args.cd_steps, "train_cpu_s": cpu, "train_wall_s": wall}
    for k in (1, 2):
        g = torch.Generator().manual_seed(0)
        sig = consistency_sigmas(k, f.sigma_min, f.sigma_max)
        with torch.no_grad():
            z = sample_consistency(f, sig[0].item() * torch.randn((args.n, *shape), generator=g), sig, generator=g)
        images, _ = decode_samples(f, run, z)
        out[f"{k}_step"] = _score(images)
    teacher_fd = json.loads((runs / "edm_latent.json").read_text())["fd"]
    out["teacher_fd"] = teacher_fd
    out["ratio_1step_over_teacher"] = out["1_step"]["fd"] / teacher_fd
    print(f"[cd] {out}", flush=True)
    return out


def report(runs: Path, args) -> None:
    parts = {k: json.loads((runs / f"{k}.json").read_text()) for k in ("ae", "cd") if (runs / f"{k}.json").exists()}
    parts.update({k: v for k in ("vp", "edm") if (v := _formulation(runs, k)) is not None})
    res = {"machine": platform.platform(), "torch": torch.__version__, "threads": 1, "budget_cpu_s": args.budget,
           "n": args.n, "heun_steps": args.steps, **parts}
    atomic_write(ROOT / "results" / "latent.json", json.dumps(res, indent=2))
    lines = ["# Latent diffusion: benchmark results", "",
             "Written by `bench/latent.py`; numbers in `latent.json`. One torch thread per process, CPU time = process "
             "time (the machine's 2 cores were shared with other jobs, so wall times are noisy and only context). "
             "FD in "
             f"the digits classifier's features at 8x8, n = {args.n}; `x floor` divides by the FD of the real test "
             "split (the i.i.d.-count floor, the one for unconditional samples, `digits_report`'s `fd_floor_iid`); "
             "`resid`: RMS of the 32x32 part the 8x8 view projects away (0 for real digits32).", "",
             f"Command: `python bench/latent.py --budget {args.budget:.0f} --chunk {args.chunk} --n {args.n} "
             f"--cd-steps {parts.get('cd', {}).get('steps', args.cd_steps)}` (run here as its stages, side by side: "
             "`--stage ae`, `--stage vp|edm --space latent|pixel`, `--stage cd`, `--stage report`).", ""]
    if "ae" in parts:
        a = parts["ae"]
        lines += ["## Autoencoders (reconstruction of the 360 test digits, posterior mean)", "",
                  f"Real test digits32 seen at 8x8: FD {a['real_path']['fd']:.3f} = {a['real_path']['fd_ratio']:.3f}x "
                  f"floor (the path adds nothing), resid {a['real_path']['resid']:.1e}. Target: <= 1.5x floor in "
                  "<= 600 s of training.", "",
                  "| autoencoder | latent | scale | steps | train CPU s | MSE | FD | x floor | resid | target |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name in AES:
            r = a[name]
            ok = r["fd_ratio"] <= 1.5 and r["train_cpu_s"] <= 600
            lines.append(f"| {name} (factor {4 if name == 'ae4' else 8}) | {'x'.join(map(str, r['latent_shape']))} | "
                         f"{r['scale_factor']:.3f} | {r['steps']} | {r['train_cpu_s']:.0f} | {r['mse']:.4f} | "
                         f"{r['fd']:.3f} | {r['fd_ratio']:.2f} | {r['resid']:.3f} | {'met' if ok else 'not met'} |")
        lines.append("")
    for kind in ("vp", "edm"):
        if kind not in parts:
            continue
        p = parts[kind]
        lines += [f"## {kind.upper()}: latent vs pixel, {args.budget:.0f} s of training CPU each", "",
                  "Each run trains until its process CPU time passes the budget, checked every chunk (latent: "
                  f"{args.chunk} steps, pixel: {max(1, args.chunk // 8)}), so the actual CPU times differ by up to a "
                  "chunk; the latent model's budget excludes the autoencoder's training (shared by every latent "
                  "model). Sampling: Heun, 35 NFE, CPU time per sample including decoding.", "",
                  "| space | steps | train CPU s | FD | x floor | x i.i.d.-count floor | resid | "
                  "sampling CPU ms / sample (of it decoding) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for space in ("latent", "pixel"):
            r = p[space]
            lines.append(f"| {space} | {r['steps']} | {r['train_cpu_s']:.0f} | {r['fd']:.3f} | {r['fd_ratio']:.2f} | "
                         f"{r['fd_ratio_iid']:.2f} | {r['resid']:.3f} | {r['sample_cpu_ms']:.2f} "
                         f"({r['decode_cpu_ms']:.2f}) |")
        lines += ["", f"Latent FD / pixel FD = **{p['fd_ratio_latent_over_pixel']:.2f}** (target <= 1.2: "
                      f"{'met' if p['fd_ratio_latent_over_pixel'] <= 1.2 else 'not met'}); sampling speed-up "
                      f"**{p['sampling_speedup']:.1f}x** (target >= 3: "
                      f"{'met' if p['sampling_speedup'] >= 3 else 'not met'}).", ""]
    if "cd" in parts:
        c = parts["cd"]
        lines += ["## Consistency distillation of the latent EDM model", "",
                  f"{c['steps']} steps ({c['train_cpu_s']:.0f} s CPU). Teacher (Heun, 35 NFE) FD "
                  f"{c['teacher_fd']:.3f}.", "",
                  "| sampler | FD | x floor | x teacher |", "|---|---:|---:|---:|"]
        for k in (1, 2):
            r = c[f"{k}_step"]
            lines.append(f"| consistency, {k} step{'s' if k > 1 else ''} | {r['fd']:.3f} | {r['fd_ratio']:.2f} | "
                         f"{r['fd'] / c['teacher_fd']:.2f} |")
        lines += ["", f"1-step FD / teacher FD = **{c['ratio_1step_over_teacher']:.2f}** (target <= 1.5: "
                      f"{'met' if c['ratio_1step_over_teacher'] <= 1.5 else 'not met'}).", ""]
    atomic_write(ROOT / "results" / "latent.md", "\n".join(lines))
    print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=["all", "ae", "vp", "edm", "cd", "report"], default="all")
    p.add_argument("--space", choices=["both", "latent", "pixel"], default="both",
                   help="stages vp / edm: train and score only this space (run the two side by side)")
    p.add_argument("--runs", default="runs/bench_latent", help="folder of the runs and the stages' JSON")
    p.add_argument("--budget", type=float, default=300.0, help="training CPU seconds per diffusion model")
    p.add_argument("--chunk", type=int, default=200, help="latent steps between budget checks (pixel: chunk / 8)")
    p.add_argument("--n", type=int, default=360, help="samples per FD")
    p.add_argument("--steps", type=int, default=18, help="Heun levels (2 steps - 1 NFE)")
    p.add_argument("--cd-steps", type=int, default=400)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = Path(args.runs)
    stages = ["ae", "vp", "edm", "cd", "report"] if args.stage == "all" else [args.stage]
    for s in stages:
        if s == "report":
            report(runs, args)
            continue
        if s in ("vp", "edm"):
            for space in (("latent", "pixel") if args.space == "both" else (args.space,)):
                out = stage_formulation(s, space, runs, args)
                atomic_write(runs / f"{s}_{space}.json", json.dumps(out, indent=2))
            continue
        out = (stage_ae if s == "ae" else stage_cd)(runs, args)
        atomic_write(runs / f"{s}.json", json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
