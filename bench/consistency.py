"""Consistency-model benchmark: 1-step and few-step generation against the ODE samplers.

    .venv/bin/python bench/consistency.py toy                                  # ~5 min on 2 busy cores
    .venv/bin/python bench/consistency.py digits --teacher runs/digits_ve [--cd-steps 3000] [--ct runs/ct]

`toy`: eight Gaussians (`unifusion.oracles.eight_gaussians`) with the exact oracle as teacher. A small MLP is
distilled (CD, Song et al. 2023, Algorithm 2) and trained from data (improved CT, Song & Dhariwal 2023) with the
project's training loop; samples are scored by sliced Wasserstein-2 to exact samples, next to the exact-vs-exact
floor at the same count and to the oracle's own Euler / Heun PF-ODE at equal NFE.

`digits`: CD from a trained EDM checkpoint (`unifusion train digits_ve`), and optionally a CT checkpoint
(`unifusion distill --ct digits_ve`); Frechet distance in the digits classifier's features
(`unifusion.metrics.digits_report`) at 1, 2, 3, 4 steps against the teacher's Heun with 35 NFE.

Results go to `bench/results/consistency.json` (one section per part), `consistency.md` (the tables) and
`consistency.toy.png` / `consistency.digits.png` (metric vs NFE). The intermediate level of 2-step sampling is
chosen on a validation draw (a seed not used for the reported numbers), as Song et al. 2023 tune theirs by search.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

from unifusion.consistency import ConsistencyFunction, consistency_sigmas, sample_consistency
from unifusion.consistency.task import ConsistencyTask
from unifusion.grids import edm_grid
from unifusion.utils import atomic_write
from unifusion.metrics import sliced_wasserstein
from unifusion.oracles import eight_gaussians
from unifusion.samplers import sample_euler, sample_heun
from unifusion.train import TrainConfig, fit

RESULTS = Path(__file__).resolve().parent / "results"
S_MIN, S_MAX = 0.002, 80.0



def _update_json(section: str, payload: dict) -> dict:
    path = RESULTS / "consistency.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[section] = payload
    atomic_write(path, json.dumps(data, indent=2))
    return data


def _write_markdown(data: dict) -> None:
    lines = ["# Consistency models: benchmark results", "",
             "Written by `bench/consistency.py`; the numbers and the commands are in `consistency.json`.", ""]
    for section in sorted(data, key=lambda k: (k != "toy", k != "digits", k)):
        lines += data[section]["table"] + [""]
    atomic_write(RESULTS / "consistency.md", "\n".join(lines))


def _logged_seconds(run: Path) -> float | None:
    """Training wall time of a run folder from its `log.jsonl`: the sum of (steps in window) / steps_per_s."""
    log = run / "log.jsonl"
    if not log.exists():
        return None
    total, last = 0.0, 0
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if "steps_per_s" in rec:
            total += (rec["step"] - last) / rec["steps_per_s"]
            last = rec["step"]
    return total


def _pick_two_step(score, candidates) -> float:
    """The intermediate level of 2-step sampling with the lowest `score(sigma)` (on validation draws)."""
    vals = {float(s): score(float(s)) for s in candidates}
    return min(vals, key=vals.get)


# ---- 2-D: eight Gaussians, exact oracle teacher ------------------------------------------------------------
def _toy_student(sd: float, hidden: int) -> ConsistencyFunction:
    from unifusion.nets import MLP
    return ConsistencyFunction.from_net(MLP(2, hidden=hidden, depth=3, emb_dim=64), S_MIN, S_MAX, sd)


def _train(task, data, steps: int, lr: float, seed: int = 0):
    cfg = TrainConfig(steps=steps, batch_size=512, lr=lr, warmup=100, ema_decays=(0.999,), threads=1, progress=False,
                      log_every=max(1, steps // 10))
    t0 = time.perf_counter()
    res = fit(task, data, train=cfg, seed=seed)
    seconds = time.perf_counter() - t0
    f = copy.deepcopy(task.f)
    f.denoiser.net.load_state_dict(res.ema.averaged(0)["student"].state_dict())
    return f.eval().requires_grad_(False), seconds, [(r["step"], r["loss"]) for r in res.history]


def run_toy(args) -> dict:
    torch.set_num_threads(1)
    mix = eight_gaussians()
    sd = float(((mix.means ** 2).mean() + mix.lam.mean()).sqrt())          # per-coordinate data std
    n, reps = args.n, args.repeats
    gdata = torch.Generator().manual_seed(0)
    data = mix.sample(200_000, generator=gdata, dtype=torch.float32)

    def sw(x, rep):
        ref = mix.sample(n, generator=torch.Generator().manual_seed(1000 + rep))
        return sliced_wasserstein(x.double(), ref, n_projections=512, generator=torch.Generator().manual_seed(rep))

    floor_vals = [sliced_wasserstein(mix.sample(n, generator=torch.Generator().manual_seed(2000 + r)),
                                     mix.sample(n, generator=torch.Generator().manual_seed(1000 + r)),
                                     n_projections=512, generator=torch.Generator().manual_seed(r))
                  for r in range(reps)]
    floor = sum(floor_vals) / reps

    def noise(rep):
        return torch.randn(n, 2, generator=torch.Generator().manual_seed(3000 + rep)) * S_MAX

    def score_sampler(fn, rep):
        return sw(fn(noise(rep), torch.Generator().manual_seed(4000 + rep)), rep)

    rows, curves = [], {}

    def add(method, nfe, fn, extra=None):
        vals = [score_sampler(fn, r) for r in range(reps)]
        m = sum(vals) / reps
        rows.append(dict({"method": method, "nfe": nfe, "sw2": m, "sw2_std": float(torch.tensor(vals).std()),
                          "ratio_to_floor": m / floor}, **(extra or {})))
        print(f"  {method:<34} NFE {nfe:>3}  SW2 {m:.4f}  ({m / floor:.2f}x floor)", flush=True)
        return m

    for k in (1, 2, 4, 8, 16, 32):             # the oracle's PF-ODE: Euler k steps (NFE k), Heun (NFE 2k - 1)
        sig = edm_grid(k, S_MIN, S_MAX)
        curves.setdefault("Euler (oracle)", []).append((k, add("Euler, exact oracle", k,
                                                               lambda z, g, s=sig: sample_euler(mix, z, s))))
        if k > 1:
            curves.setdefault("Heun (oracle)", []).append((2 * k - 1, add("Heun, exact oracle", 2 * k - 1,
                                                                          lambda z, g, s=sig: sample_heun(mix, z, s))))

    trained = {}
    torch.manual_seed(0)
    f = _toy_student(sd, args.hidden)
    task = ConsistencyTask(f, mix, N=args.N, mu=args.mu, distance="l2", solver="heun")
    f_cd, t_cd, hist_cd = _train(task, data, args.cd_steps, args.lr)
    trained["CD (oracle teacher)"] = (f_cd, t_cd, hist_cd, args.cd_steps)
    print(f"  CD: {args.cd_steps} steps in {t_cd:.0f} s", flush=True)
    torch.manual_seed(0)
    f = _toy_student(sd, args.hidden)
    task = ConsistencyTask(f, None, distance="pseudo_huber", total_steps=args.ct_steps)
    f_ct, t_ct, hist_ct = _train(task, data, args.ct_steps, args.lr)
    trained["CT (from data)"] = (f_ct, t_ct, hist_ct, args.ct_steps)
    print(f"  CT: {args.ct_steps} steps in {t_ct:.0f} s", flush=True)

    cands = torch.logspace(math.log10(0.05), math.log10(10.0), 13).tolist()
    chosen = {}
    for name, (fc, secs, _hist, steps) in trained.items():
        def on_levels(sig, fc=fc):
            """`(z, g) -> samples`: `fc` sampled on the levels `sig`."""
            return lambda z, g: sample_consistency(fc, z, sig, generator=g)
        s2 = _pick_two_step(lambda s, on_levels=on_levels: score_sampler(on_levels([S_MAX, s]), 99), cands)
        chosen[name] = s2
        ex = {"train_steps": steps, "train_seconds": secs}
        curve = [(1, add(f"{name}, 1 step", 1, on_levels([S_MAX]), ex))]
        curve.append((2, add(f"{name}, 2 steps, sigma_1={s2:.3g}", 2, on_levels([S_MAX, s2]), ex)))
        for k in (2, 3, 4):
            v = add(f"{name}, {k} steps, Karras levels", k, on_levels(consistency_sigmas(k, S_MIN, S_MAX)), ex)
            if k > 2:
                curve.append((k, v))
        curves[name] = curve

    from unifusion.plots import save_metric_vs_steps
    fig = save_metric_vs_steps(curves, RESULTS / "consistency.toy.png", floor=floor,
                               ylabel="sliced W2 to exact samples", xlabel="NFE (network evaluations)", logy=True,
                               title="eight Gaussians: consistency vs PF-ODE")
    cd1 = next(r for r in rows if r["method"] == "CD (oracle teacher), 1 step")
    eu1 = next(r for r in rows if r["method"] == "Euler, exact oracle" and r["nfe"] == 1)
    table = [f"## Eight Gaussians, exact oracle teacher ({n} samples, SW2 with 512 projections, mean of {reps} draws)",
             "",
             f"Exact-vs-exact floor: **{floor:.4f}**. Target: CD 1-step SW2 <= 3x floor -> measured "
             f"**{cd1['ratio_to_floor']:.2f}x** ({'met' if cd1['ratio_to_floor'] <= 3 else 'NOT met'}); "
             f"Euler 1-step: {eu1['ratio_to_floor']:.1f}x.", "",
             f"Student: MLP 128x3 (EMA 0.999 weights), batch 512, lr {args.lr}. CD: N={args.N}, mu={args.mu}, "
             f"L2, Heun teacher step, {args.cd_steps} steps in {t_cd:.0f} s. CT: pseudo-Huber, N(k) 11 -> 1281, "
             f"{args.ct_steps} steps in {t_ct:.0f} s (1 thread, shared 2-core machine).", "",
             "| method | NFE | SW2 | x floor |", "|---|---:|---:|---:|"]
    table += [f"| {r['method']} | {r['nfe']} | {r['sw2']:.4f} | {r['ratio_to_floor']:.2f} |" for r in rows]
    table += ["", f"![SW2 vs NFE]({fig.name})"]
    payload = {"command": "python bench/consistency.py toy " + " ".join(sys.argv[2:]), "n": n, "repeats": reps,
               "floor": floor, "floor_values": floor_vals, "rows": rows, "two_step_sigma": chosen,
               "history": {k: v[2] for k, v in trained.items()}, "table": table,
               "threads": torch.get_num_threads()}
    return payload


# ---- digits: CD from the trained EDM model, CT from data ---------------------------------------------------
def run_digits(args) -> dict:
    from unifusion.consistency.task import distill_config, distill_from_config, load_consistency
    from unifusion.metrics import digits_report
    from unifusion.train import load_model
    from unifusion.train.generate import generate

    torch.set_num_threads(args.threads)
    teacher = load_model(args.teacher)
    n, rows, curves = args.n, [], {}

    def fd(x, seed=0):
        return digits_report(x.reshape(x.shape[0], -1).clamp(-1, 1), floor_repeats=5, seed=seed)

    floor = None

    def add(method, nfe, make, extra=None):
        """FD of `make(seed)` samples, mean and std over `args.seeds` seeds (sampling noise, not training noise)."""
        nonlocal floor
        reps = [fd(make(seed)) for seed in range(args.seeds)]
        vals = torch.tensor([r["fd"] for r in reps], dtype=torch.float64)
        floor = reps[0]["fd_floor"]
        rows.append(dict({"method": method, "nfe": nfe, "fd": float(vals.mean()),
                          "fd_std": float(vals.std()) if len(reps) > 1 else 0.0, "fd_values": vals.tolist(),
                          "fd_floor": floor, "confident": sum(r["confident_fraction"] for r in reps) / len(reps)},
                         **(extra or {})))
        print(f"  {method:<40} NFE {nfe:>3}  FD {rows[-1]['fd']:.3f} +- {rows[-1]['fd_std']:.3f}", flush=True)
        return rows[-1]["fd"]

    for sampler, steps in (("heun", 18), ("euler", 1), ("euler", 2), ("euler", 4), ("heun", 2), ("heun", 3),
                           ("heun", 5), ("heun", 10)):
        nfe = generate(teacher, 1, (64,), sampler=sampler, steps=steps, seed=0)[1]["nfe"]
        v = add(f"teacher {sampler}", nfe,
                lambda s, sampler=sampler, steps=steps: generate(teacher, n, (64,), sampler=sampler, steps=steps,
                                                                 seed=s)[0])
        curves.setdefault(f"teacher {sampler}", []).append((nfe, v))
    teacher_fd = rows[0]["fd"]

    models = {}
    if args.cd is None:
        cfg = distill_config(teacher=args.teacher, sets=[f"train.steps={args.cd_steps}", "train.progress=false",
                                                         f"train.lr={args.cd_lr}", f"consistency.N={args.N}",
                                                         f"consistency.mu={args.mu}", f"train.threads={args.threads}",
                                                         f"train.batch_size={args.batch}", "train.warmup=0"])
        out = Path(args.out) / "cd"
        t0 = time.perf_counter()
        distill_from_config(cfg, out=out)
        models["CD"] = (out, time.perf_counter() - t0)
    else:
        models["CD"] = (Path(args.cd), _logged_seconds(Path(args.cd)))
    if args.ct is not None:
        models["CT"] = (Path(args.ct), _logged_seconds(Path(args.ct)))

    g = lambda s: torch.Generator().manual_seed(s)
    for name, (path, secs) in models.items():
        f, shape = load_consistency(path)
        z = lambda s, shape=shape, f=f: torch.randn(n, *shape, generator=g(s)) * f.sigma_max
        cands = torch.logspace(math.log10(0.1), math.log10(10.0), 9).tolist()
        s2 = _pick_two_step(lambda s, f=f, z=z: fd(sample_consistency(f, z(7), [f.sigma_max, s], generator=g(8)))["fd"],
                            cands)
        ex = {"checkpoint": str(path), "distill_seconds": secs, "train_steps": f.checkpoint_step}
        run = lambda sig, f=f, z=z: (lambda s: sample_consistency(f, z(1000 + s), sig, generator=g(2000 + s)))
        curve = [(1, add(f"{name} 1 step", 1, run([f.sigma_max]), ex))]
        curve.append((2, add(f"{name} 2 steps, sigma_1={s2:.3g}", 2, run([f.sigma_max, s2]), ex)))
        for k in (2, 3, 4):
            v = add(f"{name} {k} steps, Karras levels", k, run(consistency_sigmas(k, f.sigma_min, f.sigma_max)), ex)
            if k > 2:
                curve.append((k, v))
        curves[name] = curve

    from unifusion.plots import save_metric_vs_steps
    fig = save_metric_vs_steps(curves, RESULTS / "consistency.digits.png", floor=floor, ylabel="digits FD",
                               xlabel="NFE (network evaluations)", logy=True, title="digits: consistency vs teacher")
    table = [f"## Digits: CD from the EDM model, CT from data ({n} samples, FD in the digits classifier's features)",
             "",
             f"Teacher: `{args.teacher}` (step {teacher.checkpoint_step}); its Heun-35 FD **{teacher_fd:.3f}** "
             f"+- {rows[0]['fd_std']:.3f}; FD noise floor at n={n}: {floor:.3f}. FD: mean +- std over {args.seeds} "
             f"sampling seeds; the 2-step level sigma_1 is picked on a separate validation draw.", ""]
    for name, (path, secs) in models.items():
        one = next(r for r in rows if r["method"] == f"{name} 1 step")
        two = next(r for r in rows if r["method"].startswith(f"{name} 2 steps, sigma_1="))
        lim1 = 1.5 if name == "CD" else 2.5
        table.append(f"- {name}: 1 step {one['fd']:.3f} +- {one['fd_std']:.3f} = **{one['fd'] / teacher_fd:.2f}x** "
                     f"teacher (target <= {lim1}x: {'met' if one['fd'] <= lim1 * teacher_fd else 'NOT met'}); 2 steps "
                     f"{two['fd']:.3f} +- {two['fd_std']:.3f} = **{two['fd'] / teacher_fd:.2f}x** "
                     f"({two['method'].split(', ')[-1]})"
                     + (f" (target <= 1.2x: {'met' if two['fd'] <= 1.2 * teacher_fd else 'NOT met'})"
                        if name == "CD" else "")
                     + (f"; training wall time {secs:.0f} s ({one['train_steps']} steps)" if secs else "")
                     + f"; `{path}`.")
    table += ["", "| method | NFE | FD | x teacher Heun-35 | confident |", "|---|---:|---:|---:|---:|"]
    table += [f"| {r['method']} | {r['nfe']} | {r['fd']:.3f} +- {r['fd_std']:.3f} | {r['fd'] / teacher_fd:.2f} "
              f"| {r['confident']:.3f} |" for r in rows]
    table += ["", f"![FD vs NFE]({fig.name})"]
    return {"command": "python bench/consistency.py digits " + " ".join(sys.argv[2:]), "n": n, "rows": rows,
            "teacher": str(args.teacher), "teacher_fd": teacher_fd, "fd_floor": floor, "table": table,
            "models": {k: {"path": str(p), "distill_seconds": s} for k, (p, s) in models.items()},
            "threads": args.threads}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="part", required=True)
    t = sub.add_parser("toy")
    t.add_argument("--n", type=int, default=10000)
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--cd-steps", type=int, default=3000)
    t.add_argument("--ct-steps", type=int, default=6000)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--N", type=int, default=18)
    t.add_argument("--mu", type=float, default=0.9)
    t.add_argument("--hidden", type=int, default=128)
    d = sub.add_parser("digits")
    d.add_argument("--teacher", required=True, help="checkpoint of `unifusion train digits_ve`")
    d.add_argument("--cd", help="an existing `unifusion distill` run to evaluate instead of distilling here")
    d.add_argument("--ct", help="a `unifusion distill --ct` run to evaluate too")
    d.add_argument("--out", default="runs/bench_consistency")
    d.add_argument("--n", type=int, default=2000)
    d.add_argument("--cd-steps", type=int, default=3000)
    d.add_argument("--cd-lr", type=float, default=1e-4)
    d.add_argument("--batch", type=int, default=256)
    d.add_argument("--N", type=int, default=18)
    d.add_argument("--mu", type=float, default=0.95)
    d.add_argument("--threads", type=int, default=1)
    d.add_argument("--seeds", type=int, default=3, help="sampling seeds per row (FD mean and std)")
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = run_toy(args) if args.part == "toy" else run_digits(args)
    data = _update_json(args.part, payload)
    _write_markdown(data)
    print("\n".join(payload["table"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
