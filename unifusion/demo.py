"""`unifusion demo` (what `make demo` runs): the two formulations side by side on real data, end to end.

It trains a VP model (discrete DDPM process, eps-prediction, `L_simple`; Ho et al. 2020) and a VE model (EDM
process, preconditioned net, EDM loss; Karras et al. 2022) on scikit-learn's 8x8 digits, then samples each
with its own sampler, with the other formulation's sampler (every model is a VE-coordinate denoiser
`D(x~, sigma~)`, so a VP model runs through EDM's Heun PF-ODE solver and a VE model through DDPM's ancestral
sampler), and with the reverse SDE (Euler-Maruyama) and the probability-flow ODE (Song et al. 2021, eq. 6 and
13). It writes to `out` (default `runs/demo/`):

* `report.md`: model, sampler, NFE, Frechet distance (digits classifier features), confident fraction, seconds,
  with the noise floor (real test digits vs training digits at the same count; `unifusion.metrics`);
* `samples_*.png`: sample grids; `schedules.png`: alpha_t, sigma_t of VP vs VE processes;
  `trajectories.png`: 2-D paths of the reverse SDE vs the PF-ODE on the eight-Gaussians toy (exact oracle).

Extension point: `register_rows(fn)` adds rows to the table; `fn(ctx: DemoContext) -> list[dict]` gets the
trained models and an `evaluate(samples, label)` helper and returns rows with the keys of `ROW_KEYS`.
`main` first adds `unifusion.consistency.demo.demo_rows(ctx)` (the consistency model's 1-step and 2-step rows)
and `unifusion.guidance.demo.demo_rows(ctx)` (a class-conditional model: a 10-class grid and FD / class agreement
per classifier-free guidance scale).
The demo leaves torch's thread count to its caller (`unifusion demo` runs it on one thread); its two training
processes run one thread each.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .consistency import demo as cdemo
from .guidance import demo as gdemo
from .utils import atomic_write

__all__ = ["main", "DemoContext", "register_rows", "ROW_KEYS", "demo_configs"]

ROW_KEYS = ("model", "sampler", "role", "nfe", "fd", "confident", "seconds", "picture")
_HOOKS: list[Callable] = []


def register_rows(fn: Callable) -> Callable:
    """Add `fn(ctx) -> list[row dict]` to the demo's table (usable as a decorator)."""
    _HOOKS.append(fn)
    return fn


@dataclass
class DemoContext:
    """What a row hook gets: the run folder, the trained models and the evaluation helper.

    Attributes:
        out:         the demo's folder.
        models:      "VP" / "VE" -> trained Denoiser (EMA weights).
        checkpoints: "VP" / "VE" -> checkpoint path.
        n:           samples per row.
        seed, quick: the demo's arguments.
        evaluate:    `evaluate(samples [n, 64], label) -> {"fd", "confident", "picture"}`.
        notes:       lines a hook adds to the report.
    """

    out: Path
    models: dict
    checkpoints: dict
    n: int
    seed: int
    quick: bool
    evaluate: Callable
    notes: list = field(default_factory=list)


def demo_configs(quick: bool = False, seed: int = 0) -> dict:
    """The two training configs of the demo (shipped `digits_vp` / `digits_ve` made smaller to fit 5 minutes)."""
    from .train import load_config

    steps, hidden, depth = (60, 64, 2) if quick else (4000, 256, 3)
    common = [f"seed={seed}", f"train.steps={steps}", f"net.hidden={hidden}", f"net.depth={depth}",
              "train.progress=false", "train.ckpt_every=0", "train.ema_decays=[0.999]", "train.threads=1",
              "train.batch_size=256", "train.lr=2e-3", f"train.warmup={min(200, steps // 4)}",
              f"train.log_every={max(1, steps // 10)}"]
    return {"VP": load_config("digits_vp", common), "VE": load_config("digits_ve", common)}


def _train_one(cfg: dict) -> tuple[str, float]:
    """Train one config in this process; returns (checkpoint path, seconds)."""
    from .train import train_from_config

    t0 = time.perf_counter()
    res = train_from_config(cfg)
    return str(res.checkpoint), time.perf_counter() - t0


def _train_both(cfgs: dict, parallel: bool) -> dict:
    """Train the configs, two processes at once when `parallel` (each model on its own core)."""
    if parallel:
        import concurrent.futures as cf
        import multiprocessing as mp
        try:
            with cf.ProcessPoolExecutor(max_workers=len(cfgs), mp_context=mp.get_context("spawn"),
                                        initializer=torch.set_num_threads, initargs=(1,)) as ex:  # its own processes
                futs = {k: ex.submit(_train_one, c) for k, c in cfgs.items()}
                return {k: f.result() for k, f in futs.items()}
        except OSError:
            pass                        # no process pool here (a sandbox without semaphores): one after the other
    return {k: _train_one(c) for k, c in cfgs.items()}


def _plans(quick: bool) -> list[tuple]:
    """(model, sampler, role, grid, steps): the rows of the table."""
    from .processes import DDPM

    vp_steps = 100 if quick else 1000
    ddpm = DDPM()
    ddpm_sigmas = ddpm.sigma_ve(ddpm.timesteps_tensor().flip(0).double())
    ve_ancestral = ddpm_sigmas[ddpm_sigmas <= 80.0]                     # DDPM's own noise levels, in EDM's range
    if quick:
        ve_ancestral = ve_ancestral[:: 10]
    em = 25 if quick else 100
    return [
        ("VP", "ancestral", "own sampler (DDPM ancestral, reverse SDE)", "timesteps", vp_steps),
        ("VP", "heun", "VE sampler (EDM Heun, PF-ODE)", None, 18),
        ("VP", "euler_maruyama", "reverse SDE (Euler-Maruyama)", None, em),
        ("VP", "euler", "PF-ODE (Euler)", None, 35),
        ("VE", "heun", "own sampler (EDM Heun, PF-ODE)", None, 18),
        ("VE", "ancestral", "VP sampler (DDPM ancestral on DDPM's levels)", ve_ancestral, len(ve_ancestral)),
        ("VE", "euler_maruyama", "reverse SDE (Euler-Maruyama)", None, em),
        ("VE", "euler", "PF-ODE (Euler)", None, 35),
    ]


def _trajectories(out: Path, seed: int, quick: bool) -> Path:
    """Reverse SDE vs PF-ODE paths on the eight-Gaussians toy, with its exact denoiser (no training needed)."""
    from .grids import edm_grid
    from .oracles import eight_gaussians
    from .plots import save_trajectories
    from .samplers import get_sampler

    oracle = eight_gaussians()
    sigmas = edm_grid(40 if not quick else 10, 0.002, 20.0)
    paths = {}
    for name in ("euler_maruyama", "heun"):
        g = torch.Generator().manual_seed(seed)
        x = sigmas[0].item() * torch.randn(64, 2, generator=g, dtype=torch.float64)
        states = [x]
        get_sampler(name)(oracle, x, sigmas, generator=g, callback=lambda d, states=states: states.append(d["x_next"]))
        paths[name] = torch.stack(states)
    ref = oracle.sample(2000, generator=torch.Generator().manual_seed(seed + 1))
    return save_trajectories(paths["euler_maruyama"], paths["heun"], out / "trajectories.png", reference=ref,
                             title="eight Gaussians, exact denoiser, same start noise")


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    import resource
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _fmt(v, spec=".3g"):
    return "–" if v is None else format(v, spec)


def main(out="runs/demo", quick: bool = False, seed: int = 0, n: int | None = None,
         parallel: bool | None = None) -> Path:
    """Run the demo into `out`; returns the path of `report.md`. `quick=True`: tiny models and sample counts
    (seconds; what the tests run). `n`: samples per row (default 1000, quick 200)."""
    from .metrics import digits_report
    from .plots import save_image_grid, save_schedules
    from .processes import DDPM, EDM, VE, VP, VPCosine
    from .train import load_model
    from .train.generate import generate

    t_start, cpu_start = time.perf_counter(), _cpu_seconds()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = n or (200 if quick else 1000)
    save_schedules({"DDPM (VP)": DDPM(), "VP-SDE": VP(), "VP cosine": VPCosine(), "VE (NCSN)": VE(),
                    "EDM (VE)": EDM()}, out / "schedules.png", title="VP vs VE: the same x_t = alpha x0 + sigma eps")
    _trajectories(out, seed, quick)

    cfgs = demo_configs(quick, seed)
    for k, c in cfgs.items():
        c["out"] = str(out / f"model_{k.lower()}")
        ck = Path(c["out"]) / "checkpoint.safetensors"
        if ck.exists():
            ck.unlink()
    trained = _train_both(cfgs, parallel if parallel is not None else not quick)
    models = {k: load_model(p) for k, (p, _) in trained.items()}

    def evaluate(samples, label):
        rep = digits_report(samples.reshape(samples.shape[0], -1).clamp(-1, 1), floor_repeats=5, seed=seed)
        pic = save_image_grid(samples[:100].reshape(-1, 1, 8, 8), out / f"samples_{label}.png", title=label)
        return {"fd": rep["fd"], "confident": rep["confident_fraction"], "picture": pic.name, "report": rep}

    rows, floor = [], None
    for model, sampler, role, grid, steps in _plans(quick):
        x, info = generate(models[model], n, (64,), sampler=sampler, grid=grid, steps=steps, seed=seed)
        ev = evaluate(x, f"{model.lower()}_{sampler}_{info['nfe']}nfe")
        floor = ev["report"]
        rows.append({"model": model, "sampler": sampler, "role": role, "nfe": info["nfe"], "fd": ev["fd"],
                     "confident": ev["confident"], "seconds": info["seconds"], "picture": ev["picture"]})

    ctx = DemoContext(out, models, {k: p for k, (p, _) in trained.items()}, n, seed, quick, evaluate)
    for hook in (cdemo.demo_rows, gdemo.demo_rows, *_HOOKS):   # consistency, guidance, then registered extensions
        rows += [dict({k: None for k in ROW_KEYS}, **r) for r in hook(ctx)]

    lines = [
        "# unifusion demo: VP and VE diffusion models on digits", "",
        f"Two models trained on the {1437} training digits (8x8, as 64-d vectors in [-1, 1]): **VP** = discrete "
        "DDPM process, eps-prediction, L_simple; **VE** = EDM process, preconditioned net, EDM loss. Each is sampled "
        "by its own sampler, by the other formulation's sampler, by the reverse SDE and by the PF-ODE: every model "
        "is the same VE-coordinate denoiser D(x, sigma) to every sampler.", "",
        f"{n} samples per row. FD: Frechet distance in the feature space of the shipped digits classifier "
        "(lower is better); confident: fraction of samples it labels with p > 0.9. The floor rows are real test "
        "digits against the training digits at the same count: the test split itself (stratified: exactly the "
        "training class proportions) and the same with i.i.d. class counts, as an unconditional sampler's samples "
        "have: a model that draws fresh digits scores about the second (docs/metrics.md).", "",
        "| model | sampler | role | NFE | FD | confident | seconds | samples |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        pic = f"![]({r['picture']})" if r.get("picture") else ""
        lines.append(f"| {r['model']} | {r['sampler']} | {r['role']} | {_fmt(r['nfe'], 'd')} | {_fmt(r['fd'], '.2f')} "
                     f"| {_fmt(r['confident'], '.3f')} | {_fmt(r['seconds'], '.1f')} | {pic} |")
    if floor is not None:
        lines.append(f"| floor | real test vs train | noise floor at n={n} | – | {floor['fd_floor']:.2f} "
                     f"| {floor['confident_fraction_floor']:.3f} | – | |")
        lines.append(f"| floor | real test vs train, i.i.d. class counts | noise floor at n={n} | – "
                     f"| {floor['fd_floor_iid']:.2f} | – | – | |")
    lines += ["", "Training: " + ", ".join(f"{k} {s:.0f} s ({cfgs[k]['train']['steps']} steps, "
                                           f"MLP {cfgs[k]['net']['hidden']}x{cfgs[k]['net']['depth']})"
                                           for k, (_, s) in trained.items()),
              f"Total wall time: {time.perf_counter() - t_start:.0f} s; CPU time {_cpu_seconds() - cpu_start:.0f} s "
              f"(all processes, 1 thread each; on an idle 2-core machine the wall time is about the CPU time "
              f"minus the parallel training of one model); load average {os.getloadavg()[0]:.1f}.",
              "", "![schedules](schedules.png)", "", "![trajectories](trajectories.png)", ""]
    if ctx.notes:
        lines += ["Notes:", *[f"- {s}" for s in ctx.notes], ""]
    report = out / "report.md"
    atomic_write(report, "\n".join(lines))
    print("\n".join(lines[8:8 + len(rows) + 2]))
    print(f"report: {report}")
    return report
