"""The sampler benchmark: every sampler on exact Gaussian-mixture oracles, optionally beside k-diffusion's and
diffusers' samplers on the same oracle and the same starting noise.

    python bench/samplers.py [--peers] [--quick] [--starts N] [--seed S] [--out DIR]

(`make bench`, `make bench-peers`). How the tuned grids were fitted: `bench/sampler_tuning.py`; why a cell can be
a lottery: `bench/flip_study.py`.

* Deterministic samplers: relative endpoint error against the exact PF-ODE solution (scipy's DOP853 in
  `log sigma`, float64, rtol 1e-10, checked against rtol 1e-12 on a subset), at NFE about 5, 10, 20, 50.
  Per-point error `e_i = |x_i - x_ref_i| / RMS_j |x_ref_j|`; reported: RMS of `e` (the relative RMS error), its
  median, and the fraction of points whose nearest mixture component differs from the reference's.
* Stochastic samplers: sliced Wasserstein-2 distance to exact mixture samples, beside the exact-vs-exact floor.
* Overhead: time per step outside a near-free denoiser, batch 1 and 4096 (2-D), against k-diffusion's same
  method (with `--peers`).

Writes `samplers.md` (tables), `samplers.json` and `samplers.<oracle>.png` (log-log error vs NFE) to `--out`.
Peers are optional (`--peers`: the `[bench]` extra and `pip install --no-deps k-diffusion`); without it neither
k-diffusion nor diffusers is imported.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from functools import partial
from pathlib import Path

import torch

from unifusion import grids
from unifusion import samplers as S
from unifusion.metrics import sliced_wasserstein
from unifusion.oracles import GaussianMixture, grid_gaussians, mixture_64d
from unifusion.plots import save_error_vs_nfe
from unifusion.utils import atomic_write

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
NFES = (5, 10, 20, 50)
OURS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "lms", "hybrid")  # on the EDM grid; tuned ones on theirs too
STOCH = {"ancestral": {}, "ddim_eta0.5": {"eta": 0.5}, "euler_maruyama": {}, "pc": {"snr": 0.16},
         "edm_stochastic": {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 10.0}, "langevin": {"step_size": 2.0}}


def sharp_2d() -> GaussianMixture:
    """The sharp 2-D mixture: 25 equal components on a 5 x 5 grid, spacing 1, std 0.05 (`oracles.grid_gaussians()`)."""
    return grid_gaussians(5, spacing=1.0, std=0.05)


def oracles() -> dict:
    return {"2d-25": sharp_2d(), "64d-10": mixture_64d()}


# ---- reference and metrics ----------------------------------------------------------------------------
def pf_ode_reference(oracle, x: torch.Tensor, sigma_max: float = SIGMA_MAX, rtol: float = 1e-10,
                     sigma_end: float = 1e-6) -> tuple[torch.Tensor, int]:
    """Exact PF-ODE endpoint: scipy DOP853 on `dx/du = x - D(x, e^u)`, `u = log sigma`, from `sigma_max` to
    `sigma_end` (where `|x(sigma_end) - x(0)| ~ sigma_end^2 / std_min` is below the tolerance). Returns (x, NFE)."""
    from scipy.integrate import solve_ivp
    ones, nfe = torch.ones(x.shape[0], dtype=torch.float64), [0]

    def f(u, y):
        nfe[0] += 1
        xx = torch.from_numpy(y).reshape(x.shape)
        return (xx - oracle(xx, ones * math.exp(u))).reshape(-1).numpy()
    sol = solve_ivp(f, (math.log(sigma_max), math.log(sigma_end)), x.double().reshape(-1).numpy(), method="DOP853",
                    rtol=rtol, atol=rtol)
    if not sol.success:
        raise RuntimeError(f"reference solve failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(x.shape), nfe[0]


def endpoint_errors(out: torch.Tensor, ref: torch.Tensor, oracle) -> dict:
    """Relative RMS and median per-point error, and the fraction of points in a different mixture component."""
    out = out.double()
    if not torch.isfinite(out).all():
        return {"rms": math.inf, "median": math.inf, "mode_change": 1.0}
    scale = ref.norm(dim=1).pow(2).mean().sqrt()
    e = (out - ref).norm(dim=1) / scale
    return {"rms": e.pow(2).mean().sqrt().item(), "median": e.median().item(),
            "mode_change": (oracle.component(out) != oracle.component(ref)).double().mean().item()}


def sw2(a: torch.Tensor, b: torch.Tensor) -> float:
    """`metrics.sliced_wasserstein` with the benchmark's fixed projections (seed 0, common to every row); inf for
    samples that are not finite (a diverged sampler)."""
    if not torch.isfinite(a).all():
        return math.inf
    return sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(0))


# ---- our samplers at a target NFE ---------------------------------------------------------------------
def _steps_for(name: str, nfe: int) -> int:
    """Number of grid levels n giving about `nfe` evaluations (Heun: 2n - 1)."""
    return max(1, (nfe + 1) // 2) if name == "heun" else nfe


def run_ours(name: str, oracle, x, nfe: int, grid: str = "edm"):
    """(endpoint, actual NFE) of our sampler `name` on the EDM rho=7 grid, or on its RECOMMENDED grid."""
    n = _steps_for(name, nfe)
    sig = S.RECOMMENDED[name](n, SIGMA_MIN, SIGMA_MAX) if grid == "recommended" else \
        grids.edm_grid(n, SIGMA_MIN, SIGMA_MAX)
    counted = S.count_nfe(oracle)
    return S.get_sampler(name)(counted, x, sig), counted.nfe


def run_dopri5(oracle, x, rtol: float):
    counted = S.count_nfe(oracle)
    out = S.sample_dopri5(counted, x, grids.grid_from_list([SIGMA_MAX, SIGMA_MIN, 0.0]), rtol=rtol, atol=rtol * 1e-2)
    return out, counted.nfe


# ---- peers ---------------------------------------------------------------------------------------------
def load_k_diffusion(*names: str) -> tuple:
    """k-diffusion's modules `names` (e.g. "sampling", "external") on their own: its package `__init__` imports
    torchvision and scikit-image, which do not import beside this torch (k-diffusion is installed with `--no-deps` for
    that reason). Their own imports (scipy, torchdiffeq, torchsde) come from the `[bench]` extra or the dev set-up;
    stubbed: the parent package and `k_diffusion.utils.append_dims`, the one helper the samplers and the model
    wrappers use (its module imports torchvision). Returns the modules in the order of `names`."""
    import importlib.util
    import types
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed: pip install --no-deps k-diffusion")
    root = Path(list(spec.submodule_search_locations)[0])
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = []
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    pkg.utils = utils
    stubs = {"k_diffusion": pkg, "k_diffusion.utils": utils}
    saved = {k: sys.modules.get(k) for k in [*stubs, *(f"k_diffusion.{n}" for n in names)]}
    sys.modules.update(stubs)
    try:
        for name in names:  # in order: "external" imports the "sampling" loaded before it
            mspec = importlib.util.spec_from_file_location(f"k_diffusion.{name}", root / f"{name}.py")
            mod = sys.modules[mspec.name] = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(mod)
            setattr(pkg, name, mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return tuple(getattr(pkg, name) for name in names)


def load_k_diffusion_sampling():
    """k-diffusion's `sampling.py` on its own (`load_k_diffusion`)."""
    return load_k_diffusion("sampling")[0]


def _no_noise(sigma, sigma_next):
    raise AssertionError("eta=0 draws no noise")


def k_diffusion_peers(K) -> dict:
    """name -> (fn(model, x, sigmas), nfe -> n levels): k-diffusion's deterministic samplers."""
    def levels(nfe):
        return nfe

    def heun_levels(nfe):
        return max(1, (nfe + 1) // 2)
    quiet = {"disable": True}
    return {
        "k:euler": (partial(K.sample_euler, **quiet), levels),
        "k:heun": (partial(K.sample_heun, **quiet), heun_levels),
        "k:lms": (partial(K.sample_lms, **quiet), levels),
        "k:dpmpp_2m": (partial(K.sample_dpmpp_2m, **quiet), levels),
        "k:dpmpp_3m": (partial(K.sample_dpmpp_3m_sde, eta=0.0, noise_sampler=_no_noise, **quiet), levels),
    }


def _run_k_diffusion(fn, oracle, x, n):
    """Run a k-diffusion sampler on the EDM grid of `n` levels. Returns (endpoints, NFE)."""
    counted = S.count_nfe(oracle)
    out = fn(counted, x, grids.edm_grid(n, SIGMA_MIN, SIGMA_MAX))
    return out, counted.nfe


def _diffusers_run(make, oracle, x, n):
    """Run a diffusers multistep scheduler (VP state `x_t = x~ / sqrt(1 + sigma^2)`, eps-prediction) on `n` Karras
    levels 80 -> 0.002 exactly: a 1000-step table spanning [0.002, 80] in log sigma, whose Karras levels are then
    replaced by our float64 grid rounded to the scheduler's float32 (the scheduler's own final entry is kept).
    The oracle answers at the scheduler's current sigma. Returns (x~ at the end, NFE)."""
    table = torch.exp(torch.linspace(math.log(SIGMA_MIN), math.log(SIGMA_MAX), 1000, dtype=torch.float64))
    abar = 1 / (1 + table ** 2)
    betas = 1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    sched = make(betas.tolist())
    sched.set_timesteps(n)
    sig = sched.sigmas.clone()
    sig[:n] = grids.edm_grid(n, SIGMA_MIN, SIGMA_MAX, zero=False).to(sig.dtype)
    sched.sigmas = sig
    sample, nfe = x / math.sqrt(1 + SIGMA_MAX ** 2), 0
    for k, t in enumerate(sched.timesteps):
        s = float(sched.sigmas[k])
        xt = sample * math.sqrt(1 + s * s)
        eps = (xt - oracle(xt, s)) / s
        nfe += 1
        sample = sched.step(eps, t, sample).prev_sample
    s_end = float(sched.sigmas[-1])
    return sample * math.sqrt(1 + s_end * s_end), nfe


def diffusers_peers() -> dict:
    import diffusers
    common = dict(num_train_timesteps=1000, prediction_type="epsilon", use_karras_sigmas=True)

    def mk(cls, **kw):
        return lambda betas: cls(trained_betas=betas, **common, **kw)
    table = {
        "d:deis3": mk(diffusers.DEISMultistepScheduler, solver_order=3),
        "d:unipc2": mk(diffusers.UniPCMultistepScheduler, solver_order=2),
        "d:unipc3": mk(diffusers.UniPCMultistepScheduler, solver_order=3),
        "d:dpmpp_2m": mk(diffusers.DPMSolverMultistepScheduler, solver_order=2, algorithm_type="dpmsolver++"),
    }
    return {name: (make, lambda nfe: nfe) for name, make in table.items()}


# ---- overhead ------------------------------------------------------------------------------------------
def _time(fn, repeat: int, *args, **kwargs) -> float:
    """The best of `repeat` wall times of `fn(*args, **kwargs)`, in seconds."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best


def _free(x, sigma, **kwargs):
    """A near-free denoiser `D(x, sigma) = 0.5 x`: what is left of a sampler's time is its own overhead."""
    return x * 0.5


def _calls(denoiser, n: int, x, sigma) -> None:
    """`n` calls of `denoiser`, each with a fresh per-example sigma tensor (as a sampler makes one per step)."""
    for _ in range(n):
        denoiser(x, sigma * 1.0)


OVERHEAD_PAIRS = [("euler", "sample_euler", {}), ("heun", "sample_heun", {}), ("dpmpp_2m", "sample_dpmpp_2m", {}),
                  ("dpmpp_3m", "sample_dpmpp_3m_sde", {"eta": 0.0, "noise_sampler": _no_noise}),
                  ("ancestral", "sample_euler_ancestral", {})]  # (ours, k-diffusion's, its options)


def overhead(K=None, steps: int = 50, repeat: int = 5) -> list[dict]:
    """Seconds per step outside a near-free denoiser `D(x, sigma) = 0.5 x`, batch 1 and 4096 (2-D), for our
    sampler and k-diffusion's same method (if loaded); also the bare denoiser time per call."""
    sig = grids.edm_grid(steps, SIGMA_MIN, SIGMA_MAX)
    rows = []
    for batch in (1, 4096):
        x = torch.randn(batch, 2)
        bare = _time(_calls, repeat, _free, steps, x, torch.ones(batch)) / steps
        for ours, theirs, kw in OVERHEAD_PAIRS:
            counted = S.count_nfe(_free)
            S.get_sampler(ours)(counted, x, sig)
            nfe = counted.nfe
            t_ours = _time(S.get_sampler(ours), repeat, _free, x, sig, generator=torch.Generator().manual_seed(0))
            row = {"batch": batch, "sampler": ours, "steps": steps, "bare_per_call_us": 1e6 * bare,
                   "ours_overhead_per_step_us": 1e6 * (t_ours - nfe * bare) / steps}
            if K is not None:
                t_k = _time(getattr(K, theirs), repeat, _free, x, sig.float(), disable=True, **kw)
                row["k_overhead_per_step_us"] = 1e6 * (t_k - nfe * bare) / steps
            rows.append(row)
    return rows


# ---- the run -------------------------------------------------------------------------------------------
def _reference(oracle, x, log) -> tuple[torch.Tensor, dict]:
    """The PF-ODE reference endpoints of the starts `x` and its check against a tighter solve on 200 of them."""
    t0 = time.perf_counter()
    ref, ref_nfe = pf_ode_reference(oracle, x)
    sub = slice(0, min(x.shape[0], 200))
    tight, _ = pf_ode_reference(oracle, x[sub], rtol=1e-12)
    check = endpoint_errors(ref[sub], tight, oracle)
    worst = ((ref[sub] - tight).norm(dim=1) / tight.norm(dim=1).pow(2).mean().sqrt()).max().item()
    log(f"reference: {ref_nfe} NFE, vs rtol 1e-12 on {sub.stop} starts: rms {check['rms']:.1e}")
    return ref, {"nfe": ref_nfe, "seconds": time.perf_counter() - t0, "vs_rtol_1e-12_rms": check["rms"],
                 "vs_rtol_1e-12_max": max(worst, 0.0)}


def _deterministic(oracle, x, ref, nfes, peer_table: dict, log) -> list[dict]:
    """One row per (sampler, grid, target NFE): ours on the EDM grid and on their tuned grids, the peers on the
    EDM grid, and dopri5 at three tolerances (`nfe_target` None)."""
    cases = []  # (sampler, grid, nfe_target, source, run: () -> (endpoints, nfe))
    for nfe_t in nfes:
        for name, grid in [(n, "edm") for n in OURS] + [(n, "recommended") for n in grids.TUNED]:
            cases.append((name, grid, nfe_t, "unifusion", partial(run_ours, name, oracle, x, nfe_t, grid)))
        for pname, (fn, levels) in peer_table.items():
            run_peer = _run_k_diffusion if pname.startswith("k:") else _diffusers_run
            cases.append((pname, "edm", nfe_t, pname.split(":")[0], partial(run_peer, fn, oracle, x, levels(nfe_t))))
    for rtol in (1e-2, 1e-3, 1e-4):
        cases.append(("dopri5", f"rtol={rtol:g}", None, "unifusion", partial(run_dopri5, oracle, x, rtol)))
    rows = []
    for sampler, grid, nfe_target, source, go in cases:
        out, nfe = go()
        row = {"sampler": sampler, "grid": grid, "nfe_target": nfe_target, "nfe": nfe, "source": source,
               **endpoint_errors(out, ref, oracle)}
        rows.append(row)
        log(f"{sampler:>16s} {grid:>11s} NFE {nfe:3d}: rms {row['rms']:.4f} median {row['median']:.4f}"
            f" mode-change {row['mode_change']:.3f}")
    return rows


def _stochastic(oracle, x, seed: int, log) -> list[dict]:
    """SW2 of each stochastic sampler's samples (NFE about 20 and 100) to exact samples, beside the exact-vs-exact
    floor."""
    exact = oracle.sample(x.shape[0], generator=torch.Generator().manual_seed(seed + 1))
    floor = sw2(exact, oracle.sample(x.shape[0], generator=torch.Generator().manual_seed(seed + 2)))
    rows = []
    for name, opts in STOCH.items():
        base = name.split("_eta")[0]
        for nfe_t in (20, 100):
            if base == "langevin":
                levels = max(1, nfe_t // 5)
                sig = grids.geometric_grid(levels, 0.01, SIGMA_MAX, zero=True)
                opts = {**opts, "n_steps_each": max(1, (nfe_t - 1) // levels)}
            else:
                n = max(1, (nfe_t + 1) // 2) if base in ("pc", "edm_stochastic") else nfe_t
                sig = grids.edm_grid(n, SIGMA_MIN, SIGMA_MAX)
            counted = S.count_nfe(oracle)
            out = S.get_sampler(base)(counted, x, sig, generator=torch.Generator().manual_seed(seed + 3), **opts)
            rows.append({"sampler": name, "nfe": counted.nfe, "sw2": sw2(out, exact), "floor": floor})
            log(f"{name:>16s} NFE {counted.nfe:3d}: SW2 {rows[-1]['sw2']:.4f} (exact-vs-exact floor {floor:.4f})")
    return rows


def run(starts: int = 2000, nfes=NFES, peers: bool = False, stochastic: bool = True, seed: int = 0,
        log=print) -> dict:
    """The whole benchmark on `starts` starting points of seed `seed` per oracle; returns what `samplers.json`
    holds."""
    K = load_k_diffusion_sampling() if peers else None
    peer_table = {}
    if peers:
        peer_table.update(k_diffusion_peers(K))
        try:
            peer_table.update(diffusers_peers())
        except ImportError as e:  # diffusers is optional even with --peers
            log(f"diffusers not available ({e}); only k-diffusion peers")
    results = {"config": {"starts": starts, "nfes": list(nfes), "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX,
                          "default_sampler": S.DEFAULT_SAMPLER, "seed": seed, "torch": torch.__version__},
               "deterministic": [], "stochastic": [], "reference": {}, "overhead": []}
    for oname, oracle in oracles().items():
        olog = partial(_prefixed, log, f"[{oname}] ")
        x = SIGMA_MAX * torch.randn(starts, oracle.dim, generator=torch.Generator().manual_seed(seed),
                                    dtype=torch.float64)
        ref, results["reference"][oname] = _reference(oracle, x, olog)
        rows = _deterministic(oracle, x, ref, nfes, peer_table, olog)
        results["deterministic"] += [{"oracle": oname, **r} for r in rows]
        if stochastic:
            results["stochastic"] += [{"oracle": oname, **r} for r in _stochastic(oracle, x, seed, olog)]
    results["overhead"] = overhead(K)
    return results


def _prefixed(log, prefix: str, msg: str) -> None:
    log(prefix + msg)


# ---- outputs -------------------------------------------------------------------------------------------
def markdown(results: dict) -> str:
    """`samplers.md`: the reference check, then per oracle the deterministic table and ours vs the best peer, the
    stochastic table and the overhead table."""
    cfg = results["config"]
    lines = ["# Sampler benchmark (exact Gaussian-mixture oracles)", "",
             f"sigma {cfg['sigma_max']} -> {cfg['sigma_min']} -> 0, {cfg['starts']} starts, float64, torch "
             f"{cfg['torch']}. Error per point = |x - x_ref| / RMS|x_ref|; rms / median over points; "
             f"mode = fraction of points ending in another component. Default sampler: `{cfg['default_sampler']}` "
             f"on its recommended grid.", ""]
    for oname, ref in results["reference"].items():
        lines.append(f"Reference `{oname}`: DOP853 rtol 1e-10, {ref['nfe']} NFE; against rtol 1e-12 on 200 starts: "
                     f"rms {ref['vs_rtol_1e-12_rms']:.1e}, max {ref['vs_rtol_1e-12_max']:.1e}.")
    lines.append("")
    for oname in results["reference"]:
        lines += _md_deterministic(results, oname) + _md_best(results, oname) + [""]
    if results["stochastic"]:
        lines += ["## Stochastic samplers: sliced W2 to exact samples", "",
                  "| oracle | sampler | NFE | SW2 | exact floor |", "|---|---|---|---|---|"]
        lines += [f"| {r['oracle']} | {r['sampler']} | {r['nfe']} | {r['sw2']:.4f} | {r['floor']:.4f} |"
                  for r in results["stochastic"]]
        lines.append("")
    if results["overhead"]:
        lines += ["## Overhead per step outside a near-free denoiser (microseconds)", "",
                  "| batch | sampler | bare denoiser / call | unifusion | k-diffusion |", "|---|---|---|---|---|"]
        for r in results["overhead"]:
            k = r.get("k_overhead_per_step_us")
            lines.append(f"| {r['batch']} | {r['sampler']} | {r['bare_per_call_us']:.1f} | "
                         f"{r['ours_overhead_per_step_us']:.1f} | {'' if k is None else f'{k:.1f}'} |")
        lines.append("")
    return "\n".join(lines)


def _md_deterministic(results: dict, oname: str) -> list[str]:
    """One oracle's table: a row per (sampler, grid), a column per target NFE, then the dopri5 rows."""
    rows = [r for r in results["deterministic"] if r["oracle"] == oname and r["nfe_target"] is not None]
    targets = sorted({r["nfe_target"] for r in rows})
    lines = [f"## {oname}: deterministic samplers, rms / median (NFE)", "",
             "| sampler | grid | " + " | ".join(f"NFE~{t}" for t in targets) + " |",
             "|---|---|" + "---|" * len(targets)]
    cell = {(r["sampler"], r["grid"], r["nfe_target"]): f"{r['rms']:.3g} / {r['median']:.3g} ({r['nfe']})"
            for r in rows}
    for sampler, grid in dict.fromkeys((r["sampler"], r["grid"]) for r in rows):
        lines.append(f"| {sampler} | {grid} | " + " | ".join(cell.get((sampler, grid, t), "") for t in targets) + " |")
    for r in results["deterministic"]:
        if r["oracle"] == oname and r["nfe_target"] is None:
            lines.append(f"| {r['sampler']} | {r['grid']} | rms {r['rms']:.3g} / median {r['median']:.3g} at NFE "
                         f"{r['nfe']} |" + " |" * (len(targets) - 1))
    return lines


def _md_best(results: dict, oname: str) -> list[str]:
    best = _best_vs_peers(results, oname)
    if not best:
        return []
    lines = ["", "Best of ours vs best peer (same run):", "",
             "| NFE | ours rms | peer rms | ratio | ours median | peer median | ratio |",
             "|---|---|---|---|---|---|---|"]
    for t, b in best.items():
        lines.append(f"| {t} | {b['ours_rms']:.3g} ({b['ours_rms_by']}) | {b['peer_rms']:.3g} ({b['peer_rms_by']}) | "
                     f"{b['ours_rms'] / b['peer_rms']:.2f} | {b['ours_median']:.3g} ({b['ours_median_by']}) | "
                     f"{b['peer_median']:.3g} ({b['peer_median_by']}) | {b['ours_median'] / b['peer_median']:.2f} |")
    return lines


def _best_vs_peers(results, oname) -> dict:
    rows = [r for r in results["deterministic"] if r["oracle"] == oname and r["nfe_target"] is not None]
    out = {}
    for t in sorted({r["nfe_target"] for r in rows}):
        ours = [r for r in rows if r["nfe_target"] == t and r["source"] == "unifusion" and r["nfe"] <= t]
        peers = [r for r in rows if r["nfe_target"] == t and r["source"] != "unifusion" and r["nfe"] <= t]
        if not ours or not peers:
            continue
        b = {}
        for m in ("rms", "median"):
            o, p = min(ours, key=lambda r, m=m: r[m]), min(peers, key=lambda r, m=m: r[m])
            b.update({f"ours_{m}": o[m], f"ours_{m}_by": f"{o['sampler']}/{o['grid']}", f"peer_{m}": p[m],
                      f"peer_{m}_by": p["sampler"]})
        out[t] = b
    return out


def plot(results: dict, out: Path) -> list[Path]:
    """`samplers.<oracle>.png` per oracle: relative RMS endpoint error against NFE of each (sampler, grid),
    log-log (`plots.save_error_vs_nfe`); peers dashed, the default sampler on its grid drawn thick."""
    paths = []
    for oname in results["reference"]:
        curves = {}
        for r in results["deterministic"]:
            if r["oracle"] == oname and r["nfe_target"] is not None and math.isfinite(r["rms"]):
                curves.setdefault(f"{r['sampler']} ({r['grid']})", []).append((r["nfe"], r["rms"]))
        styles = {label: {"ls": "--"} for label in curves if ":" in label}
        default = f"{results['config']['default_sampler']} (recommended)"
        if default in curves:
            styles[default] = {"lw": 2.5}
        paths.append(save_error_vs_nfe(curves, out / f"samplers.{oname}.png", styles=styles,
                                       title=f"{oname}: relative RMS endpoint error"))
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench/samplers.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", action="store_true",
                    help="also run k-diffusion's and diffusers' samplers ([bench] extra; `make bench-peers`)")
    ap.add_argument("--quick", action="store_true", help="200 starts, NFE 5/10/20, no stochastic samplers")
    ap.add_argument("--starts", type=int, default=None,
                    help="number of starting points (default 2000; 200 with --quick)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the starting noise")
    ap.add_argument("--out", default="bench/results", help="output directory (default bench/results)")
    args = ap.parse_args(argv)
    starts = args.starts if args.starts is not None else (200 if args.quick else 2000)
    if starts < 10:
        ap.error(f"--starts must be >= 10, got {starts}")
    t0 = time.perf_counter()
    try:
        results = run(starts=starts, nfes=(5, 10, 20) if args.quick else NFES, peers=args.peers,
                      stochastic=not args.quick, seed=args.seed)
    except ImportError as e:
        print(f"bench/samplers.py: error: {e}", file=sys.stderr)
        return 2
    results["config"]["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    atomic_write(out / "samplers.json", json.dumps(results, indent=1))
    atomic_write(out / "samplers.md", markdown(results))
    figures = plot(results, out)
    print(f"wrote {out}/samplers.md, samplers.json, {', '.join(f.name for f in figures)} in "
          f"{results['config']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
