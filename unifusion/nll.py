"""`unifusion nll RUN`: negative log-likelihoods of data under a trained model, through the probability-flow ODE.

Owns the evaluation protocol around `unifusion.likelihood.log_likelihood`: which data, which discretisation, the
Hutchinson repeats and their standard errors, sharding over torchrun processes and the report (text or JSON).

Discretisation. Data stored as `L` equally spaced levels are scaled to [-1, 1] as `v_k = -1 + k w`,
`w = 2 / (L - 1)`, `k = 0..L-1`: the digits' grey levels 0..16 as `x / 8 - 1` (`L = 17`, `w = 1/8`,
`unifusion.data.digits`), 8-bit images as `x / 127.5 - 1` (`L = 256`, `w = 2/255`, `unifusion.data.files`).
Level `v_k` stands for the bin `[v_k - w/2, v_k + w/2]`. Uniform dequantization `y = x + w u`,
`u ~ U(-1/2, 1/2)^d`, bounds the negative log-likelihood of the discrete data (Jensen; Theis et al. 2016):

    -log P(x) <= E_u[-log p(y)] - d log w   nats,    bits/dim = (-log p(y) - d log w) / (d ln 2)   per draw.

`L = 0` means continuous data: no dequantization, and bits/dim `= -log p(x) / (d ln 2)` is a density, not a code
length. The default `L` follows the run's data: 17 for digits, 256 for image folders, 0 otherwise.

Where the ODE starts. The bound holds for any continuous density `p`, so `p` may be the model's marginal at any
noise level. A model trained on the levels concentrates its density near them as sigma -> 0, where the
dequantized `y` (up to `w/2` off the grid) get little of it; `unifusion nll` therefore starts the ODE, for data
with levels, at the dequantization noise's own standard deviation `w / sqrt(12)` (`dequantization_sigma`; 0.036
for digits, 0.0023 for 8-bit images), or at the process's `sigma~(t_min)` if that is larger.
"""
from __future__ import annotations

import json
import math
import sys
import time

import torch
import torch.distributed as dist

from .likelihood import bits_per_dim, log_likelihood
from .utils import check_positive_int

__all__ = ["dequantize", "dequantization_sigma", "nll", "summarize", "add_arguments", "run"]


def dequantize(x: torch.Tensor, levels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`x + w u`, `u ~ U(-1/2, 1/2)`, `w = 2 / (levels - 1)`: uniform noise over each level's bin (`levels = 0`: x)."""
    if levels == 0:
        return x
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) - 0.5
    return x + (2.0 / (levels - 1)) * u


def dequantization_sigma(levels: int) -> float:
    """`w / sqrt(12)`, `w = 2 / (levels - 1)`: the standard deviation of the uniform dequantization noise, the noise
    level from which the PF-ODE density of dequantized data is taken (module docstring)."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
    return 2.0 / (levels - 1) / math.sqrt(12)


def _bpd(log_prob: torch.Tensor, dims: int, levels: int) -> torch.Tensor:
    """Bits per dimension of per-example log-densities: dequantized (bins of width `2 / (levels - 1)` in a range of
    width 2) or, for `levels = 0`, the plain density in bits."""
    if levels == 0:
        return -log_prob / (dims * math.log(2))
    return bits_per_dim(log_prob, dims, data_range=2.0, bins=levels - 1)


def nll(denoiser, x: torch.Tensor, *, levels: int = 0, hutchinson: int = 0, steps: int | None = None,
        batch_size: int = 64, seed: int = 0, rtol: float = 1e-5, atol: float = 1e-5, sigma_min: float | None = None,
        sigma_max: float | None = None, progress: bool = True) -> dict:
    """Per-example negative log-likelihoods of `x` (`[N, ...]`) under `denoiser` (a `Denoiser` or any VE denoiser).

    Args:
        levels:     data levels in [-1, 1] (module docstring); 0: continuous data, no dequantization.
        hutchinson: 0: the exact divergence; K > 0: K independent single-probe Hutchinson estimates per example
                    (each with its own dequantization draw), whose mean is reported with its standard error.
        steps:      None: adaptive Dormand-Prince; an integer: that many equal steps (fixed NFE).
        batch_size: examples per ODE solve (with Hutchinson, each is repeated K times inside the batch).
        seed:       seeds the dequantization noise and the probes (batch `i` uses `seed + i`).
        rtol, atol: tolerances of the adaptive solve.
        sigma_min:  start of the ODE (None: the process's `sigma~(t_min)`).
        sigma_max:  end of the ODE, where the prior `N(0, sigma_max^2 I)` is taken (None: the process's
                    `sigma~(t_max)`).
        progress:   a tqdm bar over batches.

    Returns a dict of float64 tensors `nats` (`[N]`: `-log p`, before the dequantization offset), `nats_se`
    (per-example standard error of the Hutchinson mean; 0 for the exact divergence), `bpd` (`[N]`) and the total
    `nfe` (drift evaluations summed over batches) and `seconds`.
    """
    check_positive_int(batch_size, "batch_size")
    if isinstance(hutchinson, bool) or not isinstance(hutchinson, int) or hutchinson < 0:
        raise ValueError(f"hutchinson must be an integer >= 0 (0: exact divergence), got {hutchinson!r}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 0 or levels == 1:
        raise ValueError(f"levels must be 0 (continuous data) or an integer >= 2, got {levels!r}")
    reps = max(1, hutchinson)
    dims = x[0].numel()
    process = getattr(denoiser, "process", None)
    nats, se, nfe, t0 = [], [], 0, time.perf_counter()
    batches = range(0, x.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc="nll", unit="batch")
    for i, start in enumerate(batches):
        g = torch.Generator().manual_seed(seed + i)
        xb = x[start:start + batch_size]
        y = dequantize(xb.repeat_interleave(reps, 0), levels, g)
        res = log_likelihood(denoiser, y, process=process, sigma_min=sigma_min, sigma_max=sigma_max, rtol=rtol,
                             atol=atol, steps=steps,
                             divergence="hutchinson" if hutchinson else "exact", generator=g)
        v = -res.log_prob.detach().double().reshape(xb.shape[0], reps)
        nats.append(v.mean(1))
        se.append(v.std(1) / math.sqrt(reps) if reps > 1 else torch.zeros(xb.shape[0], dtype=torch.float64))
        nfe += res.nfe
    nats, se = torch.cat(nats), torch.cat(se)
    return {"nats": nats, "nats_se": se, "bpd": _bpd(-nats, dims, levels), "nfe": nfe,
            "seconds": time.perf_counter() - t0}


def summarize(res: dict, dims: int, levels: int) -> dict:
    """Means with standard errors over the examples (`std / sqrt(N)`; it includes the Hutchinson and
    dequantization noise, which are independent across examples)."""
    n = res["nats"].numel()
    se = lambda v: float(v.std() / math.sqrt(n)) if n > 1 else float("nan")  # noqa: E731
    return {"n": n, "dims": dims, "levels": levels, "nll_nats": float(res["nats"].mean()),
            "nll_nats_se": se(res["nats"]),
            "nats_per_dim": float(res["nats"].mean()) / dims, "nats_per_dim_se": se(res["nats"]) / dims,
            "bits_per_dim": float(res["bpd"].mean()), "bits_per_dim_se": se(res["bpd"]),
            "bin_width": None if levels == 0 else 2.0 / (levels - 1),
            "nfe": res["nfe"], "seconds": res["seconds"]}


# ---- the command ----------------------------------------------------------------------------------------------

def add_arguments(p) -> None:
    """The options of `unifusion nll` on an argparse (sub)parser."""
    p.add_argument("run", help="a checkpoint file or run folder of `unifusion train`")
    p.add_argument("--data", default="test", help="'test' or 'train' (the run's data set's split), or a .npz file "
                                                  "(default: test)")
    p.add_argument("--n", type=int, help="evaluate only the first N examples")
    p.add_argument("--hutchinson", type=int, default=0, metavar="K",
                   help="K single-probe Hutchinson estimates per example instead of the exact divergence")
    p.add_argument("--steps", type=int, help="fixed grid: this many equal Dormand-Prince steps in log sigma "
                                             "(NFE = 6 steps + 1 per batch, the same on every rank); default adaptive")
    p.add_argument("--levels", type=int, help="data levels in [-1, 1] for the uniform dequantization (0: continuous; "
                                              "default: 17 for digits, 256 for image folders, 0 otherwise)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="dequantization noise and Hutchinson probes")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--sigma-min", type=float, help="start of the ODE (default: for data with levels the dequantization "
                                                   "noise's sd w/sqrt(12), at least the process's sigma~(t_min); "
                                                   "for continuous data the process's sigma~(t_min))")
    p.add_argument("--sigma-max", type=float, help="end of the ODE, where the Gaussian prior is taken (default: the "
                                                   "process's sigma~(t_max))")
    p.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA")
    p.add_argument("--double", action="store_true", help="evaluate in float64")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="write the report with per-example values as JSON to PATH (no PATH: to stdout)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the run's train.threads)")


def _data(args, denoiser) -> tuple[torch.Tensor, int]:
    """The evaluation data and the default number of levels of the run's data set."""
    from .data import get_dataset, load_npz
    from .train.task import data_source

    name = denoiser.config["data"]["name"]
    levels = 17 if name == "digits" else (0 if str(name).endswith(".npz") or name in _toys() else 256)
    if args.data.endswith(".npz"):
        x, _ = load_npz(args.data)
        return x, levels if name == "digits" else 0
    if args.data not in ("test", "train"):
        raise ValueError(f"--data must be 'test', 'train' or a .npz file, got {args.data!r}")
    if name != "digits":
        raise ValueError(f"--data {args.data}: the run's data set {name!r} has no {args.data} split; pass a .npz file")
    _, kwargs = data_source(denoiser.config)
    x, _ = get_dataset(name, **dict(kwargs, split=args.data))
    return x, levels


def _sigma_min(given: float | None, levels: int, denoiser) -> float:
    """The ODE's start for a run's denoiser: `--sigma-min` if given, else the process's `sigma~(t_min)`, raised for
    data with levels to `dequantization_sigma(levels)` (module docstring)."""
    if given is not None:
        return given
    own = denoiser.process.sigma_ve_min
    return max(own, dequantization_sigma(levels)) if levels else own


def _toys():
    from .data import TOYS
    return TOYS


def _gather(values: dict, idx: torch.Tensor, n: int) -> dict:
    """Every rank's per-example values put back in data order (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (idx, {k: v for k, v in values.items() if isinstance(v, torch.Tensor)},
                                   values["nfe"], values["seconds"]))
    out = {k: torch.empty(n, dtype=torch.float64) for k in parts[0][1]}
    for i, vals, _, _ in parts:
        for k, v in vals.items():
            out[k][i] = v
    out["nfe"] = max(p[2] for p in parts)
    out["seconds"] = max(p[3] for p in parts)
    return out


def run(args, set_threads=None) -> int:
    """`unifusion nll`: load the run, shard the data over torchrun processes, evaluate, report on rank 0.
    `set_threads(n)` is the CLI's (library code leaves torch's thread count alone): it gets `--threads`, else
    the run's `train.threads`."""
    from .train import load_model
    from .train.distributed import init_distributed

    denoiser = load_model(args.run, ema=not args.raw)
    if set_threads is not None:
        set_threads(args.threads if args.threads is not None else denoiser.config.get("train", {}).get("threads", 0))
    info = init_distributed("cpu")
    x, levels = _data(args, denoiser)
    levels = args.levels if args.levels is not None else levels
    if args.n is not None:
        check_positive_int(args.n, "--n")
        x = x[:args.n]
    if tuple(x.shape[1:]) != tuple(denoiser.data_shape):
        raise ValueError(f"data of shape {tuple(x.shape[1:])} do not fit the model's {tuple(denoiser.data_shape)}")
    if args.double:
        denoiser, x = denoiser.double(), x.double()
    sigma_min = _sigma_min(args.sigma_min, levels, denoiser)
    idx = torch.arange(info.rank, x.shape[0], info.world_size)
    res = nll(denoiser, x[idx], levels=levels, hutchinson=args.hutchinson, steps=args.steps,
              batch_size=args.batch_size, seed=args.seed + 7919 * info.rank, rtol=args.rtol, atol=args.atol,
              sigma_min=sigma_min, sigma_max=args.sigma_max, progress=info.is_main)
    res = _gather(res, idx, x.shape[0])
    if not info.is_main:
        return 0
    dims = x[0].numel()
    summary = summarize(res, dims, levels)
    summary.update({"run": str(args.run), "data": args.data, "divergence": f"hutchinson x{args.hutchinson}"
                    if args.hutchinson else "exact", "grid": f"fixed {args.steps} steps" if args.steps else
                    f"adaptive rtol={args.rtol:g} atol={args.atol:g}", "world_size": info.world_size,
                    "sigma_min": sigma_min})
    if args.json:
        doc = dict(summary, per_example={k: res[k].tolist() for k in ("nats", "nats_se", "bpd")})
        text = json.dumps(doc, indent=1)
        if args.json == "-":
            print(text)
            return 0
        from .utils import atomic_write
        atomic_write(args.json, text)
    deq = (f"uniform dequantization over {levels} levels in [-1, 1] (bin width {2 / (levels - 1):.4g})"
           if levels else "continuous data (no dequantization)")
    print(f"{summary['n']} examples of {args.data}, {dims} dims, {deq}; {summary['divergence']}, "
          f"{summary['grid']} from sigma {sigma_min:.4g}, {summary['nfe']} NFE, {summary['seconds']:.1f} s",
          file=sys.stdout)
    print(f"NLL {summary['nll_nats']:.4f} +- {summary['nll_nats_se']:.4f} nats "
          f"({summary['nats_per_dim']:.5f} +- {summary['nats_per_dim_se']:.5f} nats/dim); "
          f"{summary['bits_per_dim']:.4f} +- {summary['bits_per_dim_se']:.4f} bits/dim")
    return 0
