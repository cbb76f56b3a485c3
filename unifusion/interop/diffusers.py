"""diffusers interop: diffusers' schedulers, UNets and pipelines as unifusion processes, denoisers and sampler runs.

This module owns the translation between diffusers (Hugging Face) and unifusion:

* `process_from_scheduler_config`: the `processes.DDPM` of a diffusers scheduler config (betas "linear",
  "scaled_linear", "squaredcos_cap_v2" or `trained_betas`; `rescale_betas_zero_snr`, Lin et al. 2024, Alg. 1),
  computed in float32 as diffusers computes them, i.e. the schedule the model was trained with;
  `target_from_prediction_type`: "epsilon" / "v_prediction" / "sample" -> "eps" / "v" / "x0";
* `scheduler_sigmas`: the sigma~ grid a scheduler steps on (its timestep spacing, `steps_offset`, final level),
  built from `grids.ddim_timesteps` and `grids.sigmas_from_timesteps`;
* `denoiser_from_diffusers`: a diffusers UNet as a `Denoiser`, conditioning through `model_kwargs`;
* `sample_pipeline`: a diffusers pipeline (unet + scheduler, optional text encoder and VAE) sampled by any unifusion
  sampler, classifier-free guidance (Ho & Salimans 2022) in one batched call, decoded as the pipeline decodes;
* `DiffusersUNet2D`: diffusers' `UNet2DModel` as a unifusion network (`net: {kind: diffusers_unet2d}`);
* `scheduler_config_from_process` / `export_pipeline`: a trained model as a `DDPMPipeline` folder.

diffusers itself is imported only where its classes are needed, so importing this module does not need it; the
pipeline functions are duck-typed on the pipeline's parts.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import grids
from ..guidance.transforms import check_scale
from ..parametrization import Denoiser
from ..processes import DDPM, DDPM_SCHEDULES, ddpm_betas, zero_terminal_snr_betas
from ..utils import atomic_write_dir, check_choice, check_positive_int

__all__ = [
    "PREDICTION_TYPES", "process_from_scheduler_config", "target_from_prediction_type", "scheduler_sigmas",
    "DiffusersNet", "denoiser_from_diffusers", "classifier_free_kwargs", "sample_pipeline", "load_pipeline",
    "DiffusersUNet2D", "scheduler_config_from_process", "check_exportable", "export_pipeline",
]

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
# schedulers that step on sigma~ interpolated linearly in t between integer timesteps (k-diffusion-style samplers)
SIGMA_SCHEDULERS = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                    "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler")
# multistep solvers whose "linspace" and "leading" spacings place n + 1 points and drop the last
MULTISTEP_SCHEDULERS = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
                        "DEISMultistepScheduler", "SASolverScheduler")


def _diffusers():
    """The diffusers package, or an `ImportError` saying how to install it."""
    try:
        import diffusers
    except ImportError as e:
        raise ImportError(f"this needs diffusers ({e}): pip install 'unifusion[diffusers]'") from None
    return diffusers


# ---- scheduler configs -> process, target, grid ---------------------------------------------------------------
def _config(scheduler_or_config) -> dict:
    """A scheduler's config (or a config mapping) as a plain dict with its `_class_name`."""
    cfg = getattr(scheduler_or_config, "config", scheduler_or_config)
    if not hasattr(cfg, "keys"):
        raise ValueError(f"expected a diffusers scheduler or its config dict, got {type(scheduler_or_config).__name__}")
    cfg = dict(cfg)
    if cfg is not scheduler_or_config and hasattr(scheduler_or_config, "config"):
        cfg.setdefault("_class_name", type(scheduler_or_config).__name__)
    return cfg


def process_from_scheduler_config(config) -> DDPM:
    """The `DDPM` process of a diffusers scheduler (or its config dict, e.g. a `scheduler_config.json`).

    The betas are formed in float32 exactly as diffusers forms them (so `alphas_cumprod` equals the scheduler's to the
    last bit), then carried in float64. `rescale_betas_zero_snr` rescales them (Lin et al. 2024; the process floors
    the terminal alpha-bar, see `DDPM`). Between integer timesteps the Euler-type schedulers of `SIGMA_SCHEDULERS`
    interpolate sigma~ linearly in t (`interpolation_type="linear"`, their default, on their own timesteps); every
    other config, and those with Karras / exponential / beta sigmas (whose times diffusers finds log-linearly),
    log-linearly (`DDPM(interpolation=...)`). The two agree at integer timesteps. A config dict needs its
    `_class_name` for this (a saved `scheduler_config.json` has it; a scheduler object supplies it). Raises
    `ValueError` naming an unknown beta schedule.
    """
    cfg = _config(config)
    n = cfg.get("num_train_timesteps", 1000)
    check_positive_int(n, "num_train_timesteps")
    if cfg.get("trained_betas") is not None:
        betas = torch.tensor(cfg["trained_betas"], dtype=torch.float32)
    else:
        check_choice(cfg.get("beta_schedule", "linear"), "beta_schedule", DDPM_SCHEDULES)
        betas = ddpm_betas(cfg.get("beta_schedule", "linear"), cfg.get("beta_start", 1e-4), cfg.get("beta_end", 0.02),
                           n, dtype=torch.float32)
    if cfg.get("rescale_betas_zero_snr", False):
        betas = zero_terminal_snr_betas(betas)
    linear = cfg.get("_class_name") in SIGMA_SCHEDULERS and cfg.get("interpolation_type", "linear") == "linear" and \
        not any(cfg.get(k) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"))
    return DDPM.from_alphas_cumprod(torch.cumprod(1.0 - betas, 0).double(),
                                    interpolation="linear" if linear else "log_linear")


def target_from_prediction_type(prediction_type: str) -> str:
    """unifusion's target for a diffusers `prediction_type` (`PREDICTION_TYPES`)."""
    check_choice(prediction_type, "prediction_type", PREDICTION_TYPES)
    return PREDICTION_TYPES[prediction_type]


def scheduler_sigmas(process: DDPM, config, steps: int) -> torch.Tensor:
    """The descending sigma~ grid on which the diffusers scheduler of `config` steps with `steps` inference steps.

    Timesteps follow the config's `timestep_spacing` and `steps_offset` as the scheduler class places them
    (`grids.ddim_timesteps`; the multistep solvers of `MULTISTEP_SCHEDULERS` place `steps + 1` points and drop the
    last, the Euler-type ones keep the fractions of "linspace"); `use_karras_sigmas` replaces the levels by the Karras
    schedule between the ends (`grids.edm_grid`, rho = 7). The grid ends in 0 when the scheduler's last step goes to
    clean data (`set_alpha_to_one=True`, `final_sigmas_type="zero"`) and in `sigma~(0)` otherwise (then the sampler's
    last step is to that level, and `sample_pipeline` returns `x_0 = alpha(0) x~`, as diffusers does).

    Known differences from diffusers' own loops: DDIM steps to `t - T // steps`, which is the next listed timestep only
    when the spacing is "leading" or `steps` divides T (here: always the next listed one); DPM-Solver with Karras
    sigmas rounds the timesteps it shows the model (here: the exact times of the Karras levels).
    """
    cfg = _config(config)
    check_positive_int(steps, "steps")
    cls, T = cfg.get("_class_name", ""), process.num_timesteps
    spacing = cfg.get("timestep_spacing", "linspace" if cls in MULTISTEP_SCHEDULERS else "leading")
    offset = cfg.get("steps_offset", 0)
    if cls in MULTISTEP_SCHEDULERS and spacing != "trailing":
        ts = grids.ddim_timesteps(T, steps + 1, spacing, offset)[:-1]
    else:
        ts = grids.ddim_timesteps(T, steps, spacing, offset, integer=cls not in SIGMA_SCHEDULERS)
    sig = grids.sigmas_from_timesteps(process, ts, zero=False)
    if cfg.get("use_karras_sigmas", False):
        lo, hi = (sig[-1], sig[0]) if cls in SIGMA_SCHEDULERS else (process.sigma_ve_min, process.sigma_ve_max)
        sig = grids.edm_grid(steps, float(lo), float(hi), zero=False)
    to_zero = cfg.get("set_alpha_to_one", True) if "set_alpha_to_one" in cfg else \
        cfg.get("final_sigmas_type", "zero") == "zero"
    if to_zero:
        return grids.append_zero(sig)
    final = process.sigma_ve(0.0).reshape(1)
    return torch.cat([sig, final]) if sig[-1] > final else sig


# ---- diffusers UNets as denoisers -----------------------------------------------------------------------------
class DiffusersNet(nn.Module):
    """A diffusers UNet called as a unifusion network `net(x_t, t, **kwargs)`: the `.sample` of its output unwrapped,
    and the mean half kept where the UNet also predicts a variance (`variance_type` "learned" / "learned_range")."""

    def __init__(self, unet: nn.Module, learned_variance: bool = False):
        super().__init__()
        self.unet, self.learned_variance = unet, learned_variance

    def forward(self, x, t, **kwargs):
        out = self.unet(x, t, **kwargs, return_dict=False)[0]
        return out[:, : x.shape[1]] if self.learned_variance else out


def denoiser_from_diffusers(unet: nn.Module, scheduler_or_config) -> Denoiser:
    """`unet` (a diffusers `UNet2DModel`, `UNet2DConditionModel`, ...) as the VE-coordinate `Denoiser` of the process
    of `scheduler_or_config` (`process_from_scheduler_config`), its `prediction_type` as the target. Conditioning goes
    through the samplers' `model_kwargs` to the UNet (`encoder_hidden_states=...`, `added_cond_kwargs=...`,
    `class_labels=...`). The UNet sees integer timesteps wherever the grid has them (fractions between), or
    EDM's `c_noise = ln(sigma~)/4` for a config with `timestep_type="continuous"`."""
    cfg = _config(scheduler_or_config)
    target = target_from_prediction_type(cfg.get("prediction_type", "epsilon"))
    net = DiffusersNet(unet, cfg.get("variance_type") in ("learned", "learned_range"))
    noise_cond = "log_sigma" if cfg.get("timestep_type") == "continuous" else "t"
    return Denoiser(net, process_from_scheduler_config(cfg), target, noise_cond=noise_cond)


def _cat(a, b):
    """Concatenate two conditionings (tensors, or dicts / lists of them) along the batch dimension."""
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, dict):
        return {k: _cat(a[k], b[k]) for k in a}
    if isinstance(a, (list, tuple)):
        return type(a)(_cat(u, v) for u, v in zip(a, b, strict=True))
    return a


def classifier_free_kwargs(denoiser, scale: float, cond: dict, uncond: dict):
    """Classifier-free guidance (Ho & Salimans 2022) between two sets of model keyword arguments (text embeddings,
    `added_cond_kwargs`): `D_w = D(x | uncond) + scale (D(x | cond) - D(x | uncond))`, both in one call on the doubled
    batch. Linear in the prediction, so it equals guidance on eps or v. Class labels (-1 = no label) have
    `unifusion.guidance.classifier_free`.

    Args:
        denoiser: a VE-coordinate denoiser `D(x, sigma, **kwargs)`.
        scale:    the guidance weight w (1: the conditional model alone).
        cond, uncond: the model keyword arguments of the two branches (same keys, batch-first tensors).
    """
    both = _cat(uncond, cond)

    def guided(x, sigma, **kwargs):
        s = torch.cat([sigma, sigma]) if isinstance(sigma, torch.Tensor) and sigma.ndim == 1 else sigma
        d_u, d_c = denoiser(torch.cat([x, x]), s, **both, **kwargs).chunk(2)
        return d_u + scale * (d_c - d_u)
    return guided


# ---- pipelines --------------------------------------------------------------------------------------------------
def load_pipeline(folder, **kwargs):
    """`diffusers.DiffusionPipeline.from_pretrained(folder)` from a local folder only (never a download), after
    checking that it is a pipeline folder with a unet and a scheduler (`ValueError` naming what is missing).
    Components that the folder's `model_index.json` lists as absent (e.g. no tokenizer or safety checker) load as
    None."""
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"diffusers pipeline folder {path} does not exist")
    for need in ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json"):
        if not (path / need).is_file():
            raise ValueError(f"{path} is not a diffusers pipeline folder with a unet and a scheduler: no {need}")
    try:
        index = json.loads((path / "model_index.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path / 'model_index.json'} is not valid JSON ({e.msg})") from None
    absent = {k: None for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is None}
    return _diffusers().DiffusionPipeline.from_pretrained(str(path), local_files_only=True, **{**absent, **kwargs})


def _conditioning(pipe, prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, n_per_prompt, cfg, device):
    """`(cond, uncond, batch)`: the UNet keyword arguments of the two guidance branches, from the pipeline's
    `encode_prompt` (text pipelines) or none (unconditional pipelines)."""
    text = getattr(pipe.unet.config, "cross_attention_dim", None) is not None
    if not text:
        if prompt is not None or prompt_embeds is not None:
            raise ValueError(f"{type(pipe).__name__}'s unet takes no text conditioning; got a prompt")
        return {}, {}, n_per_prompt
    if prompt_embeds is None and prompt is None:
        raise ValueError("this pipeline is text-conditional: give prompt= or prompt_embeds=")
    needs_tokenizer = prompt_embeds is None or (cfg and negative_prompt_embeds is None)
    if needs_tokenizer and (getattr(pipe, "tokenizer", None) is None or getattr(pipe, "text_encoder", None) is None):
        raise ValueError("a text prompt (or the empty negative prompt of guidance) needs the pipeline's tokenizer and "
                         "text encoder, and this pipeline has none; pass prompt_embeds= and negative_prompt_embeds=")
    if not hasattr(pipe, "encode_prompt"):
        raise ValueError(f"{type(pipe).__name__} has no encode_prompt; only Stable-Diffusion-style text pipelines are "
                         "supported")
    pe, npe = pipe.encode_prompt(prompt, device, n_per_prompt, cfg, negative_prompt, prompt_embeds=prompt_embeds,
                                 negative_prompt_embeds=negative_prompt_embeds)
    return {"encoder_hidden_states": pe}, ({"encoder_hidden_states": npe} if cfg else {}), pe.shape[0]


def _decode(pipe, latents, output_type: str, generator):
    """Images from final latents as the pipeline makes them: the VAE decode with its scaling (and shift) factor, the
    safety checker if there is one, and the image processor; without a VAE, `DDPMPipeline`'s `x / 2 + 0.5`."""
    if output_type == "latent":
        return latents
    vae = getattr(pipe, "vae", None)
    if vae is None:
        image = (latents / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return image
        image = image.cpu().permute(0, 2, 3, 1).float().numpy()
        return pipe.numpy_to_pil(image) if output_type == "pil" else image
    scaled = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None) is not None:
        scaled = scaled + vae.config.shift_factor
    image = vae.decode(scaled, return_dict=False, generator=generator)[0]
    nsfw = None
    if hasattr(pipe, "run_safety_checker"):
        image, nsfw = pipe.run_safety_checker(image, image.device, image.dtype)
    denorm = [True] * image.shape[0] if nsfw is None else [not n for n in nsfw]
    return pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=denorm)


@torch.no_grad()
def sample_pipeline(pipe, prompt=None, prompt_embeds=None, negative_prompt=None, negative_prompt_embeds=None, *,
                    sampler: str | None = None, steps: int = 20, guidance: float | None = None, generator=None,
                    grid=None, num_images_per_prompt: int = 1, height: int | None = None, width: int | None = None,
                    latents: torch.Tensor | None = None, output_type: str = "pil", sampler_options: dict | None = None,
                    callback=None, progress: bool = True):
    """Sample a diffusers pipeline (`StableDiffusionPipeline`, or any with `unet` + `scheduler` and optional
    `text_encoder` / `tokenizer` / `vae`) with a unifusion sampler; returns what `pipe(...).images` returns.

    The pipeline's UNet becomes a `Denoiser` of its scheduler's process (`denoiser_from_diffusers`). The initial noise
    is drawn as the pipeline draws it (`randn_tensor` with `generator`, before any sampler noise) and placed at the VP
    prior `x_T ~ N(0, I)`, i.e. `x~ = z sqrt(1 + sigma_max^2)` in VE coordinates; the result at the grid's last level
    `s` is returned in the model's coordinates, `x~ / sqrt(1 + s^2)` (the clean sample when the grid ends in 0), and
    decoded like the pipeline (VAE with its scaling factor, safety checker, image processor).

    Args:
        pipe:            the pipeline (its modules on their device and dtype).
        prompt, negative_prompt: text, encoded by the pipeline's `encode_prompt` (needs its tokenizer).
        prompt_embeds, negative_prompt_embeds: precomputed text embeddings instead.
        sampler:         a name in `unifusion.samplers.SAMPLERS` (default `DEFAULT_SAMPLER`).
        steps:           grid levels (the sampler's NFE depends on the method).
        guidance:        classifier-free guidance weight w >= 0 in one batched call (`classifier_free_kwargs`);
                         default 7.5 for text pipelines; 1 is the conditional model alone, 0 the unconditional one (the
                         pipeline itself guides only for w > 1). Unconditional pipelines take none.
        generator:       `torch.Generator` for the initial noise and the stochastic samplers.
        grid:            None: the sampler's `RECOMMENDED` grid over the process's sigma~ range; "scheduler": the
                         pipeline scheduler's own grid (`scheduler_sigmas`, e.g. DDIM's "leading" timesteps); a
                         `train.generate.GRIDS` name; or explicit descending sigmas.
        num_images_per_prompt, height, width: as in the pipeline (default size: the UNet's `sample_size` times the
                         VAE's scale factor).
        latents:         initial noise `z` instead of drawing it.
        output_type:     "pil", "np", "pt" or "latent", as the pipeline.
        sampler_options: keyword options of the sampler (e.g. `{"eta": 1.0}` for "ddim").
        callback:        the sampler's per-step callback (`unifusion.samplers`).
        progress:        show a tqdm bar over the steps.
    """
    from ..samplers import DEFAULT_SAMPLER, get_sampler
    from ..train.generate import make_grid

    for part in ("unet", "scheduler"):
        if getattr(pipe, part, None) is None:
            raise ValueError(f"sample_pipeline needs a pipeline with a {part}; {type(pipe).__name__} has none")
    name = sampler or DEFAULT_SAMPLER
    fn = get_sampler(name)
    check_positive_int(num_images_per_prompt, "num_images_per_prompt")
    text = getattr(pipe.unet.config, "cross_attention_dim", None) is not None
    if not text and guidance not in (None, 1, 1.0):
        raise ValueError(f"guidance={guidance!r}: {type(pipe).__name__} is unconditional, there is nothing to guide")
    w = (7.5 if text else 1.0) if guidance is None else check_scale(guidance, "guidance")
    weight = next(pipe.unet.parameters())  # (ModelMixin's .device / .dtype walk every module: slow)
    device, dtype = weight.device, weight.dtype
    cond, uncond, batch = _conditioning(pipe, prompt, prompt_embeds, negative_prompt, negative_prompt_embeds,
                                        num_images_per_prompt, w != 1, device)
    denoiser = denoiser_from_diffusers(pipe.unet, pipe.scheduler)
    process = denoiser.process
    if isinstance(grid, str) and grid == "scheduler":
        sigmas = scheduler_sigmas(process, pipe.scheduler, steps)
    else:
        sigmas = make_grid(process, name, grid, steps, process.sigma_ve_min, process.sigma_ve_max)
    model = classifier_free_kwargs(denoiser, w, cond, uncond) if w != 1 else \
        (lambda x, sigma, **kw: denoiser(x, sigma, **cond, **kw))
    z = _initial_noise(pipe, batch, height, width, dtype, device, generator, latents)
    s0, s_end = float(sigmas[0]), float(sigmas[-1])
    bar = tqdm(total=len(sigmas) - 1, desc=f"sampling ({name})", disable=not progress, leave=False)

    def report(info):
        bar.update(1)
        if callback is not None:
            callback(info)
    try:
        x = fn(model, z * math.sqrt(1.0 + s0 * s0), sigmas, generator=generator, callback=report,
               **(sampler_options or {}))
    finally:
        bar.close()
    return _decode(pipe, x / math.sqrt(1.0 + s_end * s_end), output_type, generator)


def _initial_noise(pipe, batch, height, width, dtype, device, generator, latents):
    """The pipeline's initial noise `z ~ N(0, I)` of shape `[batch, C, h, w]` (its own `randn_tensor` draw)."""
    scale = getattr(pipe, "vae_scale_factor", 1) if getattr(pipe, "vae", None) is not None else 1
    size = pipe.unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    h, w = (height or size[0] * scale) // scale, (width or size[1] * scale) // scale
    shape = (batch, pipe.unet.config.in_channels, h, w)
    if latents is not None:
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(device=device, dtype=dtype)
    _diffusers()
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


# ---- diffusers' UNet2DModel as a unifusion network, and export ---------------------------------------------------
class DiffusersUNet2D(nn.Module):
    """diffusers' `UNet2DModel` as a unifusion network `net(x, noise_cond, class_labels=None)` (`net: {kind:
    diffusers_unet2d}` in a config); what `export_pipeline` writes into a `DDPMPipeline`.

    Args:
        img_resolution:     image size (square), filled in from the data.
        in_channels:        image channels, filled in from the data.
        out_channels:       output channels (0: `in_channels`).
        block_out_channels: channels per resolution level.
        layers_per_block:   ResNet blocks per level.
        down_block_types, up_block_types: diffusers block names per level (e.g. "DownBlock2D", "AttnDownBlock2D").
        norm_num_groups:    GroupNorm groups (must divide every channel count).
        attention_head_dim: channels per attention head.
        dropout:            dropout rate.
        num_classes:        0 = unconditional; `> 0` adds a label embedding (`class_labels` `[B]`, -1 = no label,
                            which is class index `num_classes` of diffusers' `num_class_embeds = num_classes + 1`).
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int = 0, block_out_channels=(32, 64),
                 layers_per_block: int = 1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups: int = 8,
                 attention_head_dim: int = 8, dropout: float = 0.0, num_classes: int = 0):
        super().__init__()
        if not (len(block_out_channels) == len(down_block_types) == len(up_block_types)):
            raise ValueError(f"block_out_channels, down_block_types and up_block_types need one entry per level, got "
                             f"{list(block_out_channels)}, {list(down_block_types)}, {list(up_block_types)}")
        self.num_classes = num_classes
        self.unet = _diffusers().UNet2DModel(
            sample_size=img_resolution, in_channels=in_channels, out_channels=out_channels or in_channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=tuple(down_block_types), up_block_types=tuple(up_block_types),
            norm_num_groups=norm_num_groups, attention_head_dim=attention_head_dim, dropout=dropout,
            num_class_embeds=num_classes + 1 if num_classes else None)

    def forward(self, x, noise_cond, class_labels=None):
        kw = {}
        if self.num_classes:
            labels = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device) if class_labels is None \
                else class_labels.to(device=x.device, dtype=torch.long)
            kw["class_labels"] = torch.where(labels < 0, self.num_classes, labels)
        return self.unet(x, noise_cond.expand(x.shape[0]), **kw, return_dict=False)[0]


def scheduler_config_from_process(process, target: str) -> dict:
    """The diffusers scheduler config (keyword arguments of any DDPM-family scheduler) equivalent to `process` with a
    network predicting `target`: a `DDPM` process (named betas, or explicit ones as `trained_betas`), target "eps",
    "v" or "x0"; clipping off. Anything else raises `ValueError` saying what cannot be expressed."""
    if not isinstance(process, DDPM):
        raise ValueError(f"process {process!r} has no diffusers scheduler equivalent; only the discrete ddpm process "
                         f"(betas {list(DDPM_SCHEDULES)} or explicit) has one")
    types = {v: k for k, v in PREDICTION_TYPES.items()}
    if target not in types:
        raise ValueError(f"target {target!r} has no diffusers prediction_type; one of {sorted(types)} has")
    cfg = {"num_train_timesteps": process.num_timesteps, "prediction_type": types[target], "clip_sample": False,
           "rescale_betas_zero_snr": process.rescale_zero_terminal_snr}
    if process.schedule == "custom":
        cfg["trained_betas"] = process.betas.tolist()
    else:
        cfg.update(beta_schedule=process.schedule, beta_start=process.beta_start, beta_end=process.beta_end)
    return cfg


def check_exportable(denoiser: Denoiser) -> dict:
    """The scheduler config `export_pipeline` would write for `denoiser`, or `ValueError` naming why diffusers cannot
    express it: the net must be `DiffusersUNet2D` (unconditional), the network time the integer timestep
    (`noise_cond="t"`, `time_scale=1`), the process `DDPM` and the target eps / v / x0."""
    net = getattr(denoiser, "net", None)
    if not isinstance(net, DiffusersUNet2D):
        raise ValueError(f"export to diffusers needs a model whose net is diffusers_unet2d, got "
                         f"{type(net).__name__}; train one with `net: {{kind: diffusers_unet2d}}`")
    if net.num_classes:
        raise ValueError("export to diffusers supports unconditional models only (DDPMPipeline passes no class labels)")
    if denoiser.noise_cond != "t" or denoiser.time_scale != 1.0:
        raise ValueError(f"export to diffusers needs the network to see the integer timestep (model.noise_cond: t, "
                         f"model.time_scale: 1), got noise_cond={denoiser.noise_cond!r}, "
                         f"time_scale={denoiser.time_scale!r}")
    return scheduler_config_from_process(denoiser.process, denoiser.target)


def export_pipeline(denoiser: Denoiser, folder) -> Path:
    """Write `denoiser` as a `diffusers.DDPMPipeline` folder that `DDPMPipeline.from_pretrained(folder)` loads
    offline: its UNet (float32) and a `DDPMScheduler` whose config is equivalent to the process (`check_exportable`,
    which raises `ValueError` for a model diffusers cannot express). Written atomically; `folder` must not exist yet
    (or be empty)."""
    config = check_exportable(denoiser)
    d = _diffusers()
    pipe = d.DDPMPipeline(unet=copy.deepcopy(denoiser.net.unet).float().cpu(), scheduler=d.DDPMScheduler(**config))
    return atomic_write_dir(folder, lambda tmp: pipe.save_pretrained(str(tmp), safe_serialization=True))
