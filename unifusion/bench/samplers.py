"""`unifusion bench samplers`: every sampler on exact Gaussian-mixture oracles, optionally beside k-diffusion's
and diffusers' samplers on the same oracle and the same starting noise.

* Deterministic samplers: relative endpoint error against the exact PF-ODE solution (scipy's DOP853 in
  `log sigma`, float64, rtol 1e-10, checked against rtol 1e-12 on a subset), at NFE about 5, 10, 20, 50.
  Per-point error `e_i = |x_i - x_ref_i| / RMS_j |x_ref_j|`; reported: RMS of `e` (the relative RMS error), its
  median, and the fraction of points whose nearest mixture component differs from the reference's.
* Stochastic samplers: sliced Wasserstein-2 distance to exact mixture samples, beside the exact-vs-exact floor.
* Overhead: time per step outside a near-free denoiser, batch 1 and 4096 (2-D), against k-diffusion's same
  method (with `--peers`).

Writes `samplers.md` (tables), `samplers.json` and `samplers.png` (log-log error vs NFE) to `--out`.
Peers are optional (`--peers`); without it neither k-diffusion nor diffusers is imported.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from .. import grids
from ..utils import atomic_write
from ..oracles import GaussianMixture, eight_gaussians, grid_gaussians, mixture_64d
from .. import samplers as S

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
NFES = (5, 10, 20, 50)
OURS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "lms", "hybrid")  # on the EDM grid; tuned ones also on their own
STOCH = {"ancestral": {}, "ddim_eta0.5": {"eta": 0.5}, "euler_maruyama": {}, "pc": {"snr": 0.16},
         "edm_stochastic": {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 10.0}, "langevin": {"step_lr": 2e-4}}


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


def sliced_w2(a: torch.Tensor, b: torch.Tensor, n_proj: int = 256, generator=None) -> float:
    """Sliced Wasserstein-2 distance between equal-size samples (Rabin et al. 2011): sorted 1-D projections."""
    d = torch.randn(a.shape[1], n_proj, generator=generator, dtype=torch.float64)
    d = d / d.norm(dim=0, keepdim=True)
    pa, pb = torch.sort(a.double() @ d, 0).values, torch.sort(b.double() @ d, 0).values
    return (pa - pb).pow(2).mean().sqrt().item()


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
def load_k_diffusion_sampling():
    """k-diffusion's `sampling.py` on its own: its package `__init__` imports torchvision and scikit-image, which
    do not import beside this torch. Stubs: the parent package, `k_diffusion.utils.append_dims` (the one helper
    the deterministic samplers use), `torchsde` and `torchdiffeq` (used only by samplers not called here)."""
    import importlib.util
    import types
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed: pip install --no-deps k-diffusion")
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = []
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    pkg.utils = utils
    stubs = {"k_diffusion": pkg, "k_diffusion.utils": utils}
    for mod in ("torchsde", "torchdiffeq"):
        if importlib.util.find_spec(mod) is None:
            stub = types.ModuleType(mod)
            stub.odeint = stub.BrownianInterval = None
            stubs[mod] = stub
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        mspec = importlib.util.spec_from_file_location("k_diffusion.sampling", path)
        mod = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


def _no_noise(sigma, sigma_next):
    raise AssertionError("eta=0 draws no noise")


def k_diffusion_peers(K) -> dict:
    """name -> (fn(model, x, sigmas), nfe -> n levels): k-diffusion's deterministic samplers."""
    quiet = {"disable": True}
    return {
        "k:euler": (lambda m, x, s: K.sample_euler(m, x, s, **quiet), lambda nfe: nfe),
        "k:heun": (lambda m, x, s: K.sample_heun(m, x, s, **quiet), lambda nfe: max(1, (nfe + 1) // 2)),
        "k:lms": (lambda m, x, s: K.sample_lms(m, x, s, **quiet), lambda nfe: nfe),
        "k:dpmpp_2m": (lambda m, x, s: K.sample_dpmpp_2m(m, x, s, **quiet), lambda nfe: nfe),
        "k:dpmpp_3m": (lambda m, x, s: K.sample_dpmpp_3m_sde(m, x, s, eta=0.0, noise_sampler=_no_noise, **quiet), lambda nfe: nfe),
    }


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
def _time(fn, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def overhead(K=None, steps: int = 50, repeat: int = 5) -> list[dict]:
    """Seconds per step outside a near-free denoiser `D(x, sigma) = 0.5 x`, batch 1 and 4096 (2-D), for our
    sampler and k-diffusion's same method (if loaded); also the bare denoiser time per call."""
    free = lambda x, sigma, **kw: x * 0.5
    sig = grids.edm_grid(steps, SIGMA_MIN, SIGMA_MAX)
    pairs = [("euler", "sample_euler", {}), ("heun", "sample_heun", {}), ("dpmpp_2m", "sample_dpmpp_2m", {}),
             ("dpmpp_3m", "sample_dpmpp_3m_sde", {"eta": 0.0, "noise_sampler": _no_noise}), ("ancestral", "sample_euler_ancestral", {})]
    rows = []
    for batch in (1, 4096):
        x = torch.randn(batch, 2)
        s_in = torch.ones(batch)
        bare = _time(lambda: [free(x, s_in * 1.0) for _ in range(steps)], repeat) / steps
        for ours, theirs, kw in pairs:
            counted = S.count_nfe(free)
            S.get_sampler(ours)(counted, x, sig)
            nfe = counted.nfe
            t_ours = _time(lambda: S.get_sampler(ours)(free, x, sig, generator=torch.Generator().manual_seed(0)), repeat)
            row = {"batch": batch, "sampler": ours, "steps": steps, "bare_per_call_us": 1e6 * bare,
                   "ours_overhead_per_step_us": 1e6 * (t_ours - nfe * bare) / steps}
            if K is not None:
                kfn = getattr(K, theirs)
                sk = sig.float()
                t_k = _time(lambda: kfn(free, x, sk, disable=True, **kw), repeat)
                row["k_overhead_per_step_us"] = 1e6 * (t_k - nfe * bare) / steps
            rows.append(row)
    return rows


# ---- the run -------------------------------------------------------------------------------------------
def run(starts: int = 2000, nfes=NFES, peers: bool = False, stochastic: bool = True, seed: int = 0,
        log=print) -> dict:
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
        g = torch.Generator().manual_seed(seed)
        x = SIGMA_MAX * torch.randn(starts, oracle.dim, generator=g, dtype=torch.float64)
        t0 = time.perf_counter()
        ref, ref_nfe = pf_ode_reference(oracle, x)
        sub = slice(0, min(starts, 200))
        tight, _ = pf_ode_reference(oracle, x[sub], rtol=1e-12)
        check = endpoint_errors(ref[sub], tight, oracle)
        results["reference"][oname] = {"nfe": ref_nfe, "seconds": time.perf_counter() - t0,
                                       "vs_rtol_1e-12_rms": check["rms"], "vs_rtol_1e-12_max": max(
                                           ((ref[sub] - tight).norm(dim=1) / tight.norm(dim=1).pow(2).mean().sqrt()).max().item(), 0.0)}
        log(f"[{oname}] reference: {ref_nfe} NFE, vs rtol 1e-12 on {sub.stop} starts: rms {check['rms']:.1e}")

        def record(sampler, grid, nfe_target, out, nfe, source):
            row = {"oracle": oname, "sampler": sampler, "grid": grid, "nfe_target": nfe_target, "nfe": nfe,
                   "source": source, **endpoint_errors(out, ref, oracle)}
            results["deterministic"].append(row)
            log(f"[{oname}] {sampler:>16s} {grid:>11s} NFE {nfe:3d}: rms {row['rms']:.4f} median {row['median']:.4f}"
                f" mode-change {row['mode_change']:.3f}")
        for nfe_t in nfes:
            for name, grid in [(n, "edm") for n in OURS] + [(n, "recommended") for n in grids.TUNED]:
                out, nfe = run_ours(name, oracle, x, nfe_t, grid)
                record(name, grid, nfe_t, out, nfe, "unifusion")
            for pname, (fn, levels) in peer_table.items():
                n = levels(nfe_t)
                if pname.startswith("k:"):
                    counted = S.count_nfe(oracle)
                    out = fn(counted, x, grids.edm_grid(n, SIGMA_MIN, SIGMA_MAX))
                    nfe = counted.nfe
                else:
                    out, nfe = _diffusers_run(fn, oracle, x, n)
                record(pname, "edm", nfe_t, out, nfe, pname.split(":")[0])
        for rtol in (1e-2, 1e-3, 1e-4):
            out, nfe = run_dopri5(oracle, x, rtol)
            record("dopri5", f"rtol={rtol:g}", None, out, nfe, "unifusion")
        if stochastic:
            exact = oracle.sample(starts, generator=torch.Generator().manual_seed(seed + 1))
            exact2 = oracle.sample(starts, generator=torch.Generator().manual_seed(seed + 2))
            floor = sliced_w2(exact, exact2, generator=torch.Generator().manual_seed(0))
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
                    sw = sliced_w2(out, exact, generator=torch.Generator().manual_seed(0))
                    results["stochastic"].append({"oracle": oname, "sampler": name, "nfe": counted.nfe, "sw2": sw,
                                                  "floor": floor})
                    log(f"[{oname}] {name:>16s} NFE {counted.nfe:3d}: SW2 {sw:.4f} (exact-vs-exact floor {floor:.4f})")
    results["overhead"] = overhead(K)
    return results


# ---- why a cell is a lottery: the starts that flip -----------------------------------------------------
def flip_study(oracle_name: str = "64d-10", nfe: int = 20, starts: int = 2000, seed: int = 0, max_nfe: int = 200,
               peers: bool = True, log=print) -> dict:
    """The starts that `hybrid` (tuned grid or EDM grid) sends to another component at `nfe` on a benchmark oracle
    (same starts as `run`): for each, the smallest NFE from which each grid stays in the reference's component up
    to `max_nfe` (and the NFE values that still flip above `nfe`), whether the tuned grid with its first step
    (sigma_max -> sigma_hi) split in two at the geometric mean still flips it, whether `dopri5` (rtol 1e-2, 1e-3; one step size
    for the whole batch, as in `run`) flips it and at what NFE, and every method's RMS at `nfe` with and without
    the flipping starts. Measurement only: nothing here is fitted."""
    oracle = oracles()[oracle_name]
    x = SIGMA_MAX * torch.randn(starts, oracle.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref, _ = pf_ode_reference(oracle, x)
    comp = oracle.component(ref)
    methods = {"hybrid/recommended": run_ours("hybrid", oracle, x, nfe, "recommended")[0],
               "hybrid/edm": run_ours("hybrid", oracle, x, nfe, "edm")[0]}
    if peers:
        K = load_k_diffusion_sampling()
        for pname, (fn, levels) in k_diffusion_peers(K).items():
            methods[pname] = fn(oracle, x, grids.edm_grid(levels(nfe), SIGMA_MIN, SIGMA_MAX))
        try:
            for pname, (fn, levels) in diffusers_peers().items():
                methods[pname] = _diffusers_run(fn, oracle, x, levels(nfe))[0]
        except ImportError as e:
            log(f"diffusers not available ({e})")
    flips = {m: [int(i) for i in torch.nonzero(oracle.component(out) != comp).flatten()] for m, out in methods.items()}
    ours = sorted(set(flips["hybrid/recommended"]) | set(flips["hybrid/edm"]))
    scale = ref.norm(dim=1).pow(2).mean().sqrt()
    res = {"oracle": oracle_name, "nfe": nfe, "starts": starts, "seed": seed, "flips": flips, "studied": ours,
           "ref_norm_rms": scale.item(), "per_start": {}, "rms": {}}
    for i in ours:
        xi, ci, row = x[i:i + 1], comp[i:i + 1], {}
        for grid in ("recommended", "edm"):
            bad = [n for n in range(nfe, max_nfe + 1)
                   if (oracle.component(run_ours("hybrid", oracle, xi, n, grid)[0]) != ci).item()]
            row[f"hybrid/{grid}"] = {"flips_at": bad, "ok_from": (max(bad) + 1) if bad else nfe}
        split = {}
        for n in sorted({nfe, 50, 100, max_nfe}):  # the tuned grid with one more level inside its first step
            g = grids.tuned_grid(n, SIGMA_MIN, SIGMA_MAX, sampler="hybrid")
            g = torch.cat([g[:1], torch.tensor([math.sqrt(g[0].item() * g[1].item())], dtype=torch.float64), g[1:]])
            split[n + 1] = bool((oracle.component(S.sample_hybrid(oracle, xi, g, sigma_switch=grids.hybrid_switch(n)))
                                 != ci).item())
        row["hybrid/recommended, first step split: flips at NFE"] = split
        for rtol in (1e-2, 1e-3):
            counted = S.count_nfe(oracle)
            out = S.sample_dopri5(counted, xi, grids.grid_from_list([SIGMA_MAX, SIGMA_MIN, 0.0]), rtol=rtol,
                                  atol=rtol * 1e-2)
            row[f"dopri5 rtol={rtol:g} alone"] = {"nfe": counted.nfe, "flips": bool((oracle.component(out) != ci).item())}
        res["per_start"][i] = row
    for rtol in (1e-2, 1e-3):
        out, n_used = run_dopri5(oracle, x, rtol)
        f = [int(i) for i in torch.nonzero(oracle.component(out) != comp).flatten()]
        res["per_start_batch_dopri5"] = res.get("per_start_batch_dopri5", {})
        res["per_start_batch_dopri5"][f"rtol={rtol:g}"] = {"nfe": n_used, "flipped": f,
                                                          "rms": endpoint_errors(out, ref, oracle)["rms"]}
    excl = sorted(set().union(*flips.values()))
    keep = torch.ones(starts, dtype=torch.bool)
    keep[excl] = False
    res["excluded_any_flip"] = excl
    for m, out in methods.items():
        e = (out - ref).norm(dim=1) / scale
        own = torch.ones(starts, dtype=torch.bool)
        own[flips[m]] = False
        res["rms"][m] = {"all": e.pow(2).mean().sqrt().item(), "flips": len(flips[m]),
                         "without_own_flips": e[own].pow(2).mean().sqrt().item(),
                         "without_any_flip": e[keep].pow(2).mean().sqrt().item(),
                         "flip_errors": [round(e[j].item(), 4) for j in flips[m]]}
    log(json.dumps(res, indent=1))
    return res


# ---- how TUNED was made -------------------------------------------------------------------------------
def training_oracles() -> dict:
    """The mixtures the tuned grids were fitted on: none of them is a benchmark oracle."""
    g = torch.Generator().manual_seed(123)
    c = 1.2 * (torch.arange(4, dtype=torch.float64) - 1.5)
    return {
        "grid16": GaussianMixture(torch.ones(16), torch.stack(torch.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2),
                                  torch.full((16,), 0.06 ** 2)),
        "rand20": GaussianMixture(0.5 + torch.rand(20, generator=g, dtype=torch.float64),
                                  5.0 * (torch.rand(20, 2, generator=g, dtype=torch.float64) - 0.5),
                                  torch.full((20,), 0.04 ** 2)),
        "8gauss": eight_gaussians(),
        "64d-seed1": mixture_64d(k=10, seed=1),
        "32d-seed2": mixture_64d(k=8, d=32, seed=2),
    }


def _training_cases(starts: int, seed: int) -> list:
    """`(oracle, starts x, PF-ODE reference endpoints, weight)` for each of `training_oracles()`; the weights give
    the 2-D and the higher-dimensional cases equal shares."""
    cases = []
    for oracle in training_oracles().values():
        x = SIGMA_MAX * torch.randn(starts, oracle.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        ref, _ = pf_ode_reference(oracle, x, rtol=1e-9)
        cases.append((oracle, x, ref, 1 / 3 if oracle.dim == 2 else 1 / 2))
    return cases


def _training_loss(cases, sample, rms_weight: float) -> float | None:
    """The tuning loss of `sample(oracle, x) -> endpoints`: the weighted mean over `cases` of
    `rms_weight log RMS + (1 - rms_weight) log median` relative endpoint error (None if an RMS is not finite)."""
    total = 0.0
    for oracle, x, ref, w in cases:
        e = endpoint_errors(sample(oracle, x), ref, oracle)
        if not math.isfinite(e["rms"]):
            return None
        total += w * (rms_weight * math.log(e["rms"]) + (1 - rms_weight) * math.log(e["median"]))
    return total / 2


def tune_grid(sampler: str, ns=(5, 10, 20, 50), starts: int = 1000, opts=None, log=print, rms_weight: float = 0.7,
              seed: int = 7, starts_from=None, maxfev: int = 90) -> dict:
    """Fit `(sigma_hi, sigma_lo, rho)` of `grids.tuned_grid` per `n` by Nelder-Mead (one run per start point in
    `starts_from(n)`, `maxfev` evaluations each) on `training_oracles()`, minimising the mean over cases of
    `rms_weight log RMS + (1 - rms_weight) log median` relative endpoint error, 2-D and higher-dimensional cases
    weighted equally. Returns `{n: (hi, lo, rho)}` for `grids.TUNED`."""
    from scipy.optimize import minimize
    cases = _training_cases(starts, seed)
    fn = S.get_sampler(sampler)

    def loss(p, n):
        hi, lo, rho = (math.exp(v) for v in p)
        if not (lo < hi < SIGMA_MAX):
            return 10.0
        sig = torch.cat([torch.tensor([SIGMA_MAX], dtype=torch.float64), grids.edm_grid(n - 1, lo, hi, rho)])
        value = _training_loss(cases, lambda oracle, x: fn(oracle, x, sig, **(opts or {})), rms_weight)
        return 10.0 if value is None else value
    if starts_from is None:
        def starts_from(n):
            return [(6, 0.1 if n < 8 else 0.04, 30), (15, 0.05, 4)]
    out = {}
    for n in ns:
        best = min((minimize(loss, [math.log(v) for v in p0], args=(n,), method="Nelder-Mead",
                             options={"maxfev": maxfev, "xatol": 0.02, "fatol": 0.005})
                    for p0 in starts_from(n)), key=lambda o: o.fun)
        out[n] = tuple(round(math.exp(v), 4) for v in best.x)
        log(f"{sampler} n={n}: (hi, lo, rho) = {out[n]}, loss {best.fun:.3f}")
    return out


# How grids.HYBRID_SWITCH was chosen (`--tune-switch` reruns it): per n, the candidates tried on the tuned grid.
SWITCH_CANDIDATES = {5: (0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0), 10: (0.05, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0),
                     15: (0.2, 0.3, 0.5, 0.7, 1.0, 1.5),
                     20: (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0),
                     30: (0.1, 0.3, 0.5, 1.0), 50: (0.05, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5)}


def tune_switch(candidates=None, starts: int = 3000, seed: int = 7, rms_weight: float = 0.85, log=print) -> dict:
    """`sample_hybrid`'s `sigma_switch` per n on `grids.tuned_grid(n, sampler="hybrid")`: the candidate with the
    lowest training loss (as in `tune_grid`: mean over `training_oracles()` of `rms_weight log RMS + (1 - rms_weight)
    log median`, 2-D and higher-dimensional cases weighted equally). Ties (within 1e-3) go to 1.0, the earlier
    single switch, else to the smallest value. Returns `{n: switch}` for `grids.HYBRID_SWITCH`."""
    candidates = candidates or SWITCH_CANDIDATES
    cases = _training_cases(starts, seed)
    out = {}
    for n, values in sorted(candidates.items()):
        sig = grids.tuned_grid(n, SIGMA_MIN, SIGMA_MAX, sampler="hybrid")
        losses = {}
        for sw in values:
            value = _training_loss(cases, lambda oracle, x: S.sample_hybrid(oracle, x, sig, sigma_switch=sw), rms_weight)
            losses[sw] = math.inf if value is None else value
            log(f"hybrid n={n} sigma_switch={sw:g}: loss {losses[sw]:.3f}")
        best = min(losses.values())
        out[n] = next(sw for sw in sorted(values, key=lambda v: (v != 1.0, v)) if losses[sw] <= best + 1e-3)
    return out


# How each entry of grids.TUNED was fitted (`--tune NAME` reruns it). "hybrid" started Nelder-Mead from lms's tuned
# values and from those of a preliminary fit of UniPC-3 with the Adams final step (same loss, same data).
_UNIPC3_PRELIM = {5: (6.125, 0.2348, 747.3373), 10: (8.2803, 0.1026, 439.6883), 20: (21.0995, 0.0294, 45.1823),
                  50: (27.825, 0.0223, 71.2134)}
TUNE_SETTINGS = {
    "unipc": {"opts": {"order": 2}, "starts": 1000, "rms_weight": 0.7},
    "lms": {"opts": {"order": 3, "corrector": True}, "starts": 1000, "rms_weight": 0.7},
    "hybrid": {"opts": {}, "starts": 3000, "rms_weight": 0.85, "maxfev": 50,
               "starts_from": lambda n: [grids.TUNED["lms"][n], _UNIPC3_PRELIM[n]]},
}


# ---- outputs -------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
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
        rows = [r for r in results["deterministic"] if r["oracle"] == oname and r["nfe_target"] is not None]
        targets = sorted({r["nfe_target"] for r in rows})
        lines += [f"## {oname}: deterministic samplers, rms / median (NFE)", "",
                  "| sampler | grid | " + " | ".join(f"NFE~{t}" for t in targets) + " |",
                  "|---|---|" + "---|" * len(targets)]
        keys = list(dict.fromkeys((r["sampler"], r["grid"]) for r in rows))
        for key in keys:
            cells = []
            for t in targets:
                r = next((r for r in rows if (r["sampler"], r["grid"]) == key and r["nfe_target"] == t), None)
                cells.append("" if r is None else f"{r['rms']:.3g} / {r['median']:.3g} ({r['nfe']})")
            lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
        for r in results["deterministic"]:
            if r["oracle"] == oname and r["nfe_target"] is None:
                lines.append(f"| {r['sampler']} | {r['grid']} | rms {r['rms']:.3g} / median {r['median']:.3g} at NFE "
                             f"{r['nfe']} |" + " |" * (len(targets) - 1))
        best = _best_vs_peers(results, oname)
        if best:
            lines += ["", "Best of ours vs best peer (same run):", "",
                      "| NFE | ours rms | peer rms | ratio | ours median | peer median | ratio |", "|---|---|---|---|---|---|---|"]
            for t, b in best.items():
                lines.append(f"| {t} | {b['ours_rms']:.3g} ({b['ours_rms_by']}) | {b['peer_rms']:.3g} ({b['peer_rms_by']}) | "
                             f"{b['ours_rms'] / b['peer_rms']:.2f} | {b['ours_median']:.3g} ({b['ours_median_by']}) | "
                             f"{b['peer_median']:.3g} ({b['peer_median_by']}) | {b['ours_median'] / b['peer_median']:.2f} |")
        lines.append("")
    if results["stochastic"]:
        lines += ["## Stochastic samplers: sliced W2 to exact samples", "", "| oracle | sampler | NFE | SW2 | exact floor |",
                  "|---|---|---|---|---|"]
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
            o, p = min(ours, key=lambda r: r[m]), min(peers, key=lambda r: r[m])
            b.update({f"ours_{m}": o[m], f"ours_{m}_by": f"{o['sampler']}/{o['grid']}", f"peer_{m}": p[m],
                      f"peer_{m}_by": p["sampler"]})
        out[t] = b
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results["reference"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, oname in zip(axes[0], names):
        rows = [r for r in results["deterministic"] if r["oracle"] == oname and r["nfe_target"] is not None]
        for key in dict.fromkeys((r["sampler"], r["grid"]) for r in rows):
            pts = sorted((r["nfe"], r["rms"]) for r in rows if (r["sampler"], r["grid"]) == key and math.isfinite(r["rms"]))
            if pts:
                style = "--" if rows[0] and ":" in key[0] else "-"
                lw = 2.5 if key == (results["config"]["default_sampler"], "recommended") else 1.2
                ax.loglog(*zip(*pts), style, marker="o", ms=3, lw=lw, label=f"{key[0]} ({key[1]})")
        ax.set_title(f"{oname}: relative RMS endpoint error")
        ax.set_xlabel("NFE")
        ax.set_ylabel("error")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main(argv=None) -> int:
    """Entry point of `unifusion bench samplers` and `python -m unifusion.bench.samplers` (the CLI's error policy:
    a user error is one line and exit code 2)."""
    from ..cli import run_cli
    return run_cli("unifusion bench samplers", _main, argv)


def _main(argv) -> int:
    from ..cli import ArgumentParser, UserError

    ap = ArgumentParser(prog="unifusion bench samplers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", action="store_true", help="also run k-diffusion's and diffusers' samplers ([bench] extra)")
    ap.add_argument("--quick", action="store_true", help="200 starts, NFE 5/10/20, no stochastic samplers")
    ap.add_argument("--starts", type=int, default=None, help="number of starting points (default 2000; 200 with --quick)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the starting noise")
    ap.add_argument("--out", default="bench/results", help="output directory (default bench/results)")
    ap.add_argument("--tune", metavar="SAMPLER", choices=sorted(grids.TUNED),
                    help="re-fit grids.TUNED[SAMPLER] on the training mixtures (slow, ~30 min) and print it")
    ap.add_argument("--tune-switch", action="store_true",
                    help="re-choose grids.HYBRID_SWITCH on the training mixtures (slow, ~10 min) and print it")
    ap.add_argument("--flip-study", action="store_true",
                    help="the starts that flip at 64-D NFE 20: NFE at which they stop flipping, RMS without them")
    args = ap.parse_args(argv)
    if args.tune_switch:
        print(json.dumps(tune_switch(starts=args.starts or 3000)))
        return 0
    if args.flip_study:
        flip_study(starts=args.starts or 2000, seed=args.seed, peers=args.peers)
        return 0
    if args.tune:
        settings = dict(TUNE_SETTINGS[args.tune])
        if args.starts:
            settings["starts"] = args.starts
        print(json.dumps(tune_grid(args.tune, **settings)))
        return 0
    starts = args.starts if args.starts is not None else (200 if args.quick else 2000)
    if starts < 10:
        ap.error(f"--starts must be >= 10, got {starts}")
    t0 = time.perf_counter()
    try:
        results = run(starts=starts, nfes=(5, 10, 20) if args.quick else NFES, peers=args.peers,
                      stochastic=not args.quick, seed=args.seed)
    except ImportError as e:            # --peers without k-diffusion / diffusers installed
        raise UserError(f"argument --peers: {e}") from None
    results["config"]["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    atomic_write(out / "samplers.json", json.dumps(results, indent=1))
    atomic_write(out / "samplers.md", markdown(results))
    plot(results, out / "samplers.png")
    print(f"wrote {out}/samplers.md, .json, .png in {results['config']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
