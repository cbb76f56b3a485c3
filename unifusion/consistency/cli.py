"""`unifusion distill`: consistency distillation from a trained checkpoint, or improved consistency training
from data (Song et al. 2023; Song & Dhariwal 2023), on the training loop of `unifusion train`.

    unifusion distill runs/digits_ve --out runs/cd --set train.steps=3000 --set consistency.N=18
    unifusion distill --ct digits_ve --out runs/ct --set train.steps=20000
    unifusion distill runs/digits_ve --out runs/cd --resume
    torchrun --nproc_per_node 2 -m unifusion distill runs/digits_ve --out runs/cd_ddp
    unifusion sample runs/cd --sampler consistency --steps 1
    unifusion distill runs/digits_ve_cond --out runs/cd_cond --guidance 2     # a guided teacher
    unifusion sample runs/cd_cond --sampler consistency --class all

Every user error prints one line and exits with code 2 (the policy of `unifusion.cli`). `load_consistency`
(re-exported here) is what `unifusion sample --sampler consistency` loads.
"""
from __future__ import annotations

import os
import sys

from ..cli import ArgumentParser, as_args, add_nproc_argument, apply_threads, launch, run_cli
from .task import DISTILL_DEFAULTS, distill_config, distill_from_config, load_consistency

__all__ = ["main", "build_parser", "load_consistency"]

PROG = "unifusion distill"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Train a consistency model: distil a `unifusion train` checkpoint (CD; the teacher's data, model "
                    "and training settings, with the distill defaults of steps / EMA / logging), or train one from "
                    "data with --ct (improved CT; the config's). Options of the `consistency:` section (--set "
                    "consistency.KEY=VALUE): " + ", ".join(f"{k} (default {v})" for k, v in DISTILL_DEFAULTS.items()))
    p.add_argument("teacher", nargs="?", help="CD: the teacher's checkpoint or run folder")
    p.add_argument("--ct", metavar="CONFIG", help="CT instead of CD: a training config (file or shipped name, e.g. "
                                                  "digits_ve) naming the data, network and model")
    p.add_argument("--out", help="run folder (default runs/distill for CD, runs/ct for CT)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. train.steps=5000, consistency.N=40, consistency.mu=0.9")
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.safetensors")
    p.add_argument("--guidance", type=float, metavar="W", help="CD: distil the classifier-free guided teacher of "
                                                               "scale W (a class-conditional teacher; "
                                                               "= --set consistency.guidance=W)")
    add_nproc_argument(p)
    return p


def _distill(argv) -> int:
    from ..train.config import train_config
    from ..train.task import check_run_folder

    args = build_parser().parse_args(argv)
    if (args.teacher is None) == (args.ct is None):
        raise ValueError("give either a teacher checkpoint (CD) or --ct CONFIG (CT), not both or neither")
    if args.guidance is not None:
        args.set.append(f"consistency.guidance={args.guidance!r}")
    if args.ct is not None:
        from ..train import load_config
        cfg = distill_config(load_config(args.ct), sets=args.set)
    else:
        cfg = distill_config(teacher=args.teacher, sets=args.set)
    if args.nproc_per_node > 1:
        check_run_folder(args.out or cfg["out"], args.resume)
        return launch(args, ["distill", *([args.teacher] if args.teacher else []), *as_args("--ct", args.ct),
                             *as_args("--set", args.set), *as_args("--out", args.out),
                             *(["--resume"] if args.resume else [])])
    apply_threads(train_config(cfg).threads)
    res = distill_from_config(cfg, resume=args.resume, out=args.out)
    if int(os.environ.get("RANK", "0")) != 0:      # torchrun: one summary, from the main process
        return 0
    print(f"trained {res.step} steps ({cfg['consistency']['mode'].upper()}), last loss {res.loss:.5g}; "
          f"checkpoint: {res.checkpoint}\nsample: unifusion sample {res.checkpoint.parent if res.checkpoint else ''} "
          f"--sampler consistency --steps 1")
    return 0


def main(argv=None) -> int:
    """Run `unifusion distill` on `argv` (default `sys.argv[1:]`) under the CLI's error policy (`unifusion.cli.run_cli`:
    every user error is one line and exit code 2)."""
    return run_cli(PROG, _distill, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
