"""How `grids.TUNED` and `grids.HYBRID_SWITCH` were made, and how to make them again.

    python bench/sampler_tuning.py grid SAMPLER [--starts N]    # re-fit grids.TUNED[SAMPLER] (~30 min), print it
    python bench/sampler_tuning.py switch [--starts N]          # re-choose grids.HYBRID_SWITCH (~10 min), print it

Each tuned grid is `grids.tuned_grid`'s `(sigma_hi, sigma_lo, rho)` per step count, fitted by Nelder-Mead on
training mixtures (`training_oracles`, none of them a benchmark oracle) to minimise a weighted log RMS + log
median relative endpoint error against the exact PF-ODE endpoints (`samplers.pf_ode_reference`); the switch of
`sample_hybrid` is the best of a few candidates on the same loss. The fitted values are data in the installed
package (`unifusion.grids`); only the fitting lives here. docs/samplers.md has the settings and the results.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from samplers import SIGMA_MAX, SIGMA_MIN, endpoint_errors, pf_ode_reference
from unifusion import grids
from unifusion import samplers as S
from unifusion.oracles import GaussianMixture, eight_gaussians, mixture_64d


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
        g = torch.Generator().manual_seed(seed)
        x = SIGMA_MAX * torch.randn(starts, oracle.dim, generator=g, dtype=torch.float64)
        ref, _ = pf_ode_reference(oracle, x, rtol=1e-9)
        cases.append((oracle, x, ref, 1 / 3 if oracle.dim == 2 else 1 / 2))
    return cases


def _training_loss(cases, sampler, sigmas, opts: dict, rms_weight: float) -> float | None:
    """The tuning loss of `sampler(oracle, x, sigmas, **opts) -> endpoints`: the weighted mean over `cases` of
    `rms_weight log RMS + (1 - rms_weight) log median` relative endpoint error (None if an RMS is not finite)."""
    total = 0.0
    for oracle, x, ref, w in cases:
        e = endpoint_errors(sampler(oracle, x, sigmas, **opts), ref, oracle)
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
        value = _training_loss(cases, fn, sig, opts or {}, rms_weight)
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


# How grids.HYBRID_SWITCH was chosen (`switch` reruns it): per n, the candidates tried on the tuned grid.
SWITCH_CANDIDATES = {5: (0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0),
                     10: (0.05, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0),
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
            value = _training_loss(cases, S.sample_hybrid, sig, {"sigma_switch": sw}, rms_weight)
            losses[sw] = math.inf if value is None else value
            log(f"hybrid n={n} sigma_switch={sw:g}: loss {losses[sw]:.3f}")
        best = min(losses.values())
        out[n] = next(sw for sw in sorted(values, key=lambda v: (v != 1.0, v)) if losses[sw] <= best + 1e-3)
    return out


# How each entry of grids.TUNED was fitted (`grid NAME` reruns it). "hybrid" started Nelder-Mead from lms's tuned
# values and from those of a preliminary fit of UniPC-3 with the Adams final step (same loss, same data).
_UNIPC3_PRELIM = {5: (6.125, 0.2348, 747.3373), 10: (8.2803, 0.1026, 439.6883), 20: (21.0995, 0.0294, 45.1823),
                  50: (27.825, 0.0223, 71.2134)}
TUNE_SETTINGS = {
    "unipc": {"opts": {"order": 2}, "starts": 1000, "rms_weight": 0.7},
    "lms": {"opts": {"order": 3, "corrector": True}, "starts": 1000, "rms_weight": 0.7},
    "hybrid": {"opts": {}, "starts": 3000, "rms_weight": 0.85, "maxfev": 50,
               "starts_from": lambda n: [grids.TUNED["lms"][n], _UNIPC3_PRELIM[n]]},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench/sampler_tuning.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    g = sub.add_parser("grid", help="re-fit grids.TUNED[SAMPLER] on the training mixtures and print it")
    g.add_argument("sampler", choices=sorted(TUNE_SETTINGS))
    g.add_argument("--starts", type=int, help="starting points per training mixture (default: as fitted)")
    sw = sub.add_parser("switch", help="re-choose grids.HYBRID_SWITCH on the training mixtures and print it")
    sw.add_argument("--starts", type=int, default=3000, help="starting points per training mixture (default 3000)")
    args = ap.parse_args(argv)
    if args.starts is not None and args.starts < 10:
        ap.error(f"--starts must be >= 10, got {args.starts}")
    if args.what == "switch":
        print(json.dumps(tune_switch(starts=args.starts)))
    else:
        settings = dict(TUNE_SETTINGS[args.sampler])
        if args.starts is not None:
            settings["starts"] = args.starts
        print(json.dumps(tune_grid(args.sampler, **settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
