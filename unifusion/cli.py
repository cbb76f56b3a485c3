"""The `unifusion` command line (also `python -m unifusion`).

Owns argument parsing and the one error policy: every user error (bad config key or type, missing file,
bad checkpoint, NaN data or loss, full disk) prints one line `unifusion <command>: error: ...` on stderr and
returns exit code 2, without a traceback. Subcommands:

    train   CONFIG [--set key=value ...] [--resume] [--out DIR]   train a model (works under `torchrun`)
    sample  CHECKPOINT [--sampler S] [--grid G] [--steps N] ...    draw samples: .npz + PNG grid / scatter
    sample  --diffusers DIR --prompt "..." [--sampler S] ...       a diffusers pipeline folder -> unifusion.interop.cli
    export  RUN [--diffusers DIR] [--pretrained DIR]               a run as a diffusers / pretrained folder (interop.cli)
    eval    SAMPLES.npz | CHECKPOINT [--n N] ...                   metrics with their noise floors
    demo    [--out runs/demo] [--quick]                             VP vs VE on digits, end to end
    configs                                                         list the shipped configs
    bench samplers ...                                              -> unifusion.bench.samplers.main
    distill ...                                                     -> unifusion.consistency.cli.main
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .utils import atomic_write

__all__ = ["main", "build_parser"]


class _UserError(Exception):
    """A one-line error for the user (exit code 2)."""


def _cmd_configs(args) -> int:
    from .train.config import config_files

    for name, path in config_files().items():
        first = next((ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
        print(f"{name:16s} {first}")
    return 0


def _cmd_train(args) -> int:
    from .train import load_config, train_from_config

    cfg = load_config(args.config, args.set)
    if args.out:
        cfg["out"] = args.out
    res = train_from_config(cfg, resume=args.resume)
    print(f"trained {res.step} steps, last loss {res.loss:.5g}; checkpoint: {res.checkpoint}")
    return 0


def _threads(n, denoiser=None) -> None:
    """Set torch's CPU threads: `n`, else the run's `train.threads`, else leave torch's default."""
    import torch

    n = n if n is not None else (getattr(denoiser, "config", {}) or {}).get("train", {}).get("threads", 0)
    if n:
        torch.set_num_threads(n)


def _consistency_sample(args):
    """`--sampler consistency`: the consistency helper's model and `sample_consistency`, imported lazily."""
    try:
        from .consistency import cli as ccli
        load = ccli.load_consistency
    except (ImportError, AttributeError):
        raise _UserError("--sampler consistency needs unifusion.consistency.cli.load_consistency, which this "
                         "installation does not have; train one with `unifusion distill` in a version that has it")
    return ccli, load


def _save_samples(samples, out: Path, info: dict, data_shape) -> list[Path]:
    """`out` (.npz with `samples` and the run info as JSON) plus a PNG picture next to it."""
    import numpy as np

    atomic_write(out, lambda tmp: np.savez(tmp, samples=samples.numpy(), info=np.array(json.dumps(info))))
    png = out.with_suffix(".png")
    from .train.pictures import save_picture
    save_picture(samples, png, data_shape, title=f"{info.get('sampler')} ({info.get('nfe')} NFE)")
    return [out, png]


def _sigmas_arg(args):
    """`--sigmas 80,0.56`: a user's descending list of noise levels, checked by `grids.grid_from_list`."""
    from .grids import grid_from_list
    try:
        values = [float(v) for v in args.sigmas.split(",") if v.strip()]
    except ValueError:
        raise _UserError(f"--sigmas must be comma-separated numbers, got {args.sigmas!r}") from None
    return grid_from_list(values)


def _cmd_sample(args) -> int:
    from .train.generate import generate

    if args.diffusers:
        from .interop.cli import sample_diffusers
        return sample_diffusers(args, _sigmas_arg(args) if args.sigmas else None)
    if args.checkpoint is None:
        raise _UserError("sample needs a CHECKPOINT (a run folder or checkpoint file) or --diffusers DIR")
    if args.prompt is not None or args.negative_prompt is not None or args.guidance is not None:
        raise _UserError("--prompt, --negative-prompt and --guidance apply to --diffusers pipelines only")
    if args.sampler == "consistency":
        ccli, load = _consistency_sample(args)
        f, shape = load(args.checkpoint)
        from .consistency import consistency_sigmas, sample_consistency
        import torch, time
        g = torch.Generator().manual_seed(args.seed or 0)
        sig = _sigmas_arg(args) if args.sigmas else consistency_sigmas(args.steps or 1, f.sigma_min, f.sigma_max)
        t0 = time.perf_counter()
        args.n = args.n or 64
        x = sample_consistency(f, sig[0].item() * torch.randn((args.n, *shape), generator=g), sig, generator=g)
        steps = len(sig) - int(float(sig[-1]) == 0.0)
        info = {"sampler": "consistency", "steps": steps, "nfe": steps,
                "seconds": time.perf_counter() - t0}
        samples = x.detach().cpu()
    else:
        from .train import load_model
        d = load_model(args.checkpoint, ema=False if args.raw else True)
        _threads(args.threads, d)
        sc = d.config.get("sample", {})          # the run's `sample:` section gives the defaults
        if not args.raw and sc.get("ema") is False:
            d = load_model(args.checkpoint, ema=False)
        samples, info = generate(d, args.n or sc.get("n") or 64, d.data_shape,
                                 sampler=args.sampler or sc.get("sampler"),
                                 grid=_sigmas_arg(args) if args.sigmas else args.grid or sc.get("grid"),
                                 steps=args.steps or sc.get("steps") or 18,
                                 seed=args.seed if args.seed is not None else sc.get("seed", 0),
                                 batch_size=args.batch_size or sc.get("batch_size") or 1000,
                                 sigma_min=args.sigma_min, sigma_max=args.sigma_max)
        shape = d.data_shape
    info["checkpoint"] = str(args.checkpoint)
    folder = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent
    out = Path(args.out) if args.out else folder / f"samples_{info['sampler']}_{info['nfe']}nfe.npz"
    if out.suffix != ".npz":
        raise _UserError(f"--out must end in .npz, got {out}")
    paths = _save_samples(samples, out, info, shape)
    print(f"{samples.shape[0]} samples, {info['sampler']}, {info['nfe']} NFE, {info['seconds']:.2f} s -> "
          + ", ".join(map(str, paths)))
    return 0


def _read_samples(path: Path):
    import numpy as np
    import torch

    try:
        with np.load(path, allow_pickle=False) as z:
            if "samples" not in z:
                raise _UserError(f"{path} has no 'samples' array (keys: {sorted(z.keys())})")
            return torch.from_numpy(np.asarray(z["samples"], dtype=np.float32))
    except (OSError, ValueError) as e:
        raise _UserError(f"cannot read {path}: {str(e).splitlines()[0]}") from None


def _cmd_eval(args) -> int:
    import torch
    from . import metrics

    path = Path(args.samples)
    if path.suffix == ".npz":
        samples = _read_samples(path)
        data = args.data
        _threads(args.threads)
    else:
        from .train.generate import generate
        from .train import load_model
        d = load_model(str(path))
        _threads(args.threads, d)
        samples, _ = generate(d, args.n or 1000, d.data_shape, sampler=args.sampler, steps=args.steps or 18,
                              seed=args.seed)
        data = args.data or d.config["data"]["name"]
    if not torch.isfinite(samples).all():
        raise _UserError(f"samples from {path} contain NaN or Inf")
    flat = samples.reshape(samples.shape[0], -1)
    if data in (None, "digits") and flat.shape[1] == 64:
        rep = metrics.digits_report(flat.clamp(-1, 1), n=args.n)
        rows = [("Frechet distance (classifier features)", rep["fd"], rep["fd_floor"]),
                ("same, floor with i.i.d. class counts", rep["fd"], rep["fd_floor_iid"]),
                ("confident fraction (p > 0.9)", rep["confident_fraction"], rep["confident_fraction_floor"]),
                ("nearest-neighbour ratio", rep["nn_ratio"], rep["nn_ratio_floor"])]
    else:
        from .data import TOYS
        if data not in TOYS:
            raise _UserError(f"eval needs --data digits (64-d samples) or a 2-D toy in {sorted(TOYS)}, got {data!r}")
        from .data import toy_2d
        g = torch.Generator().manual_seed(args.seed)
        n = args.n or flat.shape[0]
        ref = toy_2d(data, max(n, 2000), g)
        rep = metrics.vector_report(flat[:n], ref, generator=g)
        floor = metrics.vector_floor(lambda m, gen: toy_2d(data, m, gen), ref, n, generator=g)
        rep = {"samples": rep, "floor": floor}
        rows = [(k, v, floor.get(k, float("nan"))) for k, v in rep["samples"].items()
                if k not in ("n", "bandwidth") and isinstance(v, (int, float))]
    print(f"{'metric':42s} {'samples':>10s} {'floor':>10s}")
    for name, v, fl in rows:
        print(f"{name:42s} {v:10.4g} {fl:10.4g}")
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=2, default=float))
    return 0


def _cmd_export(args) -> int:
    from .interop.cli import export

    return export(args)


def _cmd_demo(args) -> int:
    from .demo import main as demo_main

    demo_main(out=args.out, quick=args.quick, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unifusion", description="VP and VE diffusion models as one system.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a model from a YAML config (torchrun-ready)")
    t.add_argument("config", help="a YAML file, or the name of a shipped config (see `unifusion configs`)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=1e-3 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    t.add_argument("--out", help="run folder (overrides the config's `out`)")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("sample", help="draw samples from a checkpoint")
    s.add_argument("checkpoint", nargs="?", help="a checkpoint file, run folder or pretrained folder")
    s.add_argument("--sampler", help="a name from unifusion.samplers.SAMPLERS, or 'consistency' (default: DEFAULT_SAMPLER)")
    s.add_argument("--grid", help="a grid name (edm, geometric, log_snr, uniform_t, timesteps, ddim; default: the sampler's)")
    s.add_argument("--steps", type=int, help="grid levels (default: the run's sample.steps, else 18; "
                                             "for consistency: the number of steps, 1)")
    s.add_argument("--n", type=int, help="number of samples (default: the run's sample.n)")
    s.add_argument("--seed", type=int, help="default: the run's sample.seed")
    s.add_argument("--batch-size", type=int, help="samples per batch (default: the run's sample.batch_size)")
    s.add_argument("--sigmas", help="an explicit descending list of noise levels, e.g. 80,0.56 (overrides --grid "
                                     "and --steps; for consistency: the K sampling levels)")
    s.add_argument("--sigma-min", type=float, help="lowest noise level (default: the process's)")
    s.add_argument("--sigma-max", type=float, help="highest noise level (default: the process's)")
    s.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--out", help="output .npz (a .png is written next to it)")
    s.add_argument("--threads", type=int, help="torch CPU threads (default: the run's train.threads)")
    s.add_argument("--diffusers", metavar="DIR", help="sample a local diffusers pipeline folder instead of a checkpoint "
                                                      "(--out: a .png)")
    s.add_argument("--prompt", help="text prompt (--diffusers; needs the pipeline's tokenizer)")
    s.add_argument("--negative-prompt", help="negative prompt (--diffusers)")
    s.add_argument("--guidance", type=float, help="classifier-free guidance weight (--diffusers; default 7.5 for "
                                                   "text pipelines)")
    s.set_defaults(func=_cmd_sample)

    x = sub.add_parser("export", help="write a run as a diffusers DDPMPipeline and / or a unifusion pretrained folder")
    x.add_argument("run", help="a checkpoint file or run folder")
    x.add_argument("--diffusers", metavar="DIR", help="write a diffusers DDPMPipeline folder (net diffusers_unet2d)")
    x.add_argument("--pretrained", metavar="DIR", help="write config.json + model.safetensors (from_pretrained)")
    x.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    x.set_defaults(func=_cmd_export)

    e = sub.add_parser("eval", help="metrics of samples (.npz) or of a checkpoint, with noise floors")
    e.add_argument("samples", help="a .npz from `unifusion sample`, or a checkpoint / run folder")
    e.add_argument("--data", help="reference data: digits or a 2-D toy name (default: from the checkpoint / digits)")
    e.add_argument("--n", type=int, help="samples to evaluate (default: all; 1000 drawn from a checkpoint)")
    e.add_argument("--sampler", help="sampler when evaluating a checkpoint")
    e.add_argument("--steps", type=int)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", help="also write the report as JSON here")
    e.add_argument("--threads", type=int, help="torch CPU threads (default: the run's train.threads)")
    e.set_defaults(func=_cmd_eval)

    d = sub.add_parser("demo", help="train VP and VE models on digits and compare samplers (about 2 minutes on 2 idle cores)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--quick", action="store_true", help="a tiny run for tests (seconds)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)

    c = sub.add_parser("configs", help="list the shipped configs")
    c.set_defaults(func=_cmd_configs)
    sub.add_parser("bench", help="benchmarks: `unifusion bench samplers ...`", add_help=False)
    sub.add_parser("distill", help="consistency distillation (unifusion.consistency.cli)", add_help=False)
    return p


def _delegate(command: str, rest: list[str]) -> int:
    if command == "bench":
        if not rest or rest[0] != "samplers":
            raise _UserError("usage: unifusion bench samplers [options]  (the only benchmark here is 'samplers')")
        module, rest = "unifusion.bench.samplers", rest[1:]
    else:
        module = "unifusion.consistency.cli"
    import importlib
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise _UserError(f"`unifusion {command}` needs {module}, which is not installed here ({e})") from None
    rc = mod.main(rest)
    return int(rc or 0)


def main(argv=None) -> int:
    """Run the CLI on `argv` (default `sys.argv[1:]`); returns the exit code (2 for every user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        if command in ("bench", "distill") and argv and argv[0] == command:
            return _delegate(command, argv[1:])
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:           # argparse: --help (0) or a usage error (2)
            return int(e.code or 0)
        return args.func(args)
    except KeyboardInterrupt:
        print("unifusion: interrupted", file=sys.stderr)
        return 130
    except (_UserError, ValueError, OSError) as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, OSError) and not isinstance(e, ValueError) and getattr(e, "filename", None):
            msg = f"{e.strerror or msg}: {e.filename}"
        print(f"unifusion {command or ''}: error: {msg}".replace("  ", " "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
