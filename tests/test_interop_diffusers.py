"""diffusers interop against diffusers itself: processes and grids from scheduler configs, unifusion's samplers on a
wrapped UNet against diffusers' own loops, a tiny Stable Diffusion pipeline, and the export round trip.

Every model is built from a tiny config with random weights (perturbed so that no layer is trivial); nothing is
downloaded. Tolerances are relative L2 errors `|a - b| / |b|`; diffusers computes its coefficients in float32.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import diffusers
import transformers

from bench_scripts import load_bench
from unifusion import grids
from unifusion.cli import main
from unifusion.interop.diffusers import (classifier_free_kwargs, denoiser_from_diffusers, export_pipeline,
                                         process_from_scheduler_config, sample_pipeline, scheduler_config_from_process,
                                         scheduler_sigmas, target_from_prediction_type)
from unifusion.processes import DDPM, VP
from unifusion.samplers import SAMPLERS, get_sampler

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

BETAS = {"linear": {}, "scaled_linear": {"beta_start": 0.00085, "beta_end": 0.012}, "squaredcos_cap_v2": {}}
SAMPLER_OF = {"DDIMScheduler": "ddim", "EulerDiscreteScheduler": "euler", "DPMSolverMultistepScheduler": "dpmpp_2m"}


def rel(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)).double(), torch.as_tensor(np.asarray(b)).double()
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def unet(bench):
    torch.manual_seed(0)
    return bench.perturb(diffusers.UNet2DModel(
        sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=4))


def diffusers_loop(unet, sched, z, steps):
    """diffusers' own sampling loop (as its pipelines run it)."""
    sched.set_timesteps(steps)
    x = z * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


def unifusion_loop(unet, sched, z, steps):
    """unifusion's sampler of the same method on the wrapped UNet and the scheduler's grid, from the same start:
    Euler's state is x~ (VE coordinates) already; DDIM's and DPM-Solver's is the VP `x_t = x~ / sqrt(1 + sigma^2)`."""
    d = denoiser_from_diffusers(unet, sched)
    sig = scheduler_sigmas(d.process, sched, steps)
    s0, s1 = float(sig[0]), float(sig[-1])
    euler = type(sched).__name__ == "EulerDiscreteScheduler"
    x = z * (float(sched.init_noise_sigma) if euler else math.sqrt(1 + s0 * s0))
    with torch.no_grad():
        x = get_sampler(SAMPLER_OF[type(sched).__name__])(d, x, sig)
    return x if euler else x / math.sqrt(1 + s1 * s1)


# ---- processes and grids from scheduler configs ------------------------------------------------------------------
@pytest.mark.parametrize("schedule", BETAS)
@pytest.mark.parametrize("rescale", [False, True])
def test_process_is_the_schedulers_schedule_to_float64_rounding(schedule, rescale):
    s = diffusers.DDIMScheduler(beta_schedule=schedule, rescale_betas_zero_snr=rescale, **BETAS[schedule])
    for source in (s, dict(json.loads(s.to_json_string()))):  # the scheduler object or its saved config
        p = process_from_scheduler_config(source)
        assert p.num_timesteps == 1000 and p.interpolation == "log_linear"
        torch.testing.assert_close(p.alphas_cumprod, s.alphas_cumprod.double(), rtol=1e-13, atol=0)
    # the float64 DDPM of the same name agrees to diffusers' float32 rounding
    p64 = DDPM(schedule=schedule, rescale_zero_terminal_snr=rescale, **BETAS[schedule])
    torch.testing.assert_close(p64.alphas_cumprod.sqrt(), s.alphas_cumprod.double().sqrt(), rtol=0, atol=2e-6)


def test_euler_type_schedulers_interpolate_sigma_linearly():
    cfg = diffusers.EulerDiscreteScheduler().config
    assert process_from_scheduler_config(dict(cfg, _class_name="EulerDiscreteScheduler")).interpolation == "linear"
    karras = dict(cfg, _class_name="EulerDiscreteScheduler", use_karras_sigmas=True)
    assert process_from_scheduler_config(karras).interpolation == "log_linear"  # diffusers maps its sigmas back so


@pytest.mark.parametrize("name", ["DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler",
                                  "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler",
                                  "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
                                  "UniPCMultistepScheduler"])
def test_scheduler_grids_are_the_schedulers_timesteps_and_sigmas(name):
    cls = getattr(diffusers, name)
    for spacing, offset, karras, n in [("leading", 0, False, 7), ("leading", 1, False, 10), ("trailing", 0, False, 7),
                                       ("linspace", 0, False, 7), ("linspace", 0, True, 10)]:
        kw = dict(timestep_spacing=spacing, steps_offset=offset, **({"use_karras_sigmas": True} if karras else {}))
        if any(k not in cls().config for k in kw):  # an option this class does not have
            if karras or spacing != "linspace" or offset:
                continue
            kw = {}
        s = cls(**kw)
        s.set_timesteps(n)
        p = process_from_scheduler_config(s)
        sig = scheduler_sigmas(p, s, n)
        ts = p.t_from_sigma_ve(sig[sig > 0])
        if not (karras and name in ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
                                    "UniPCMultistepScheduler")):   # those round the timesteps of Karras levels
            torch.testing.assert_close(ts[:n], s.timesteps.double(), rtol=0, atol=2e-4)
        if getattr(s, "sigmas", None) is not None:
            torch.testing.assert_close(sig, s.sigmas.double(), rtol=2e-6, atol=0)
        else:  # DDIM / DDPM: the final level is set_alpha_to_one's
            assert sig[-1] == 0 and len(sig) == n + 1


def test_scheduler_grid_final_level_follows_set_alpha_to_one_and_final_sigmas_type():
    p = process_from_scheduler_config(diffusers.DDIMScheduler())
    cfg = {"_class_name": "DDIMScheduler", "set_alpha_to_one": False, "steps_offset": 1}
    sig = scheduler_sigmas(p, cfg, 10)
    assert len(sig) == 11 and float(sig[-1]) == float(p.sigma_ve(0.0)) and float(sig[-2]) == float(p.sigma_ve(1.0))
    sig = scheduler_sigmas(p, {"_class_name": "EulerDiscreteScheduler", "final_sigmas_type": "sigma_min"}, 5)
    assert float(sig[-1]) == float(p.sigma_ve(0.0)) and (sig[1:] < sig[:-1]).all()


@pytest.mark.parametrize("bad, match", [({"prediction_type": "flow"}, "prediction_type='flow' is not one of"),
                                        ({"beta_schedule": "sigmoid"}, "beta_schedule='sigmoid' is not one of")])
def test_bad_scheduler_configs_name_the_value(unet, bad, match):
    cfg = dict(diffusers.DDIMScheduler().config, **bad)
    with pytest.raises(ValueError, match=match):
        denoiser_from_diffusers(unet, cfg)
    with pytest.raises(ValueError, match="scheduler or its config"):
        process_from_scheduler_config(42)
    assert [target_from_prediction_type(t) for t in ("epsilon", "v_prediction", "sample")] == ["eps", "v", "x0"]


# ---- unifusion's samplers on a wrapped UNet equal diffusers' loops ----------------------------------------------
@pytest.mark.parametrize("cls", [diffusers.DDIMScheduler, diffusers.EulerDiscreteScheduler,
                                 diffusers.DPMSolverMultistepScheduler], ids=lambda c: c.__name__)
@pytest.mark.parametrize("schedule", BETAS)
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_samplers_equal_diffusers_loops(unet, cls, schedule, prediction):
    """DDIM / Euler / DPM-Solver++(2M) on the wrapped UNet and the scheduler's grid (DDIM: "leading" with
    `set_alpha_to_one`; Euler: "linspace" at 7 steps, fractional timesteps; DPM-Solver: "linspace", n + 1 points)."""
    z = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    kw = {"clip_sample": False} if cls is diffusers.DDIMScheduler else {}
    s = cls(beta_schedule=schedule, prediction_type=prediction, **BETAS[schedule], **kw)
    steps = 7 if cls is diffusers.EulerDiscreteScheduler else 10
    assert rel(unifusion_loop(unet, s, z, steps), diffusers_loop(unet, s, z, steps)) <= 1e-5


@pytest.mark.parametrize("cls, tol", [(diffusers.EulerDiscreteScheduler, 1e-5),
                                      (diffusers.DPMSolverMultistepScheduler, 1e-6),
                                      (diffusers.DDIMScheduler, 3e-4)], ids=lambda c: getattr(c, "__name__", ""))
def test_zero_terminal_snr_starts_at_the_largest_finite_level(unet, cls, tol):
    """Lin et al. 2024: rescaled betas, "trailing" steps, v-prediction, in float64. Euler and DPM-Solver floor the
    terminal alpha-bar at 2^-24 as `DDPM` does (equal up to diffusers' float32 sigmas, which Euler's first step from
    sigma~ = 4096 magnifies); diffusers' DDIM uses the exact SNR-0 endpoint D = -v, 2^-12 |x| away from D at the floor
    (so equal to about 1e-4)."""
    net = copy_double(unet)
    z = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    kw = {"clip_sample": False} if cls is diffusers.DDIMScheduler else {}
    s = cls(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
            rescale_betas_zero_snr=True, timestep_spacing="trailing", **kw)
    p = process_from_scheduler_config(s)
    assert p.alphas_cumprod[-1] == 0 and abs(p.sigma_ve_max - 4096) < 1e-3
    assert torch.isfinite(scheduler_sigmas(p, s, 10)).all()
    assert rel(unifusion_loop(net, s, z, 10), diffusers_loop(net, s, z, 10)) <= tol


def copy_double(module):
    import copy
    return copy.deepcopy(module).double()


def test_denoiser_passes_conditioning_and_keeps_the_mean_of_learned_variance(bench):
    torch.manual_seed(0)
    net = bench.perturb(diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=2, block_out_channels=(8, 16),
                                        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                        num_class_embeds=3))
    s = diffusers.DDPMScheduler(variance_type="learned_range")
    d = denoiser_from_diffusers(net, s)
    x, labels = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    sigma = torch.full((2,), float(d.process.sigma_ve(500.0)))
    out = d(x, sigma, class_labels=labels)
    alpha = 1 / math.sqrt(1 + float(sigma[0]) ** 2)
    eps = net(x * alpha, torch.full((2,), 500.0), class_labels=labels).sample[:, :1]
    torch.testing.assert_close(out, (x * alpha - math.sqrt(1 - alpha ** 2) * eps) / alpha, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, d(x, sigma, class_labels=torch.tensor([1, 1])))


def test_classifier_free_is_one_batched_call_and_linear():
    calls = []

    def den(x, sigma, y):
        calls.append(x.shape[0])
        return x * y[:, None]
    g = classifier_free_kwargs(den, 3.0, {"y": torch.tensor([2.0, 2.0])}, {"y": torch.tensor([1.0, 1.0])})
    x = torch.randn(2, 4)
    torch.testing.assert_close(g(x, torch.ones(2)), x * (1 + 3.0 * (2 - 1)))
    assert calls == [4]


# ---- a tiny Stable Diffusion pipeline --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench():
    return load_bench("interop")


@pytest.fixture(scope="module")
def sd_pipe(bench):
    return bench.tiny_sd_pipeline()


def embeds(seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 7, 16, generator=g), torch.randn(2, 7, 16, generator=g)


def test_sample_pipeline_ddim_equals_the_stable_diffusion_pipeline(sd_pipe):
    pe, npe = embeds()
    ref = sd_pipe(prompt_embeds=pe, negative_prompt_embeds=npe, num_inference_steps=5, guidance_scale=7.5,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    out = sample_pipeline(sd_pipe, prompt_embeds=pe, negative_prompt_embeds=npe, sampler="ddim", grid="scheduler",
                          steps=5, guidance=7.5, generator=torch.Generator().manual_seed(0), output_type="np",
                          progress=False)
    assert out.shape == ref.shape == (2, 16, 16, 3)
    assert rel(out, ref) <= 1e-4


@pytest.mark.parametrize("sampler", ["hybrid", "heun", "dpmpp_3m", "ancestral", "euler_maruyama"])
def test_every_sampler_drives_the_pipeline(sd_pipe, sampler):
    pe, npe = embeds()
    seen = []
    out = sample_pipeline(sd_pipe, prompt_embeds=pe, negative_prompt_embeds=npe, sampler=sampler, steps=3,
                          generator=torch.Generator().manual_seed(0), output_type="pt", num_images_per_prompt=2,
                          callback=seen.append, progress=False)
    assert out.shape == (4, 3, 16, 16) and torch.isfinite(out).all() and len(seen) == 3
    assert sampler in SAMPLERS
    pil = sample_pipeline(sd_pipe, prompt_embeds=pe[:1], negative_prompt_embeds=npe[:1], sampler=sampler, steps=2,
                          guidance=1.0, generator=torch.Generator().manual_seed(0), progress=False)
    assert len(pil) == 1 and pil[0].size == (16, 16)


def test_guidance_weight_zero_is_the_unconditional_model(sd_pipe):
    pe, npe = embeds()
    kw = dict(sampler="ddim", grid="scheduler", steps=3, output_type="latent", progress=False)
    w0 = sample_pipeline(sd_pipe, prompt_embeds=pe, negative_prompt_embeds=npe, guidance=0.0,
                         generator=torch.Generator().manual_seed(0), **kw)
    uncond = sample_pipeline(sd_pipe, prompt_embeds=npe, guidance=1.0, generator=torch.Generator().manual_seed(0), **kw)
    cond = sample_pipeline(sd_pipe, prompt_embeds=pe, guidance=1.0, generator=torch.Generator().manual_seed(0), **kw)
    assert rel(w0, uncond) < 1e-5 and rel(cond, uncond) > 1e-3
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0"):
        sample_pipeline(sd_pipe, prompt_embeds=pe, negative_prompt_embeds=npe, guidance=-1.0, **kw)


def test_sample_pipeline_bad_input(sd_pipe, unet):
    pe, npe = embeds()
    with pytest.raises(ValueError, match="tokenizer"):
        sample_pipeline(sd_pipe, prompt="a cat", steps=2, progress=False)
    with pytest.raises(ValueError, match="tokenizer"):  # guidance needs the empty negative prompt's embedding
        sample_pipeline(sd_pipe, prompt_embeds=pe, steps=2, progress=False)
    with pytest.raises(ValueError, match="prompt= or prompt_embeds="):
        sample_pipeline(sd_pipe, steps=2, progress=False)
    with pytest.raises(ValueError, match="sampler='nope'"):
        sample_pipeline(sd_pipe, prompt_embeds=pe, negative_prompt_embeds=npe, sampler="nope", progress=False)
    uncond = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    with pytest.raises(ValueError, match="nothing to guide"):
        sample_pipeline(uncond, guidance=3.0, progress=False)
    with pytest.raises(ValueError, match="takes no text"):
        sample_pipeline(uncond, prompt_embeds=pe, progress=False)
    out = sample_pipeline(uncond, steps=3, generator=torch.Generator().manual_seed(0), output_type="np", progress=False)
    assert out.shape == (1, 8, 8, 2) and np.isfinite(out).all()


# ---- export, pretrained folders and the CLI --------------------------------------------------------------------
TINY = [a for kv in ["net.block_out_channels=[8, 16]", "net.norm_num_groups=4", "net.attention_head_dim=4",
                     "train.steps=20", "train.batch_size=16", "train.progress=false", "train.log_every=0",
                     "train.ckpt_every=0", "train.threads=1"] for a in ("--set", kv)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "dd"
    assert main(["train", "digits_diffusers", "--out", str(run), *TINY]) == 0
    return run


def test_export_round_trip_equals_unifusion_ddim(trained, tmp_path, capsys):
    """A 20-step-trained diffusers_unet2d model, exported, loaded offline by DDPMPipeline.from_pretrained and sampled
    with diffusers' DDIM, equals unifusion's DDIM on the original; its pretrained folder gives the same model."""
    from unifusion.train import from_pretrained, load_model

    out, pre = tmp_path / "pipe", tmp_path / "pre"
    assert main(["export", str(trained), "--diffusers", str(out), "--pretrained", str(pre)]) == 0
    assert "DDPMPipeline" in capsys.readouterr().out
    model = load_model(trained)
    code = ("import sys, diffusers; p = diffusers.DDPMPipeline.from_pretrained(sys.argv[1]); "
            "print(type(p.unet).__name__, p.scheduler.config.prediction_type)")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "UNet2DModel epsilon" in proc.stdout, proc.stderr[-2000:]
    pipe = diffusers.DDPMPipeline.from_pretrained(str(out), local_files_only=True)
    ddim = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    theirs = diffusers_loop(pipe.unet.eval(), ddim, z, 10)
    sig = grids.sigmas_from_timesteps(model.process, grids.ddim_timesteps(1000, 10, "leading"))
    with torch.no_grad():
        ours = get_sampler("ddim")(model, z * math.sqrt(1 + float(sig[0]) ** 2), sig)
    assert rel(ours, theirs) <= 1e-5
    again = from_pretrained(pre)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(again(x, torch.full((3,), 2.0)), model(x, torch.full((3,), 2.0)), rtol=0, atol=0)
    assert load_model(pre).data_shape == (1, 8, 8) and json.loads((pre / "config.json").read_text())["weights"] == "ema"
    # a diffusers pipeline folder sampled from the command line (unconditional: no prompt)
    png = tmp_path / "s.png"
    assert main(["sample", "--diffusers", str(out), "--sampler", "hybrid", "--steps", "4", "--n", "3",
                 "--out", str(png)]) == 0
    from PIL import Image
    assert Image.open(png).size == (16, 16) and "3 images" in capsys.readouterr().out


def test_scheduler_config_of_processes_and_what_cannot_be_exported(trained, tmp_path, capsys):
    cfg = scheduler_config_from_process(DDPM(betas=[0.1, 0.2, 0.3]), "v")
    assert cfg["trained_betas"] == pytest.approx([0.1, 0.2, 0.3]) and cfg["prediction_type"] == "v_prediction"
    p = process_from_scheduler_config(cfg)
    torch.testing.assert_close(p.alphas_cumprod, torch.tensor([0.9, 0.72, 0.504], dtype=torch.float64), rtol=1e-7,
                               atol=0)
    with pytest.raises(ValueError, match="no diffusers scheduler equivalent"):
        scheduler_config_from_process(VP(), "eps")
    with pytest.raises(ValueError, match="no diffusers prediction_type"):
        scheduler_config_from_process(DDPM(), "score")
    from unifusion.train import load_model
    with pytest.raises(ValueError, match="diffusers_unet2d"):
        export_pipeline(type("M", (), {"net": torch.nn.Linear(1, 1)})(), tmp_path / "x")
    with pytest.raises(ValueError, match="not an empty folder"):
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "keep.txt").write_text("mine")
        export_pipeline(load_model(trained), tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("unifusion"), err
    return err


def test_cli_bad_input_is_one_line_and_exit_2(trained, tmp_path, capsys):
    assert "does not exist" in _error(capsys, ["sample", "--diffusers", str(tmp_path / "missing")])
    half = tmp_path / "half"
    (half / "scheduler").mkdir(parents=True)
    (half / "model_index.json").write_text("{}")
    assert "no unet/config.json" in _error(capsys, ["sample", "--diffusers", str(half)])
    pipe_dir = tmp_path / "pipe"
    assert main(["export", str(trained), "--diffusers", str(pipe_dir)]) == 0
    assert "cannot be combined" in _error(capsys, ["sample", str(trained), "--diffusers", str(pipe_dir)])
    assert "nothing to guide" in _error(capsys, ["sample", "--diffusers", str(pipe_dir), "--guidance", "5"])
    assert "--prompt: does not apply without --diffusers" in _error(capsys, ["sample", str(trained), "--prompt", "a"])
    assert "--class: does not apply to --diffusers" in _error(capsys, ["sample", "--diffusers", str(pipe_dir),
                                                                       "--class", "3"])
    assert "required: checkpoint" in _error(capsys, ["sample"])
    cfg_path = pipe_dir / "scheduler" / "scheduler_config.json"
    good = cfg_path.read_text()
    for key, value, what in [("prediction_type", "flow", "prediction_type"), ("beta_schedule", "sigmoid",
                                                                              "beta_schedule")]:
        cfg_path.write_text(json.dumps(dict(json.loads(good), **{key: value})))
        assert what in _error(capsys, ["sample", "--diffusers", str(pipe_dir), "--steps", "2"])
    cfg_path.write_text(good)
    assert "exists" in _error(capsys, ["export", str(trained), "--diffusers", str(pipe_dir)])
    assert "--diffusers DIR and / or --pretrained DIR" in _error(capsys, ["export", str(trained)])
    mlp = tmp_path / "mlp"
    assert main(["train", "toy_vp", "--out", str(mlp), "--set", "train.steps=2", "--set", "train.progress=false",
                 "--set", "net.hidden=8", "--set", "net.depth=1"]) == 0
    assert "diffusers_unet2d" in _error(capsys, ["export", str(mlp), "--diffusers", str(tmp_path / "e")])
    assert not (tmp_path / "e").exists()


def test_text_pipeline_from_the_command_line(sd_pipe, tmp_path, capsys):
    """A pipeline folder with a (tiny, hand-made) CLIP tokenizer: `--prompt` works; without one, a one-line error."""
    folder = tmp_path / "sd"
    sd_pipe.save_pretrained(str(folder))
    assert "tokenizer" in _error(capsys, ["sample", "--diffusers", str(folder), "--prompt", "a b", "--steps", "2"])
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(vocab_file=str(tmp_path / "vocab.json"), merges_file=str(tmp_path / "merges.txt"),
                                     model_max_length=8)
    sd_pipe.register_modules(tokenizer=tok)
    try:
        folder2 = tmp_path / "sd_tok"
        sd_pipe.save_pretrained(str(folder2))
    finally:
        sd_pipe.register_modules(tokenizer=None)
    png = tmp_path / "cat.png"
    assert main(["sample", "--diffusers", str(folder2), "--prompt", "a b", "--sampler", "dpmpp_2m", "--steps", "3",
                 "--n", "2", "--out", str(png)]) == 0
    from PIL import Image
    assert Image.open(png).size == (32, 16)


def test_import_unifusion_stays_light():
    code = ("import sys, unifusion; from unifusion.nets import NETS, build_net; import unifusion.interop.diffusers; "
            "build_net('mlp', dim=2); assert 'diffusers_unet2d' in NETS; "
            "assert 'diffusers' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_bench_quick_writes_its_tables(bench, tmp_path):
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "interop.json").read_text())
    assert {r["diffusers_scheduler"] for r in res["overhead"]} >= {"DDIMScheduler", "DPMSolverMultistepScheduler"}
    assert all(r["ratio"] > 0 for r in res["overhead"]) and "5" in res["endpoint"]["best"]
    assert "| NFE |" in (tmp_path / "interop.md").read_text()
