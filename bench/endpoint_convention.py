"""Does the default sampler converge to `bench/interop.py`'s reference endpoint? Error of `hybrid` on its recommended
grid as NFE grows, on the trained `digits_diffusers` model, against the same reference as `bench/interop.py`
(dopri5 to the process's lowest level sigma~(0), then `x = D(x, sigma~(0))`).

    unifusion train digits_diffusers
    .venv/bin/python bench/endpoint_convention.py [--run runs/digits_diffusers] [--starts 16]

If the error falls to the reference's own tolerance as NFE grows, the two compute the same endpoint and the gap at
small NFE is accuracy; if it levels off, the sampler integrates to another endpoint (its grid's lowest level lies
above sigma~(0) and its last step extrapolates to sigma = 0), and that level is a difference of convention. A
log-sigma-spaced Heun grid down to sigma~(0), then the same final step, is listed as the control: it must converge.
"""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch

from interop import export_run, reference, rel_rms, wrapped_pipeline
from unifusion import grids
from unifusion.samplers import DEFAULT_SAMPLER, RECOMMENDED, count_nfe, get_sampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/digits_diffusers", help="a trained digits_diffusers run")
    ap.add_argument("--starts", type=int, default=16, help="starting points")
    ap.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance of the dopri5 reference")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, den, _, x = wrapped_pipeline(export_run(Path(args.run), Path(tmp) / "pipe"), args.starts)
    s_max, s_min = den.process.sigma_ve_max, den.process.sigma_ve_min
    ref, nfe = reference(den, x, s_max, s_min, args.rtol)
    print(f"reference: dopri5 rtol {args.rtol:g}, {nfe} NFE; sigma~ {s_max:.1f} -> {s_min:.4f} -> 0")
    print("| NFE | hybrid's lowest positive level | hybrid error | Heun, log-sigma grid to sigma~(0): NFE | error |")
    print("|---:|---:|---:|---:|---:|")
    with torch.no_grad():
        for n in (5, 10, 20, 40, 80, 160):
            grid = RECOMMENDED[DEFAULT_SAMPLER](n, s_min, s_max)
            ours = get_sampler(DEFAULT_SAMPLER)(den, x, grid)
            levels = torch.exp(torch.linspace(math.log(s_max), math.log(s_min), n // 2 + 1, dtype=torch.float64))
            counted = count_nfe(den)
            heun = get_sampler("heun")(counted, x, grids.grid_from_list([*levels.tolist(), 0.0]))
            print(f"| {n} | {float(grid[-2]):.4f} | {rel_rms(ours, ref):.2e} | {counted.nfe} | "
                  f"{rel_rms(heun, ref):.2e} |")


if __name__ == "__main__":
    main()
