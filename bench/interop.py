"""diffusers interop benchmark: unifusion's samplers driving diffusers models, against diffusers' own schedulers.

    unifusion train digits_diffusers                                               # the model (about 5 minutes, 1 core)
    .venv/bin/python bench/interop.py [--run runs/digits_diffusers] [--starts 64] [--rtol 1e-6]
    .venv/bin/python bench/interop.py --quick --out DIR                            # a smoke run (the tests)

1. Overhead: wall time per step of `sample_pipeline` on a tiny random Stable Diffusion pipeline (UNet2DConditionModel,
   AutoencoderKL, CLIPTextModel; batch 1 with classifier-free guidance, 20 steps, one thread) over the pipeline's own
   call with the equivalent diffusers scheduler, interleaved repeats, medians, ratios from the same run. The tiny UNet
   makes the comparison one of everything around the network (scheduler vs sampler bookkeeping).
2. PF-ODE endpoint error on a trained diffusers-format model: the `digits_diffusers` run (diffusers' `UNet2DModel` on
   1x8x8 digits, DDPM linear betas, eps-prediction) exported with `unifusion export --diffusers`, loaded back with
   `DDPMPipeline.from_pretrained` and wrapped by `denoiser_from_diffusers`. Every method starts from the same
   `x_T ~ N(0, I)` at t = 999 (sigma~ = 157) and ends at sigma = 0; the reference is unifusion's adaptive `dopri5`
   at rtol 1e-6 to sigma~(0) = 0.01 followed by the final step `x = D(x, 0.01)` (checked against rtol 1e-7 on 8
   starts). The discrete process's sigma~(t) is piecewise log-linear between the 1000 timesteps, so the ODE's
   right-hand side has a kink at every integer t and the reference needs thousands of NFE (about 3000 at rtol
   1e-6, twice that per decade tighter; float64 on one CPU thread): 64 starts keep it to minutes.
   Error: relative RMS `sqrt(mean |x - ref|^2 / mean |ref|^2)`. unifusion's default sampler (`hybrid` on its
   recommended grid, `grids.tuned_grid`) against every diffusers multistep/ODE scheduler in several configurations
   (spacings, Karras sigmas), the best per NFE; `hybrid` on a plain log-SNR grid is listed beside it (not in the
   ratio).

Results: `bench/results/interop.md` (tables) and `interop.json`.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from unifusion import grids
from unifusion.interop.diffusers import SIGMA_SCHEDULERS, denoiser_from_diffusers, export_pipeline, sample_pipeline
from unifusion.samplers import DEFAULT_SAMPLER, RECOMMENDED, count_nfe, get_sampler
from unifusion.utils import atomic_write

RESULTS = Path(__file__).resolve().parent / "results"
NFES = (5, 10, 20)


# ---- 1. overhead on a tiny Stable Diffusion pipeline ------------------------------------------------------------
def perturb(module, seed: int = 0, scale: float = 0.05):
    """Random weights all over (diffusers zero-initialises some output layers); eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


def tiny_sd_pipeline():
    """A `StableDiffusionPipeline` of random tiny parts (no tokenizer; Stable Diffusion's DDIM scheduler config):
    latents 4x8x8, images 3x16x16, text embeddings 16-d. Also the tests' pipeline."""
    import diffusers
    import transformers

    torch.manual_seed(0)
    unet = perturb(diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4))
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                  latent_channels=4, norm_num_groups=4, sample_size=16).eval()
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, vocab_size=16,
        max_position_embeddings=8, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    sched = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=None, unet=unet, scheduler=sched,
                                             safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def overhead(steps: int = 20, repeat: int = 7, log=print) -> list[dict]:
    """Seconds per step of `sample_pipeline` and of the pipeline's own call with the equivalent scheduler."""
    import diffusers

    pipe = tiny_sd_pipeline()
    base = dict(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    pe, npe = torch.randn(1, 7, 16, generator=g), torch.randn(1, 7, 16, generator=g)
    cases = [("ddim", "scheduler", diffusers.DDIMScheduler), ("euler", "scheduler", diffusers.EulerDiscreteScheduler),
             ("dpmpp_2m", "scheduler", diffusers.DPMSolverMultistepScheduler),
             (DEFAULT_SAMPLER, None, diffusers.DPMSolverMultistepScheduler)]
    rows = []
    for sampler, grid, cls in cases:
        pipe.scheduler = cls.from_config(base)
        def ours(sampler=sampler, grid=grid):
            return sample_pipeline(pipe, prompt_embeds=pe, negative_prompt_embeds=npe, guidance=7.5, output_type="np",
                                   sampler=sampler, grid=grid, steps=steps, progress=False,
                                   generator=torch.Generator().manual_seed(0))

        def theirs():
            return pipe(prompt_embeds=pe, negative_prompt_embeds=npe, guidance_scale=7.5, output_type="np",
                        num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
        ours(), theirs()  # warm-up
        t_ours, t_theirs = [], []
        for _ in range(repeat):
            for fn, acc in ((ours, t_ours), (theirs, t_theirs)):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
        a, b = statistics.median(t_ours) / steps, statistics.median(t_theirs) / steps
        rows.append({"sampler": sampler, "grid": grid or "recommended", "diffusers_scheduler": cls.__name__,
                     "steps": steps, "ours_ms_per_step": 1e3 * a, "diffusers_ms_per_step": 1e3 * b, "ratio": a / b})
        log(f"overhead {sampler:9s} vs {cls.__name__:28s} {1e3 * a:7.2f} / {1e3 * b:7.2f} ms per step = {a / b:.2f}")
    return rows


# ---- 2. PF-ODE endpoint error on the trained digits model ------------------------------------------------------
def diffusers_run(unet, cls, config: dict, z: torch.Tensor, steps: int) -> tuple[torch.Tensor, int]:
    """diffusers' own loop from `x~ = z sqrt(1 + sigma_max^2)` (the VP prior at t = 999): the state is x~ for the
    Euler-type schedulers and the VP `x_t = x~ / sqrt(1 + sigma^2)` for the others. Returns (x at sigma = 0, NFE)."""
    sched = cls.from_config(config)
    sched.set_timesteps(steps)
    if round(float(sched.timesteps[0])) != sched.config.num_train_timesteps - 1:
        raise ValueError(f"starts at timestep {float(sched.timesteps[0])}, not at the last one")
    vp = cls.__name__ not in SIGMA_SCHEDULERS
    x = z if vp else z * math.sqrt(1.0 + float(sched.sigmas[0]) ** 2)
    nfe = 0
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), t).sample
            nfe += 1
            x = sched.step(out, t, x).prev_sample
    return x, nfe


def diffusers_methods():
    """name -> (scheduler class, config overrides, steps for a target NFE): every deterministic diffusers scheduler
    that ends at sigma = 0, in the configurations worth trying."""
    import diffusers as D

    def one(n):
        return n
    lin, karras = {"timestep_spacing": "linspace"}, {"timestep_spacing": "linspace", "use_karras_sigmas": True}
    methods = {
        "DDIM trailing": (D.DDIMScheduler, {"timestep_spacing": "trailing"}, one),
        "Euler linspace": (D.EulerDiscreteScheduler, lin, one),
        "Euler Karras": (D.EulerDiscreteScheduler, karras, one),
        "Heun Karras": (D.HeunDiscreteScheduler, karras, lambda n: (n + 1) // 2),
        "LMS Karras": (D.LMSDiscreteScheduler, karras, one),
    }
    for order in (2, 3):
        for extra, label in ((lin, "linspace"), (karras, "Karras"), ({"timestep_spacing": "trailing"}, "trailing")):
            methods[f"DPM++({order}M) {label}"] = (D.DPMSolverMultistepScheduler,
                                                   {"solver_order": order, **extra}, one)
            methods[f"UniPC-{order} {label}"] = (D.UniPCMultistepScheduler, {"solver_order": order, **extra}, one)
        methods[f"DEIS-{order} Karras"] = (D.DEISMultistepScheduler, {"solver_order": order, **karras}, one)
    return methods


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double().flatten(1), ref.double().flatten(1)
    if not torch.isfinite(x).all():
        return math.inf
    return math.sqrt(float((x - ref).pow(2).sum(1).mean() / ref.pow(2).sum(1).mean()))


def reference(denoiser, x: torch.Tensor, s_max: float, s_min: float, rtol: float) -> tuple[torch.Tensor, int]:
    counted = count_nfe(denoiser)
    with torch.no_grad():
        out = get_sampler("dopri5")(counted, x, grids.grid_from_list([s_max, s_min, 0.0]), rtol=rtol,
                                    atol=rtol * 1e-2)
    return out, counted.nfe


def wrapped_pipeline(folder: Path, starts: int, seed: int = 0):
    """The `DDPMPipeline` in `folder` in float64, its UNet wrapped by `denoiser_from_diffusers`, and `starts` start
    points: `(pipe, unet, denoiser, z, x)` with `z ~ N(0, I)` (the pipeline's noise) and `x = z sqrt(1 + s_max^2)`
    (the same point in VE coordinates at the process's top level)."""
    import diffusers

    pipe = diffusers.DDPMPipeline.from_pretrained(str(folder), local_files_only=True)
    unet = pipe.unet.double().eval()
    denoiser = denoiser_from_diffusers(unet, pipe.scheduler)
    z = torch.randn((starts, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size),
                    generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return pipe, unet, denoiser, z, z * math.sqrt(1.0 + denoiser.process.sigma_ve_max ** 2)


def endpoint_errors(folder: Path, starts: int, seed: int = 0, rtol: float = 1e-6, nfes=NFES, log=print,
                    check_starts: int = 8) -> dict:
    """The PF-ODE table on the diffusers pipeline folder `folder` (float64 throughout)."""
    pipe, unet, denoiser, z, x0 = wrapped_pipeline(folder, starts, seed)
    config = dict(pipe.scheduler.config)
    s_max, s_min = denoiser.process.sigma_ve_max, denoiser.process.sigma_ve_min
    t0 = time.perf_counter()
    ref, ref_nfe = reference(denoiser, x0, s_max, s_min, rtol)
    check, check_nfe = reference(denoiser, x0[:check_starts], s_max, s_min, rtol * 0.1)
    ref_err = rel_rms(ref[:check_starts], check)
    log(f"reference: dopri5 rtol {rtol:g}, {ref_nfe} NFE, {time.perf_counter() - t0:.0f} s; "
        f"against rtol {rtol * 0.1:g} ({check_nfe} NFE): {ref_err:.2e}")
    rows = []
    ours = {f"{DEFAULT_SAMPLER} (default grid)": (DEFAULT_SAMPLER, RECOMMENDED[DEFAULT_SAMPLER], True),
            f"{DEFAULT_SAMPLER} (log-SNR grid)": (DEFAULT_SAMPLER, grids.log_snr_grid, False)}
    for nfe in nfes:
        for name, (sampler, grid, default) in ours.items():
            counted = count_nfe(denoiser)
            with torch.no_grad():
                out = get_sampler(sampler)(counted, x0, grid(nfe, s_min, s_max))
            rows.append({"library": "unifusion", "method": name, "default": default, "nfe_target": nfe,
                         "nfe": counted.nfe, "error": rel_rms(out, ref)})
            log(f"NFE {nfe:2d} unifusion {name:24s} {rows[-1]['error']:.3e}")
        for name, (cls, over, steps_for) in diffusers_methods().items():
            try:
                out, used = diffusers_run(unet, cls, {**config, **over}, z, steps_for(nfe))
            except Exception as e:  # a configuration diffusers rejects at this step count
                log(f"NFE {nfe:2d} diffusers {name:24s} failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
                continue
            rows.append({"library": "diffusers", "method": name, "nfe_target": nfe, "nfe": used,
                         "error": rel_rms(out, ref)})
            log(f"NFE {nfe:2d} diffusers {name:24s} {rows[-1]['error']:.3e} ({used} NFE)")
    best = {}
    for nfe in nfes:
        ours = next(r for r in rows if r["library"] == "unifusion" and r.get("default") and r["nfe_target"] == nfe)
        peers = [r for r in rows if r["library"] == "diffusers" and r["nfe_target"] == nfe and r["nfe"] <= nfe]
        peer = min(peers, key=lambda r: r["error"])
        best[nfe] = {"ours": ours, "best_diffusers": peer, "ratio": ours["error"] / peer["error"]}
    return {"starts": starts, "seed": seed, "sigma_max": s_max, "sigma_min": s_min, "nfes": list(nfes),
            "reference": {"rtol": rtol, "nfe": ref_nfe, "error_vs_tighter": ref_err, "checked_starts": check_starts},
            "rows": rows,
            "best": {str(k): v for k, v in best.items()}}


def export_run(run: Path, folder: Path) -> Path:
    from unifusion.train import load_model

    return export_pipeline(load_model(run), folder)


def quick_model(folder: Path) -> Path:
    """An untrained tiny `diffusers_unet2d` model exported to `folder` (for --quick)."""
    from unifusion.parametrization import Denoiser
    from unifusion.interop.diffusers import DiffusersUNet2D
    from unifusion.processes import DDPM

    torch.manual_seed(0)
    net = DiffusersUNet2D(8, 1, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4)
    return export_pipeline(Denoiser(net, DDPM()), folder)


def markdown(res: dict) -> str:
    lines = ["# diffusers interop benchmark", "", f"Command: `{res['command']}`; {res['machine']}.", "",
             "## Sampler overhead on a tiny Stable Diffusion pipeline", "",
             "Wall time per step (median of interleaved repeats, batch 1 with classifier-free guidance, one thread): "
             "`sample_pipeline` / the pipeline's own call with the equivalent scheduler.", "",
             "| unifusion sampler | grid | diffusers scheduler | steps | ours ms/step | diffusers ms/step | ratio |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in res["overhead"]:
        lines.append(f"| {r['sampler']} | {r['grid']} | {r['diffusers_scheduler']} | {r['steps']} | "
                     f"{r['ours_ms_per_step']:.2f} | {r['diffusers_ms_per_step']:.2f} | {r['ratio']:.2f} |")
    e = res["endpoint"]
    lines += ["", "## PF-ODE endpoint error on a trained diffusers-format digits model", "",
              f"{e['starts']} starts, sigma~ {e['sigma_max']:.1f} -> {e['sigma_min']:.4f} -> 0, float64; reference: "
              f"dopri5 rtol {e['reference']['rtol']:g} ({e['reference']['nfe']} NFE), "
              f"{e['reference']['error_vs_tighter']:.1e} from rtol {e['reference']['rtol'] * 0.1:g} on "
              f"{e['reference']['checked_starts']} starts. "
              "Relative RMS endpoint error.", "",
              "| NFE | unifusion (default sampler) | best diffusers scheduler | its error | ratio |",
              "|---:|---:|---|---:|---:|"]
    for nfe, b in e["best"].items():
        lines.append(f"| {nfe} | {b['ours']['error']:.2e} | {b['best_diffusers']['method']} "
                     f"({b['best_diffusers']['nfe']} NFE) | {b['best_diffusers']['error']:.2e} | {b['ratio']:.2f} |")
    nfes = e["nfes"]
    lines += ["", "Every configuration:", "", "| method | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
              "|---|" + "---:|" * len(nfes)]
    names = list(dict.fromkeys(r["method"] for r in e["rows"]))
    for name in names:
        cells = []
        for n in nfes:
            r = next((r for r in e["rows"] if r["method"] == name and r["nfe_target"] == n), None)
            cells.append("-" if r is None else f"{r['error']:.2e}" + ("" if r["nfe"] == n else f" ({r['nfe']})"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/digits_diffusers", help="a trained digits_diffusers run")
    ap.add_argument("--starts", type=int, default=64, help="starting points of the endpoint-error table")
    ap.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance of the dopri5 reference (checked "
                                                             "against rtol / 10 on 8 starts)")
    ap.add_argument("--steps", type=int, default=20, help="steps of the overhead comparison")
    ap.add_argument("--quick", action="store_true", help="untrained tiny model, few starts (a smoke test)")
    ap.add_argument("--out", default=str(RESULTS), help="folder for interop.md / interop.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    command = "python bench/interop.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pipeline"
        if args.quick:
            quick_model(folder)
        else:
            if not (Path(args.run) / "checkpoint.safetensors").exists():
                print(f"no trained run at {args.run}; train one with `unifusion train digits_diffusers`",
                      file=sys.stderr)
                return 2
            export_run(Path(args.run), folder)
        res = {"command": command.strip(), "machine": f"torch {torch.__version__}, 1 CPU thread",
               "overhead": overhead(steps=4 if args.quick else args.steps, repeat=1 if args.quick else 7),
               "endpoint": endpoint_errors(folder, 4, rtol=1e-3, nfes=(5,)) if args.quick else
               endpoint_errors(folder, args.starts, rtol=args.rtol)}
    out = Path(args.out)
    atomic_write(out / "interop.json", json.dumps(res, indent=2))
    atomic_write(out / "interop.md", markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
