"""The `unifusion` command line (also `python -m unifusion`).

Owns argument parsing and the one error policy every verb follows (`run_cli`, `ArgumentParser`, `UserError`;
`unifusion distill` uses them too): every user error (a bad flag or config value, a missing
or unreadable file, a bad checkpoint, NaN data or loss, a full disk, a lost DDP process) prints one line
`unifusion <verb>: error: ...` on stderr and returns exit code 2, without a traceback; everything is checked
before anything is written, and files are written to a temporary file and renamed, so a failed command leaves
every existing file as it was. Library code never changes torch's thread count; the verbs apply `--threads` or
the run's `train.threads`. Subcommands:

    train   CONFIG [--set key=value ...] [--resume] [--out DIR] [--nproc-per-node N]
                                                                   train a model (DDP: N processes, or `torchrun`)
    sample  CHECKPOINT [--sampler S] [--grid G] [--steps N] [--option KEY=VALUE ...] ...
                                                                   draw samples: .npz + PNG grid / scatter
    sample  --diffusers DIR [--prompt "..."] [--sampler S] ...     a diffusers pipeline folder (unifusion.interop.cli)
    export  RUN [--diffusers DIR] [--pretrained DIR]               a run as a diffusers / pretrained folder
    eval    SAMPLES.npz | CHECKPOINT [--n N] ...                   metrics with their noise floors
    demo    [--out runs/demo] [--quick]                             VP vs VE on digits, end to end
    nll     RUN [--data test] [--hutchinson K] [--steps N] [--json]   likelihoods in nats and bits/dim
    seminar [--out runs/seminar] [--quick]                           the seminar's claims, measured: PASS/FAIL
    configs                                                         list the shipped configs
    distill ...                                                     -> unifusion.consistency.cli.main
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable

from . import __version__
from .utils import atomic_write

__all__ = ["main", "build_parser", "run_cli", "report_error", "ArgumentParser", "UserError", "apply_threads",
           "sampler_options", "launch", "add_nproc_argument", "as_args"]


class UserError(Exception):
    """A one-line error for the user (exit code 2); `prog` overrides the verb named in the message."""

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line `UserError`s (argparse itself prints the usage and the error on
    several lines). Sub-parsers inherit the class."""

    def error(self, message):
        raise UserError(message, prog=self.prog)


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or \
        (isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
        return f"{e.strerror or type(e).__name__}: {where}"
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"out of memory: {text}" if _out_of_memory(e) else text


def run_cli(prog: str, fn: Callable, *args) -> int:
    """`fn(*args)` under the CLI's error policy; returns its exit code (0 for None). A `UserError`, `ValueError`,
    `OSError` or an out-of-memory error becomes one line `<prog>: error: <message>` on stderr and exit code 2;
    Ctrl-C exits with 130, `--help` with 0. Anything else is a bug and keeps its traceback."""
    try:
        return int(fn(*args) or 0)
    except SystemExit as e:           # --help of an argparse parser
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, OSError, MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not _out_of_memory(e):
            raise
        return report_error(prog, e)


def report_error(prog: str, e: BaseException) -> int:
    """Print `e` as the one line `<prog>: error: <message>` on stderr (a `UserError`'s own `prog` wins); return 2."""
    print(f"{getattr(e, 'prog', None) or prog}: error: {_one_line(e)}", file=sys.stderr)
    return 2


def apply_threads(n: int | None) -> None:
    """Set torch's CPU threads to `n` (None or 0: leave torch's default). The CLI's job: library code never does."""
    if n:
        import torch
        torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------------------------
# argument types: each error names the argument (argparse prefixes "argument --x: ")

def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {text!r}")
        return v
    return parse


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (0 < v < math.inf):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return v


_positive_int, _nonnegative_int = _int_at_least(1), _int_at_least(0)


# ---------------------------------------------------------------------------------------------------------------
# verbs

def _cmd_configs(args) -> int:
    from .train.config import config_files

    for name, path in config_files().items():
        first = next((ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
        print(f"{name:16s} {first}")
    return 0


def _cmd_train(args) -> int:
    from .latent import train_from_config         # pixel, latent and autoencoder configs
    from .train import load_config
    from .train.config import check_config, train_config
    from .train.task import check_run_folder

    cfg = load_config(args.config, args.set)
    if args.out is not None:
        cfg["out"] = args.out
        check_config(cfg)
    if args.print_config:
        from .train.config import dump_config
        print(dump_config(cfg), end="")
        return 0
    if args.nproc_per_node > 1:
        check_run_folder(cfg["out"], args.resume)
        return launch(args, ["train", args.config, *as_args("--set", args.set), *as_args("--out", args.out),
                             *(["--resume"] if args.resume else [])])
    apply_threads(train_config(cfg).threads)
    res = train_from_config(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:       # torchrun: one summary, from the main process
        print(f"trained {res.step} steps, last loss {res.loss:.5g}; checkpoint: {res.checkpoint}")
    return 0


def as_args(name: str, value) -> list[str]:
    """`value` as command-line arguments: none for None, `name v` for each item of a list, else `name value`."""
    values = [] if value is None else value if isinstance(value, list) else [value]
    return [a for v in values for a in (name, str(v))]


def launch(args, argv: list[str]) -> int:
    """`--nproc-per-node N`: run `unifusion ARGV` (the same verb without that flag) in N local DDP processes
    (`train.distributed.launch_local`); a failed process is one summary line after that process's own error."""
    from .train.distributed import launch_local

    if "WORLD_SIZE" in os.environ:
        raise UserError("argument --nproc-per-node: this process already runs under torchrun; drop the flag")
    failure = launch_local(args.nproc_per_node, argv)
    if failure is not None:
        raise UserError(failure)
    return 0


def _sigmas_arg(args):
    """`--sigmas 80,0.56`: a user's descending list of noise levels, checked by `grids.grid_from_list`."""
    from .grids import grid_from_list
    try:
        values = [float(v) for v in args.sigmas.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"argument --sigmas: must be comma-separated numbers, got {args.sigmas!r}") from None
    try:
        return grid_from_list(values)
    except ValueError as e:
        raise UserError(f"argument --sigmas: {e}") from None


_NOT_OPTIONS = ("generator", "callback", "model_kwargs", "extra_args", "disable")  # set by `generate`, not users


def sampler_options(sampler: str, items) -> dict:
    """`--option KEY=VALUE` strings as keyword arguments of `sampler`: each key must be one of its options (the
    error lists them), each value is parsed like `--set` and must have the type of the option's default."""
    import inspect

    from .samplers import get_sampler
    from .schema import conforms, describe, options_of
    from .train.config import parse_value

    fn = get_sampler(sampler)
    types = options_of(fn)
    params = {k: p for k, p in inspect.signature(fn).parameters.items()
              if p.kind is p.KEYWORD_ONLY and k not in _NOT_OPTIONS}
    options = {}
    for item in items or ():
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UserError(f"argument --option: expects KEY=VALUE, got {item!r}")
        if key not in params:
            valid = ", ".join(sorted(params)) or "none"
            raise UserError(f"argument --option: sampler {sampler!r} has no option {key!r}; its options: {valid}")
        value = parse_value(text)
        if not conforms(value, types[key][0]):
            raise UserError(f"argument --option: {key} must be {describe(types[key][0])}, got {text!r}")
        options[key] = value
    return options


def _reject(args, flags: dict, why: str) -> None:
    """A `UserError` for the first of `flags` (attribute -> flag) that was given: it cannot apply (`why`)."""
    for attr, flag in flags.items():
        v = getattr(args, attr)
        if v not in (None, False, []):
            raise UserError(f"argument {flag}: does not apply {why}")


_PROCESS_GRIDS = ("uniform_t", "timesteps", "ddim")    # their levels are the process's, not sigma_min..sigma_max


def _sampling_plan(args, d) -> dict:
    """The keyword arguments of `generate` for a diffusion model `d`: explicit flags, else the run's `sample:`
    section. The section is one recipe: its `grid` and `steps` apply with its `sampler` only (another `--sampler`
    starts from that sampler's defaults), and its grid yields to an explicit `--sigma-min` / `--sigma-max` that it
    cannot take. A flag that cannot apply is an error."""
    from .samplers import DEFAULT_SAMPLER

    sc = d.config.get("sample", {})
    sampler = args.sampler or sc.get("sampler") or DEFAULT_SAMPLER
    own = args.sampler is None or args.sampler == (sc.get("sampler") or DEFAULT_SAMPLER)
    bounds = args.sigma_min is not None or args.sigma_max is not None
    if args.sigmas:
        _reject(args, {"grid": "--grid", "steps": "--steps", "sigma_min": "--sigma-min", "sigma_max": "--sigma-max"},
                "with --sigmas (the levels are given)")
        grid = _sigmas_arg(args)
    elif args.grid:
        if args.grid in _PROCESS_GRIDS:
            _reject(args, {"sigma_min": "--sigma-min", "sigma_max": "--sigma-max"},
                    f"to --grid {args.grid} (its levels are the process's)")
        grid = args.grid
    else:
        grid = sc.get("grid") if own else None
        if bounds and grid in _PROCESS_GRIDS:
            grid = None                     # the run's default grid cannot take the bounds the user asked for
    return dict(sampler=sampler, grid=grid,
                steps=args.steps or (sc.get("steps") if own else None) or 18,
                n=args.n or sc.get("n") or 64,
                seed=args.seed if args.seed is not None else sc.get("seed", 0),
                batch_size=args.batch_size or sc.get("batch_size") or 1000,
                sigma_min=args.sigma_min, sigma_max=args.sigma_max,
                options=sampler_options(sampler, args.option))


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an output `.npz` (and its `.png`) that cannot be written, or that exists, unless `overwrite`."""
    if out.suffix != ".npz":
        raise UserError(f"argument --out: must end in .npz, got {str(out)!r}")
    for p in (out, out.with_suffix(".png")):
        if p.is_dir():
            raise UserError(f"argument --out: {p} is a folder")
        if p.exists() and not overwrite:
            raise UserError(f"argument --out: {p} exists; pass --overwrite to replace it, or another --out")
    parent = next((q for q in out.parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"argument --out: {parent} is a file, not a folder")


def _save_samples(samples, out: Path, info: dict, data_shape, labels=None) -> list[Path]:
    """`out` (.npz with `samples`, the class `labels` if any and the run info as JSON) plus a PNG picture next to it
    (one row per class when there are labels): both or neither (the PNG is written while the .npz is still a
    temporary file, which is removed if the PNG fails)."""
    import numpy as np

    from .train.pictures import save_picture

    png = out.with_suffix(".png")
    arrays = {"samples": samples.numpy(), "info": np.array(json.dumps(info))}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    title = f"{info.get('sampler')} ({info.get('nfe')} NFE)"
    if info.get("guidance") is not None:
        title += f", guidance {info['guidance']:g}"

    def write(tmp):
        np.savez(tmp, **arrays)
        save_picture(samples, png, data_shape, title=title, labels=labels)
    atomic_write(out, write)
    return [out, png]


def _consistency_samples(args):
    """`--sampler consistency`: a `unifusion distill` checkpoint sampled by `sample_consistency`."""
    import time

    import torch

    from .consistency import consistency_sigmas, sample_consistency
    from .consistency.cli import load_consistency
    from .guidance.options import conditioning
    from .latent import decode_samples

    _reject(args, {"grid": "--grid", "sigma_min": "--sigma-min", "sigma_max": "--sigma-max", "raw": "--raw",
                   "option": "--option", "batch_size": "--batch-size"}, "to --sampler consistency")
    if args.sigmas:
        _reject(args, {"steps": "--steps"}, "with --sigmas (the levels are given)")
    f, shape = load_consistency(args.checkpoint)
    apply_threads(args.threads if args.threads is not None else f.config.get("train", {}).get("threads", 0))
    g = torch.Generator().manual_seed(args.seed or 0)
    sig = _sigmas_arg(args) if args.sigmas else consistency_sigmas(args.steps or 1, f.sigma_min, f.sigma_max)
    _, labels, cond = conditioning(f, args.n or 64, args.classes, args.guidance, args.guidance_interval,
                                   guidable=False)
    t0 = time.perf_counter()
    x = sample_consistency(f, sig[0].item() * torch.randn((args.n or 64, *shape), generator=g), sig, generator=g,
                           model_kwargs=None if labels is None else {"class_labels": labels})
    steps = len(sig) - int(float(sig[-1]) == 0.0)
    info = {"sampler": "consistency", "steps": steps, "nfe": steps, "seconds": time.perf_counter() - t0, **cond}
    x, image_shape = decode_samples(f, args.checkpoint, x.detach().cpu(), info)   # latent models: decoded images
    return x, info, image_shape or shape, labels


def _cmd_sample(args) -> int:
    if args.diffusers:
        from .interop.cli import sample_diffusers

        _reject(args, {"raw": "--raw", "batch_size": "--batch-size", "sigma_min": "--sigma-min",
                       "sigma_max": "--sigma-max", "classes": "--class", "guidance_interval": "--guidance-interval"},
                "to --diffusers pipelines")
        return sample_diffusers(args, _sigmas_arg(args) if args.sigmas else None)
    if args.checkpoint is None:
        raise UserError("the following arguments are required: checkpoint (or --diffusers DIR)")
    _reject(args, {"prompt": "--prompt", "negative_prompt": "--negative-prompt"}, "without --diffusers")
    if args.out is not None:
        _check_out(Path(args.out), args.overwrite)
    if args.sampler == "consistency":
        samples, info, shape, labels = _consistency_samples(args)
    else:
        from .guidance.options import conditioning
        from .latent import decode_samples
        from .train import load_model
        from .train.generate import generate

        d = load_model(args.checkpoint, ema=not args.raw)
        if not args.raw and d.config.get("sample", {}).get("ema") is False:   # the run samples its raw weights
            d = load_model(args.checkpoint, ema=False)
        plan = _sampling_plan(args, d)
        apply_threads(args.threads if args.threads is not None else d.config["train"].get("threads", 0))
        options, n = plan.pop("options"), plan.pop("n")
        model, labels, cond = conditioning(d, n, args.classes, args.guidance, args.guidance_interval)
        samples, info = generate(model, n, d.data_shape, class_labels=labels, **plan, **options)
        info.update(cond, options=options)
        samples, image_shape = decode_samples(d, args.checkpoint, samples, info)   # latent models: decoded images
        shape = image_shape or d.data_shape
    info["checkpoint"] = str(args.checkpoint)
    folder = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent
    out = Path(args.out) if args.out else folder / f"samples_{info['sampler']}_{info['nfe']}nfe.npz"
    _check_out(out, args.overwrite)
    paths = _save_samples(samples, out, info, shape, labels)
    print(f"{samples.shape[0]} samples, {info['sampler']}, {info['nfe']} NFE, {info['seconds']:.2f} s -> "
          + ", ".join(map(str, paths)))
    return 0


def _eval_samples(args):
    """`(samples [n, ...], data name)` of `eval`'s input: a `.npz` of `unifusion sample`, or a checkpoint to sample."""
    path = Path(args.samples)
    if path.suffix == ".npz":
        from .data import load_npz

        _reject(args, {"sampler": "--sampler", "steps": "--steps"}, "to a .npz of samples (only to a checkpoint)")
        samples, _ = load_npz(path, key="samples")
        if args.n is not None and args.n > samples.shape[0]:
            raise UserError(f"argument --n: {args.n} exceeds the {samples.shape[0]} samples in {path}")
        apply_threads(args.threads)
        return samples[:args.n] if args.n else samples, args.data
    from .latent import decode_samples
    from .train import load_model
    from .train.generate import generate

    d = load_model(str(path))
    apply_threads(args.threads if args.threads is not None else d.config["train"].get("threads", 0))
    samples, _ = generate(d, args.n or 1000, d.data_shape, sampler=args.sampler, steps=args.steps or 18,
                          seed=args.seed)
    samples, _ = decode_samples(d, path, samples)              # latent models: decoded images
    return samples, args.data or d.config["data"]["name"]


def _cmd_eval(args) -> int:
    import torch

    from . import metrics
    from .data import TOYS, toy_2d

    if args.json is not None and Path(args.json).is_dir():
        raise UserError(f"argument --json: {args.json} is a folder")
    if args.data is not None and args.data not in ("digits", "digits32") and args.data not in TOYS:
        raise UserError(f"argument --data: must be digits, digits32 or a 2-D toy in {sorted(TOYS)}, got {args.data!r}")
    samples, data = _eval_samples(args)
    flat = samples.reshape(samples.shape[0], -1)
    if not torch.isfinite(flat).all():
        raise UserError(f"samples from {args.samples} contain NaN or Inf")
    if data in (None, "digits", "digits32") and flat.shape[1] == 1024:    # digits32: scored at 8x8
        from .data import digits32_to_digits
        flat = digits32_to_digits(flat)
    if data in (None, "digits", "digits32") and flat.shape[1] == 64:
        rep = metrics.digits_report(flat.clamp(-1, 1), n=args.n)
        rows = [("Frechet distance (classifier features)", rep["fd"], rep["fd_floor"]),
                ("same, floor with i.i.d. class counts", rep["fd"], rep["fd_floor_iid"]),
                ("confident fraction (p > 0.9)", rep["confident_fraction"], rep["confident_fraction_floor"]),
                ("nearest-neighbour ratio", rep["nn_ratio"], rep["nn_ratio_floor"])]
    else:
        if data not in TOYS or flat.shape[1] != 2:
            raise UserError(f"argument --data: digits needs 64-d samples and a 2-D toy ({sorted(TOYS)}) 2-d ones; "
                            f"got {flat.shape[1]}-d samples and data {data!r}")
        g = torch.Generator().manual_seed(args.seed)
        n = flat.shape[0]
        ref = toy_2d(data, max(n, 2000), g)
        rep = metrics.vector_report(flat, ref, generator=g)
        floor = metrics.vector_floor(lambda m, gen: toy_2d(data, m, gen), ref, n, generator=g)
        rep = {"samples": rep, "floor": floor}
        rows = [(k, v, floor.get(k, float("nan"))) for k, v in rep["samples"].items()
                if k not in ("n", "bandwidth") and isinstance(v, (int, float))]
    if args.json:
        atomic_write(args.json, json.dumps(rep, indent=2, default=float))
    print(f"{'metric':42s} {'samples':>10s} {'floor':>10s}")
    for name, v, fl in rows:
        print(f"{name:42s} {v:10.4g} {fl:10.4g}")
    return 0


def _cmd_export(args) -> int:
    from .interop.cli import export

    return export(args)


def _cmd_demo(args) -> int:
    from .demo import main as demo_main

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"argument --out: {args.out} is a file, not a folder")
    apply_threads(1)                     # small models: one thread per process is the fastest here
    demo_main(out=args.out, quick=args.quick, seed=args.seed)
    return 0


def _cmd_nll(args) -> int:
    from .nll import run

    return run(args, set_threads=apply_threads)


def _cmd_seminar(args) -> int:
    from .seminar.report import run

    apply_threads(1)                     # small models: one thread per process (its workers set their own)
    return run(args)


def add_nproc_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc-per-node", type=_positive_int, default=1, metavar="N",
                        help="train with DDP in N processes on this machine, as `torchrun --standalone "
                             "--nproc_per_node N` but with a one-line report when a process fails (default 1)")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="unifusion", description="VP and VE diffusion models as one system.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a model from a YAML config (torchrun-ready)")
    t.add_argument("config", help="a YAML file, or the name of a shipped config (see `unifusion configs`)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key at any depth, e.g. --set train.lr=1e-3 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    t.add_argument("--out", help="run folder (overrides the config's `out`)")
    t.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    add_nproc_argument(t)
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("sample", help="draw samples from a checkpoint or a diffusers pipeline folder")
    s.add_argument("checkpoint", nargs="?",
                   help="a checkpoint file, run folder or pretrained folder")
    s.add_argument("--sampler", help="a name from unifusion.samplers.SAMPLERS, or 'consistency' (default: the run's "
                                     "sample.sampler, else DEFAULT_SAMPLER)")
    s.add_argument("--grid", help="a grid name (edm, geometric, log_snr, uniform_t, timesteps, ddim; default: the "
                                  "run's sample.grid with its sampler, else the sampler's recommended grid)")
    s.add_argument("--steps", type=_positive_int, help="grid levels (default: the run's sample.steps with its "
                                                       "sampler, else 18; for consistency: the number of steps, 1)")
    s.add_argument("--n", type=_positive_int, help="number of samples (default: the run's sample.n, else 64)")
    s.add_argument("--seed", type=_nonnegative_int, help="default: the run's sample.seed")
    s.add_argument("--batch-size", type=_positive_int, help="samples per batch (default: the run's sample.batch_size)")
    s.add_argument("--sigmas", help="an explicit descending list of noise levels, e.g. 80,0.56 (instead of --grid, "
                                    "--steps and the sigma bounds; for consistency: the K sampling levels)")
    s.add_argument("--sigma-min", type=_positive_float, help="lowest noise level (default: the process's)")
    s.add_argument("--sigma-max", type=_positive_float, help="highest noise level (default: the process's)")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword option of the sampler, e.g. eta=0.5 (ddim), s_churn=40 (edm_stochastic), "
                        "snr=0.1 (pc), step_size=0.1 (langevin); values parse like --set (repeatable)")
    s.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--out", help="output .npz (a .png is written next to it)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output .npz / .png")
    s.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: the run's train.threads)")
    s.add_argument("--class", dest="classes", metavar="C",
                   help="class-conditional sampling: a class (3), a list (3,5) or 'all'; the samples are split into "
                        "one block per class (the PNG has one row per class)")
    s.add_argument("--guidance", type=float, metavar="W",
                   help="classifier-free guidance scale w >= 0 (0: unconditional, 1: conditional; needs --class, "
                        "or --diffusers with a text pipeline)")
    s.add_argument("--guidance-interval", metavar="LO,HI", help="guide only for sigma in [LO, HI] (VE sigma)")
    s.add_argument("--diffusers", metavar="DIR", help="sample a local diffusers pipeline folder instead of a "
                                                      "checkpoint (--out: a .png; --guidance default 7.5 for text)")
    s.add_argument("--prompt", help="text prompt (--diffusers; needs the pipeline's tokenizer)")
    s.add_argument("--negative-prompt", help="negative prompt (--diffusers)")
    s.set_defaults(func=_cmd_sample)

    x = sub.add_parser("export", help="write a run as a diffusers DDPMPipeline and / or a unifusion pretrained folder")
    x.add_argument("run", help="a checkpoint file or run folder")
    x.add_argument("--diffusers", metavar="DIR", help="write a diffusers DDPMPipeline folder (net diffusers_unet2d)")
    x.add_argument("--pretrained", metavar="DIR", help="write config.json + model.safetensors (from_pretrained)")
    x.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    x.set_defaults(func=_cmd_export)

    e = sub.add_parser("eval", help="metrics of samples (.npz) or of a checkpoint, with noise floors")
    e.add_argument("samples", help="a .npz from `unifusion sample`, or a checkpoint / run folder")
    e.add_argument("--data", help="reference data: digits, digits32 (scored at 8x8) or a 2-D toy name (default: from "
                                  "the checkpoint / digits)")
    e.add_argument("--n", type=_positive_int, help="samples to evaluate (default: all; 1000 drawn from a checkpoint)")
    e.add_argument("--sampler", help="sampler when evaluating a checkpoint")
    e.add_argument("--steps", type=_positive_int, help="grid levels when evaluating a checkpoint (default 18)")
    e.add_argument("--seed", type=_nonnegative_int, default=0)
    e.add_argument("--json", help="also write the report as JSON here")
    e.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: the run's train.threads)")
    e.set_defaults(func=_cmd_eval)

    d = sub.add_parser("demo",
                       help="train VP and VE models on digits and compare samplers (about 2 minutes on 2 idle cores)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--quick", action="store_true", help="a tiny run for tests (seconds)")
    d.add_argument("--seed", type=_nonnegative_int, default=0)
    d.set_defaults(func=_cmd_demo)

    from . import nll
    n = sub.add_parser("nll", help="negative log-likelihood (nats, bits/dim) of data under a run, by the PF-ODE")
    nll.add_arguments(n)
    n.set_defaults(func=_cmd_nll)

    from .seminar import report
    r = sub.add_parser("seminar", help="the seminar's claims, each measured, as a Markdown + HTML report (PASS/FAIL)")
    report.add_arguments(r)
    r.set_defaults(func=_cmd_seminar)

    c = sub.add_parser("configs", help="list the shipped configs")
    c.set_defaults(func=_cmd_configs)
    sub.add_parser("distill", help="consistency distillation (unifusion.consistency.cli)", add_help=False)
    return p


def main(argv=None) -> int:
    """Run the CLI on `argv` (default `sys.argv[1:]`); returns the exit code (2 for every user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "distill":            # its own parser (unifusion.consistency.cli)
        from .consistency.cli import main as distill_main
        return distill_main(argv[1:])
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra:                     # argparse would report them under "unifusion", not the verb
            raise UserError(f"unrecognized arguments: {' '.join(extra)}", prog=f"unifusion {args.command}")
    except SystemExit as e:           # --help
        return int(e.code or 0)
    except UserError as e:            # a usage error: one line
        return report_error("unifusion", e)
    return run_cli(f"unifusion {args.command}", args.func, args)


def console() -> None:
    """The `unifusion` command: `main()`, then exit with its code. A failed process of a DDP group exits at once
    (`os._exit`, after flushing): with a peer gone its process group's threads cannot be joined, and the C++ teardown
    would abort with a message of its own after the one-line error."""
    code = main()
    if code and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
