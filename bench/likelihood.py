"""Digits bits/dim of trained runs: the PF-ODE likelihood (`unifusion nll`) and, for VDM runs, the ELBO.

    python bench/likelihood.py runs/digits_vdm runs/digits_vdm_fixedvp runs/digits_vp runs/digits_ve \
        [--n 360] [--hutchinson 1] [--elbo-repeats 16] [--out bench/results/likelihood]

Per run, on the first `--n` test digits: PF-ODE bits/dim with uniform dequantization over the 17 grey levels
(`unifusion.nll.nll`, adaptive Dormand-Prince, `--hutchinson` single-probe estimates per digit; every run sees the
same dequantization draws, so differences between runs are paired) and, for a run trained with the `vdm_elbo`
loss, the continuous-time ELBO in bits/dim (`losses.VDMLoss`, discrete decoder: a bound on the discrete data's
NLL without dequantization), averaged over `--elbo-repeats` draws of (t, eps) per digit, with its median over digits
(a fixed schedule's ELBO estimate is heavy-tailed: its mean and median can differ a lot). Standard errors are over
digits; the paired difference to the first run comes with its own standard error. Writes `OUT.md` and `OUT.json`.
"""
import argparse
import json
import math
import time
from pathlib import Path

import torch

from unifusion.data import load_digits
from unifusion.nll import nll
from unifusion.train import load_model
from unifusion.utils import atomic_write


def elbo_bits(model, x, repeats: int, seed: int = 0) -> torch.Tensor:
    """Per-digit VDM ELBO in bits/dim, the mean of `repeats` draws (no gradient)."""
    from unifusion.losses import VDMLoss

    loss = VDMLoss(levels=17, variance_gradient=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        total = sum(sum(loss.terms(model, x, generator=g).values()) for _ in range(repeats)) / repeats
    return total.double() / (x[0].numel() * math.log(2))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--n", type=int, default=360)
    ap.add_argument("--hutchinson", type=int, default=1)
    ap.add_argument("--elbo-repeats", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=120)
    ap.add_argument("--out", default="bench/results/likelihood")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    x = load_digits("test")[0][:a.n]
    se = lambda v: float(v.std() / math.sqrt(v.numel()))  # noqa: E731
    rows, first = [], {}
    for run in a.runs:
        d = load_model(run)
        t0 = time.perf_counter()
        r = nll(d, x, levels=17, hutchinson=a.hutchinson, batch_size=a.batch_size, seed=0, progress=True)
        row = {"run": run, "step": d.checkpoint_step, "process": repr(d.process), "loss": d.config["loss"]["name"],
               "pf_ode_bpd": float(r["bpd"].mean()), "pf_ode_bpd_se": se(r["bpd"]), "nfe": r["nfe"],
               "seconds": time.perf_counter() - t0}
        per = {"pf_ode": r["bpd"]}
        if d.config["loss"]["name"] == "vdm_elbo":
            e = elbo_bits(d, x, a.elbo_repeats)
            per["elbo"] = e
            row.update(elbo_bpd=float(e.mean()), elbo_bpd_se=se(e), elbo_bpd_median=float(e.median()))
        for k, v in per.items():
            if k in first:
                diff = v - first[k]
                row[f"{k}_minus_first"], row[f"{k}_minus_first_se"] = float(diff.mean()), se(diff)
            elif not rows:
                first[k] = v
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [f"# Digits bits/dim ({a.n} test digits)", "", f"`python bench/likelihood.py {' '.join(a.runs)} --n {a.n} "
             f"--hutchinson {a.hutchinson} --elbo-repeats {a.elbo_repeats}`", "",
             "| run | step | process | PF-ODE bits/dim | vs first (paired) | ELBO bits/dim | vs first (paired) "
             "| ELBO median | NFE |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    pm = lambda r, k: (f"{r[k]:.3f} +- {r[k + '_se']:.3f}" if k in r else "-")  # noqa: E731
    for r in rows:
        lines.append(f"| {r['run']} | {r['step']} | {r['process']} | {pm(r, 'pf_ode_bpd')} "
                     f"| {pm(r, 'pf_ode_minus_first')} "
                     f"| {pm(r, 'elbo_bpd')} | {pm(r, 'elbo_minus_first')} "
                     f"| {format(r['elbo_bpd_median'], '.3f') if 'elbo_bpd' in r else '-'} | {r['nfe']} |")
    atomic_write(Path(a.out + ".md"), "\n".join(lines) + "\n")
    atomic_write(Path(a.out + ".json"), json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
