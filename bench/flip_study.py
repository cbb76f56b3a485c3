"""Why a cell of the sampler benchmark can be a lottery: the starts that a sampler sends to another mixture
component than the exact PF-ODE does ("flips").

    python bench/flip_study.py [--oracle 64d-10] [--nfe 20] [--starts 2000] [--seed 0] [--max-nfe 200] [--peers]

On the benchmark's oracle and starts (`samplers.run`'s), for every start that `hybrid` (tuned grid or EDM grid)
flips at `--nfe`: the smallest NFE from which each grid keeps it in the reference's component up to `--max-nfe`,
whether the tuned grid with its first step split in two still flips it, whether `dopri5` flips it; and every
method's RMS with and without the flipping starts. Measurement only: nothing here is fitted. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from samplers import (SIGMA_MAX, SIGMA_MIN, _diffusers_run, _run_k_diffusion, diffusers_peers, endpoint_errors,
                      k_diffusion_peers, load_k_diffusion_sampling, oracles, pf_ode_reference, run_dopri5, run_ours)
from unifusion import grids
from unifusion import samplers as S

OURS = ("hybrid/recommended", "hybrid/edm")


def _flipped(oracle, out: torch.Tensor, comp: torch.Tensor) -> list[int]:
    """Indices of the rows of `out` whose mixture component differs from `comp`."""
    return [int(i) for i in torch.nonzero(oracle.component(out) != comp).flatten()]


def _methods(oracle, x, nfe: int, peers: bool, log) -> dict:
    """Endpoints at `nfe` of `hybrid` on both grids and, with `peers`, of k-diffusion's and diffusers' samplers."""
    methods = {m: run_ours("hybrid", oracle, x, nfe, m.split("/")[1])[0] for m in OURS}
    if peers:
        for pname, (fn, levels) in k_diffusion_peers(load_k_diffusion_sampling()).items():
            methods[pname] = _run_k_diffusion(fn, oracle, x, levels(nfe))[0]
        try:
            for pname, (fn, levels) in diffusers_peers().items():
                methods[pname] = _diffusers_run(fn, oracle, x, levels(nfe))[0]
        except ImportError as e:
            log(f"diffusers not available ({e})")
    return methods


def _one_start(oracle, xi, ci, nfe: int, max_nfe: int) -> dict:
    """For one flipping start `xi` `[1, d]` with reference component `ci`: at which NFE each grid of `hybrid` still
    flips it, whether the tuned grid with its first step split at the geometric mean does, and dopri5 alone."""
    row = {}
    for grid in ("recommended", "edm"):
        bad = [n for n in range(nfe, max_nfe + 1) if _flipped(oracle, run_ours("hybrid", oracle, xi, n, grid)[0], ci)]
        row[f"hybrid/{grid}"] = {"flips_at": bad, "ok_from": (max(bad) + 1) if bad else nfe}
    split = {}
    for n in sorted({nfe, 50, 100, max_nfe}):  # the tuned grid with one more level inside its first step
        g = grids.tuned_grid(n, SIGMA_MIN, SIGMA_MAX, sampler="hybrid")
        g = torch.cat([g[:1], torch.tensor([math.sqrt(g[0].item() * g[1].item())], dtype=torch.float64), g[1:]])
        split[n + 1] = bool(_flipped(oracle, S.sample_hybrid(oracle, xi, g, sigma_switch=grids.hybrid_switch(n)), ci))
    row["hybrid/recommended, first step split: flips at NFE"] = split
    for rtol in (1e-2, 1e-3):
        out, used = run_dopri5(oracle, xi, rtol)
        row[f"dopri5 rtol={rtol:g} alone"] = {"nfe": used, "flips": bool(_flipped(oracle, out, ci))}
    return row


def _rms_table(methods: dict, flips: dict, ref: torch.Tensor) -> dict:
    """Each method's relative RMS endpoint error over all starts, without its own flips and without any method's."""
    n, scale = ref.shape[0], ref.norm(dim=1).pow(2).mean().sqrt()
    keep = torch.ones(n, dtype=torch.bool)
    keep[sorted(set().union(*flips.values()))] = False
    table = {}
    for m, out in methods.items():
        e = (out - ref).norm(dim=1) / scale
        own = torch.ones(n, dtype=torch.bool)
        own[flips[m]] = False
        table[m] = {"all": e.pow(2).mean().sqrt().item(), "flips": len(flips[m]),
                    "without_own_flips": e[own].pow(2).mean().sqrt().item(),
                    "without_any_flip": e[keep].pow(2).mean().sqrt().item(),
                    "flip_errors": [round(e[j].item(), 4) for j in flips[m]]}
    return table


def flip_study(oracle_name: str = "64d-10", nfe: int = 20, starts: int = 2000, seed: int = 0, max_nfe: int = 200,
               peers: bool = True, log=print) -> dict:
    """The study on benchmark oracle `oracle_name` and the benchmark's `starts` starts of seed `seed`; returns (and
    logs) the JSON-ready result: `flips` (method -> flipped starts at `nfe`), `studied` (those of `hybrid`),
    `per_start` (`_one_start` of each), `per_start_batch_dopri5`, `rms` (`_rms_table`)."""
    oracle = oracles()[oracle_name]
    x = SIGMA_MAX * torch.randn(starts, oracle.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref, _ = pf_ode_reference(oracle, x)
    comp = oracle.component(ref)
    methods = _methods(oracle, x, nfe, peers, log)
    flips = {m: _flipped(oracle, out, comp) for m, out in methods.items()}
    studied = sorted(set().union(*(flips[m] for m in OURS)))
    res = {"oracle": oracle_name, "nfe": nfe, "starts": starts, "seed": seed, "flips": flips, "studied": studied,
           "ref_norm_rms": ref.norm(dim=1).pow(2).mean().sqrt().item(),
           "per_start": {i: _one_start(oracle, x[i:i + 1], comp[i:i + 1], nfe, max_nfe) for i in studied},
           "per_start_batch_dopri5": {}, "excluded_any_flip": sorted(set().union(*flips.values())),
           "rms": _rms_table(methods, flips, ref)}
    for rtol in (1e-2, 1e-3):
        out, used = run_dopri5(oracle, x, rtol)
        res["per_start_batch_dopri5"][f"rtol={rtol:g}"] = {"nfe": used, "flipped": _flipped(oracle, out, comp),
                                                          "rms": endpoint_errors(out, ref, oracle)["rms"]}
    log(json.dumps(res, indent=1))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench/flip_study.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--oracle", default="64d-10", choices=sorted(oracles()), help="benchmark oracle (default 64d-10)")
    ap.add_argument("--nfe", type=int, default=20, help="the NFE whose flips are studied (default 20)")
    ap.add_argument("--starts", type=int, default=2000, help="the benchmark's number of starts (default 2000)")
    ap.add_argument("--seed", type=int, default=0, help="the benchmark's seed of the starts (default 0)")
    ap.add_argument("--max-nfe", type=int, default=200, help="highest NFE tried per flipping start (default 200)")
    ap.add_argument("--peers", action="store_true", help="also k-diffusion's and diffusers' samplers ([bench] extra)")
    args = ap.parse_args(argv)
    if args.starts < 1 or not 1 <= args.nfe <= args.max_nfe:
        ap.error(f"need --starts >= 1 and 1 <= --nfe <= --max-nfe, got {args.starts}, {args.nfe}, {args.max_nfe}")
    flip_study(args.oracle, args.nfe, args.starts, args.seed, args.max_nfe, args.peers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
