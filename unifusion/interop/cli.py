"""The command-line verbs of interop (registered by `unifusion.cli`, which owns parsing and the error policy):

    unifusion sample --diffusers DIR --prompt "..." [--sampler S] [--steps N] [--guidance W] [--n N] [--out F.png]
        a diffusers pipeline folder sampled by a unifusion sampler (`interop.diffusers.sample_pipeline`);
    unifusion export RUN [--diffusers DIR] [--pretrained DIR] [--raw]
        a trained run as a `diffusers.DDPMPipeline` folder (`interop.diffusers.export_pipeline`) and / or a
        unifusion pretrained folder (`train.save_pretrained`).

Every user error is a `UserError` / `ValueError` with a one-line message (the CLI prints it and exits 2).
"""
from __future__ import annotations

import math
from pathlib import Path

__all__ = ["sample_diffusers", "export"]


def _tile(images):
    """`[N, H, W, C]` floats in [0, 1] as one uint8 picture, `ceil(sqrt(N))` columns."""
    import numpy as np

    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.ones((rows * h, cols * w, c), dtype=np.float32)
    for i, im in enumerate(images):
        out[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = im
    return (out.clip(0, 1) * 255).round().astype(np.uint8)


def _quiet_diffusers() -> None:
    """diffusers' (and transformers', if installed) loading bars and warnings off: the CLI's stderr is for its own
    one-line errors. A missing diffusers is a one-line error too."""
    try:
        import diffusers
    except ImportError as e:
        raise ValueError(f"this command needs diffusers ({e}): pip install 'unifusion[diffusers]'") from None
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    try:
        import transformers
    except ImportError:  # only text pipelines need it
        return
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def sample_diffusers(args, sigmas=None) -> int:
    """`unifusion sample --diffusers DIR ...`: images from a local pipeline folder, saved as one PNG.

    Args:
        args:   the parsed `sample` arguments (`diffusers`, `prompt`, `negative_prompt`, `guidance`, `sampler`,
                `grid`, `steps`, `option`, `n`, `seed`, `out`, `overwrite`, `threads` are used; the caller has
                rejected the flags that do not apply).
        sigmas: an explicit grid from `--sigmas`, or None.
    """
    import time

    import torch
    from PIL import Image

    from ..cli import UserError, apply_threads, sampler_options
    from ..samplers import DEFAULT_SAMPLER
    from ..utils import atomic_write
    from .diffusers import load_pipeline, sample_pipeline

    if args.checkpoint is not None:
        raise UserError(f"argument --diffusers: cannot be combined with a unifusion checkpoint "
                        f"({args.checkpoint}); give one or the other")
    if args.sampler == "consistency":
        raise UserError("argument --sampler: consistency needs a unifusion consistency model, not a diffusers "
                        "pipeline")
    sampler = args.sampler or DEFAULT_SAMPLER
    options = sampler_options(sampler, args.option)
    out = Path(args.out) if args.out else Path(f"samples_diffusers_{sampler}.png")
    if out.suffix.lower() != ".png":
        raise UserError(f"argument --out: must end in .png with --diffusers, got {str(out)!r}")
    if out.is_dir() or (out.exists() and not args.overwrite):
        raise UserError(f"argument --out: {out} " + ("is a folder" if out.is_dir() else
                                                     "exists; pass --overwrite to replace it, or another --out"))
    apply_threads(args.threads)
    _quiet_diffusers()
    pipe = load_pipeline(args.diffusers)
    pipe.set_progress_bar_config(disable=True)
    t0 = time.perf_counter()
    images = sample_pipeline(pipe, prompt=args.prompt, negative_prompt=args.negative_prompt, sampler=sampler,
                             steps=args.steps or 20, guidance=args.guidance, num_images_per_prompt=args.n or 1,
                             generator=torch.Generator().manual_seed(args.seed or 0), sampler_options=options,
                             grid=sigmas if sigmas is not None else args.grid, output_type="np", progress=False)
    seconds = time.perf_counter() - t0
    picture = _tile(images)
    atomic_write(out, lambda tmp: Image.fromarray(picture.squeeze(-1) if picture.shape[-1] == 1 else picture)
                 .save(tmp, format="PNG"))
    print(f"{images.shape[0]} images, {sampler}, {args.steps or 20} steps, {seconds:.2f} s -> {out}")
    return 0


def export(args) -> int:
    """`unifusion export RUN --diffusers DIR --pretrained DIR`: checks every requested format before writing any."""
    from ..cli import UserError
    from ..train import load_model, save_pretrained
    from .diffusers import check_exportable, export_pipeline

    if not (args.diffusers or args.pretrained):
        raise UserError("nothing to write: give --diffusers DIR and / or --pretrained DIR")
    if args.diffusers:
        _quiet_diffusers()
    model = load_model(args.run, ema=not args.raw)
    model.weights = "raw" if args.raw else "ema"
    if args.diffusers:
        check_exportable(model)
    for flag, folder in (("--diffusers", args.diffusers), ("--pretrained", args.pretrained)):
        if folder and Path(folder).exists() and (not Path(folder).is_dir() or any(Path(folder).iterdir())):
            raise UserError(f"argument {flag}: {folder} already exists and is not an empty folder; remove it or "
                            f"choose another")
    if args.pretrained:
        save_pretrained(model, args.pretrained)
        print(f"pretrained model -> {args.pretrained} (load with unifusion.train.from_pretrained)")
    if args.diffusers:
        export_pipeline(model, args.diffusers)
        print(f"diffusers DDPMPipeline -> {args.diffusers} (load with diffusers.DDPMPipeline.from_pretrained)")
    return 0
