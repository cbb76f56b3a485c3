"""The claims with exact answers, checked on Gaussian-mixture oracles (no training; float64 throughout).

1. `same_endpoints`: VP and VE are one family in different coordinates. The exact eight-Gaussians model is
   sampled by VP samplers in VP-SDE time (DDIM; Heun on `dx/dt = f x - g^2 score / 2`) and by VE samplers in VE
   coordinates (Euler; EDM's Heun on `dx/dsigma = (x - D) / sigma`) on the same grid `sigma~_i = sigma~(t_i)`.
2a. `exact_conversions`: eps, x0, score, v and flow outputs are one quantity: the oracle's own x0 and score at
   `(x_t, t)` (from its posterior) turned into every other output and back agree to rounding, for VP, VE, EDM,
   rectified flow and a learned VDM schedule.
3. `sde_ode_marginals`: the reverse SDE and the probability-flow ODE share marginals: sliced W2 between their
   samples against the exact-vs-exact floor, with the trajectories figure (Song et al. 2021, Fig. 2).
4. `error_vs_nfe`: ODE error grows as steps shrink, by method: endpoint error against a tight Dormand-Prince solve
   for Euler, Heun, DPM-Solver++(2M), UniPC, LMS and the hybrid sampler (Karras et al. 2022, Fig. 2 style).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from .common import ClaimResult

__all__ = ["same_endpoints", "exact_conversions", "sde_ode_marginals", "error_vs_nfe", "heun_in_time"]


@torch.no_grad()
def heun_in_time(eps_model, process, x, ts):
    """Heun's method on the PF-ODE in the process's own time, `dx/dt = f(t) x - g(t)^2 score / 2` with
    `score = -eps / sigma` (Song et al. 2021, eq. 13), over descending `ts`, then the clean-data estimate at
    `ts[-1]`. NFE = 2 (len(ts) - 1) + 1, as EDM's Heun on the matching sigma grid plus its final Euler step."""
    from ..parametrization import x0_from_eps

    t = torch.as_tensor(ts, dtype=torch.float64)
    c = process._coefficients(t)
    f, g2 = process._sde_coeffs(t)

    def drift(x, i):
        eps = eps_model(x, t[i].expand(x.shape[0]))
        return f[i] * x + 0.5 * g2[i] * eps / c.sigma[i]

    for i in range(len(ts) - 1):
        dt = t[i + 1] - t[i]
        d = drift(x, i)
        x_pred = x + dt * d
        x = x + 0.5 * dt * (d + drift(x_pred, i + 1))
    return x0_from_eps(x, eps_model(x, t[-1].expand(x.shape[0])), c.alpha[-1], c.sigma[-1])


def _max_diff(a, b) -> float:
    return float((a - b).abs().max())


def same_endpoints(out: Path, n: int = 2000, steps=(4, 8, 16, 32, 64, 128), seed: int = 0) -> ClaimResult:
    """Claim 1 (module docstring). PASS: DDIM in VP time equals Euler in VE coordinates to 1e-11 at every NFE
    (the same method in two coordinate systems: rounding only), and VP-time Heun and VE Heun (two second-order
    methods in two coordinates) converge to one endpoint: their difference falls at order >= 1.5 over the last
    grids and ends below either one's own error against the exact solution (a tight Dormand-Prince solve)."""
    from ..oracles import eight_gaussians
    from ..plots import save_error_vs_nfe
    from ..processes import VP
    from ..samplers import sample_ddim_discrete, sample_dopri5, sample_euler, sample_heun

    t0 = time.perf_counter()
    oracle, p = eight_gaussians(), VP(t_min=1e-3)
    eps_model = oracle.process_model(p, "eps")
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, 2, generator=g, dtype=torch.float64)         # VP prior N(0, I) at t_max
    x_ve = x_T / float(p.alpha(p.t_max))                              # the same point in VE coordinates
    s_hi, s_lo = p.sigma_ve_max, p.sigma_ve_min
    exact = sample_dopri5(oracle, x_ve, torch.tensor([s_hi, s_lo, 0.0], dtype=torch.float64), rtol=1e-11, atol=1e-11)
    rows, curves = [], {"DDIM (VP time) vs Euler (VE)": [], "Heun: VP time vs VE coordinates": [],
                        "Heun in VP time vs exact": [], "Heun in VE coordinates vs exact": []}
    for k in steps:
        ts = torch.linspace(p.t_max, p.t_min, k, dtype=torch.float64)
        sig = torch.cat([p.sigma_ve(ts), torch.zeros(1, dtype=torch.float64)])
        ddim = sample_ddim_discrete(eps_model, p, x_T, ts)
        euler = sample_euler(oracle, x_ve, sig)
        heun_t = heun_in_time(eps_model, p, x_T, ts)
        heun_ve = sample_heun(oracle, x_ve, sig)
        d_first, d_second = _max_diff(ddim, euler), _max_diff(heun_t, heun_ve)
        e_t, e_ve = _max_diff(heun_t, exact), _max_diff(heun_ve, exact)
        nfe_1, nfe_2 = k, 2 * k - 1
        rows.append((k, nfe_1, d_first, nfe_2, d_second, e_t, e_ve))
        for name, nfe, v in zip(curves, (nfe_1, nfe_2, nfe_2, nfe_2), (d_first, d_second, e_t, e_ve), strict=True):
            curves[name].append((nfe, max(v, 1e-17)))
    fig = save_error_vs_nfe(curves, Path(out) / "claim1_endpoints.png", ylabel="max |difference| of endpoints",
                            title="the exact eight-Gaussians model, VP vs VE samplers")
    identity = max(r[2] for r in rows)
    (_, _, _, n_a, d_a, _, _), (_, _, _, n_b, d_b, e_t, e_ve) = rows[-3], rows[-1]
    order = -math.log(d_b / d_a) / math.log(n_b / n_a)
    passed = identity <= 1e-11 and d_b <= min(e_t, e_ve) and order >= 1.5
    table = ["| grid points | DDIM vs Euler: NFE | max diff | Heun pair: NFE | max diff | VP-time Heun vs exact "
             "| VE Heun vs exact |", "|---:|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {k} | {a} | {b:.1e} | {c} | {d:.2e} | {e:.2e} | {f:.2e} |" for k, a, b, c, d, e, f in rows]
    return ClaimResult(
        "1", "VP and VE are one family in different coordinates",
        "DDIM in VP time = Euler in VE coordinates to 1e-11 (rounding) at every NFE; VP-time Heun and VE Heun "
        "converge to one endpoint: their difference falls at order >= 1.5 and ends below either one's own error "
        "against the exact ODE solution", passed,
        f"DDIM vs Euler max diff {identity:.1e}; Heun pair diff {rows[0][4]:.2e} -> {d_b:.2e} (order {order:.2f}), "
        f"vs their errors {e_t:.1e} / {e_ve:.1e} at {n_b} NFE",
        table, [fig], time.perf_counter() - t0)


def exact_conversions(n: int = 256, seed: int = 0) -> ClaimResult:
    """Claim 2a (module docstring). PASS: every conversion, measured in clean-data (or noise) space, agrees with the
    oracle's own output to a relative error <= 1e-12 (`|a - b| / (1 + |b|)`, float64)."""
    from .. import parametrization as P
    from ..oracles import mixture_64d
    from ..processes import EDM, VDM, VE, VP, RectifiedFlow

    t0 = time.perf_counter()
    oracle = mixture_64d(k=4, d=8, seed=seed)
    vdm = VDM(gamma_min=-9.0, gamma_max=6.0, hidden=16).requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    worst, rows = 0.0, []
    for name, p in [("VP", VP()), ("VE", VE()), ("EDM", EDM()), ("rectified flow", RectifiedFlow()), ("VDM", vdm)]:
        t = p.t_min + (p.t_max - p.t_min) * (0.02 + 0.96 * torch.rand(n, generator=g, dtype=torch.float64))
        c = p._coefficients(t)
        x_t = p.marginal_sample(oracle.sample(n, g), t, torch.randn(n, oracle.dim, generator=g, dtype=torch.float64))
        _, x0, score = oracle._posterior(x_t, c.alpha[:, None], c.sigma[:, None])   # the oracle's own outputs
        eps = P.eps_from_score(score, c.sigma)
        checks = {"x0 <- eps <- score": (P.x0_from_eps(x_t, eps, c.alpha, c.sigma), x0),
                  "x0 <- score (Tweedie)": (P.x0_from_score(x_t, score, c.alpha, c.sigma), x0),
                  "x0 <- v <- x0": (P.x0_from_v(x_t, P.v_from_x0(x_t, x0, c.alpha, c.sigma), c.alpha, c.sigma), x0),
                  "eps <- v <- eps": (P.eps_from_v(x_t, P.v_from_eps(x_t, eps, c.alpha, c.sigma), c.alpha, c.sigma),
                                      eps),
                  "x0 <- flow <- x0": (P.x0_from_flow(x_t, P.flow_from_x0(x_t, x0, *c), *c), x0)}
        errs = {k: float(((a - b).abs() / (1 + b.abs())).max()) for k, (a, b) in checks.items()}
        worst = max(worst, *errs.values())
        rows.append((name, errs))
    keys = list(rows[0][1])
    table = ["| process | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    table += [f"| {name} | " + " | ".join(f"{e[k]:.1e}" for k in keys) + " |" for name, e in rows]
    return ClaimResult(
        "2a", "noise, clean-data, score, velocity and flow outputs are exact conversions of one another",
        "largest relative error <= 1e-12 over 5 processes x 5 conversions, oracle outputs in float64",
        worst <= 1e-12, f"largest relative error {worst:.1e}", table, [], time.perf_counter() - t0)


def _keep(states: list, every: int, active: bool):
    """A sampler callback that appends the first 32 particles of every `every`-th state to `states` (if `active`)."""
    def callback(d):
        if active and d["i"] % every == 0:
            states.append(d["x"][:32])
    return callback


def sde_ode_marginals(out: Path, n: int = 4000, sde_steps: int = 1000, ode_steps: int = 128, pairs: int = 4,
                      seed: int = 0) -> ClaimResult:
    """Claim 3 (module docstring). SW2 of one pair of `n`-sample sets fluctuates by tens of percent (the mixture's
    mode counts), so `pairs` SDE/ODE pairs (each from its own start noise) are compared with `2 pairs` exact/exact
    pairs. PASS: the mean SW2(SDE, ODE) <= the mean exact-vs-exact SW2 + 3 standard errors (sd / sqrt(pairs))."""
    from ..grids import edm_grid
    from ..metrics import sliced_wasserstein
    from ..oracles import eight_gaussians
    from ..plots import save_trajectories
    from ..samplers import sample_euler_maruyama, sample_heun

    t0 = time.perf_counter()
    oracle = eight_gaussians()
    g = torch.Generator().manual_seed(seed)
    sde_grid, ode_grid = edm_grid(sde_steps, 0.002, 80.0), edm_grid(ode_steps, 0.002, 80.0)
    sw = lambda a, b: sliced_wasserstein(a, b, 256, g)  # noqa: E731
    between, to_exact, paths = [], {"SDE": [], "ODE": []}, {"sde": [], "ode": []}
    for r in range(pairs):
        z = 80.0 * torch.randn(n, 2, generator=g, dtype=torch.float64)
        x_sde = sample_euler_maruyama(oracle, z, sde_grid, generator=g, callback=_keep(paths["sde"], 20, r == 0))
        x_ode = sample_heun(oracle, z, ode_grid, callback=_keep(paths["ode"], 4, r == 0))
        if r == 0:
            paths["sde"].append(x_sde[:32])
            paths["ode"].append(x_ode[:32])
        between.append(sw(x_sde, x_ode))
        to_exact["SDE"].append(sw(x_sde, oracle.sample(n, g)))
        to_exact["ODE"].append(sw(x_ode, oracle.sample(n, g)))
    floor = [sw(oracle.sample(n, g), oracle.sample(n, g)) for _ in range(2 * pairs)]
    b_mean, f_mean, f_std = float(np.mean(between)), float(np.mean(floor)), float(np.std(floor, ddof=1))
    fig = save_trajectories(torch.stack(paths["sde"]), torch.stack(paths["ode"]), Path(out) / "claim3_trajectories.png",
                            reference=oracle.sample(2000, g), title="eight Gaussians, exact denoiser, same start noise")
    passed = b_mean <= f_mean + 3 * f_std / math.sqrt(pairs)
    ms = lambda v: f"{np.mean(v):.4f} +- {np.std(v, ddof=1):.4f}"  # noqa: E731
    table = ["| pair (n = %d each; mean +- sd over pairs) | SW2 |" % n, "|---|---:|",
             f"| reverse SDE (Euler-Maruyama, {sde_steps} steps) vs PF-ODE (Heun, {2 * ode_steps - 1} NFE), "
             f"{pairs} pairs | {ms(between)} |",
             f"| reverse SDE vs an exact draw | {ms(to_exact['SDE'])} |",
             f"| PF-ODE vs an exact draw | {ms(to_exact['ODE'])} |",
             f"| exact vs exact (the floor), {2 * pairs} pairs | {ms(floor)} |"]
    return ClaimResult(
        "3", "the reverse SDE and the probability-flow ODE share marginals",
        "mean SW2 between SDE and ODE samples <= mean exact-vs-exact SW2 + 3 standard errors", passed,
        f"SW2(SDE, ODE) = {b_mean:.4f}; floor {f_mean:.4f} +- {f_std / math.sqrt(pairs):.4f} (standard error)",
        table, [fig], time.perf_counter() - t0)


def error_vs_nfe(out: Path, n: int = 512, steps=(4, 6, 8, 12, 16, 24, 32, 48), seed: int = 0) -> ClaimResult:
    """Claim 4 (module docstring). PASS: for every method the error falls as NFE grows (Spearman correlation of
    error with NFE <= -0.9) and at the largest step count every higher-order method beats Euler."""
    from ..grids import edm_grid
    from ..oracles import mixture_64d
    from ..plots import save_error_vs_nfe
    from ..samplers import RECOMMENDED, count_nfe, get_sampler, sample_dopri5

    t0 = time.perf_counter()
    oracle = mixture_64d(k=6, d=16, seed=seed)
    x = 80.0 * torch.randn(n, oracle.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref = sample_dopri5(oracle, x, edm_grid(2, 0.002, 80.0), rtol=1e-10, atol=1e-10)
    methods = {"Euler": "euler", "Heun": "heun", "DPM-Solver++(2M)": "dpmpp_2m", "UniPC": "unipc", "LMS": "lms",
               "hybrid": "hybrid"}
    curves = {}
    for label, name in methods.items():
        pts = []
        for k in steps:
            counted = count_nfe(oracle)
            y = get_sampler(name)(counted, x, RECOMMENDED[name](k, 0.002, 80.0))
            pts.append((counted.nfe, float((y - ref).pow(2).mean().sqrt())))
        curves[label] = pts
    fig = save_error_vs_nfe(curves, Path(out) / "claim4_error_vs_nfe.png", ylabel="RMS endpoint error",
                            title="PF-ODE solvers on an exact 16-d mixture", slopes=(1, 2))

    def spearman(pts):
        a = np.array(pts)
        r = lambda v: np.argsort(np.argsort(v))  # noqa: E731
        return float(np.corrcoef(r(a[:, 0]), r(a[:, 1]))[0, 1])

    rho = {k: spearman(v) for k, v in curves.items()}
    last = {k: v[-1][1] for k, v in curves.items()}
    passed = all(r <= -0.9 for r in rho.values()) and all(last[k] < last["Euler"] for k in last if k != "Euler")
    table = ["| method | " + " | ".join(f"{k} steps" for k in steps) + " | Spearman(NFE, error) |",
             "|---|" + "---:|" * (len(steps) + 1)]
    table += [f"| {k} | " + " | ".join(f"{e:.2e} ({m})" for m, e in v) + f" | {rho[k]:.2f} |"
              for k, v in curves.items()]
    return ClaimResult(
        "4", "ODE error grows as steps shrink, and how fast depends on the method",
        "every method: Spearman(NFE, error) <= -0.9; at the most steps every higher-order method beats Euler",
        passed, f"Spearman from {max(rho.values()):.2f} to {min(rho.values()):.2f}; at {steps[-1]} steps Euler "
        f"{last['Euler']:.1e}, best {min(last.values()):.1e} ({min(last, key=last.get)})", table, [fig],
        time.perf_counter() - t0)
