"""The GPU paths (skipped without CUDA; run on a lent GPU): bf16 / fp16 autocast training still learns the exact
denoiser, resume on the GPU, GPU checkpoints load on the CPU, and every sampler gives the CPU's endpoints for a
model on the GPU (float64 grids, noise drawn from a CPU generator so both devices see the same draws)."""
import pytest
import torch

from unifusion import grids
from unifusion import samplers as S
from unifusion.train import load_config, load_model, read_checkpoint, train_from_config
from unifusion.train.task import build_denoiser

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from test_train import learn_gaussian_denoiser, toy_cfg  # noqa: E402  (the CPU tests' fixtures and error measure)
from test_samplers import FAST_OPTS  # noqa: E402


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_training_learns_an_exact_gaussian_denoiser(precision):
    """The CPU test's oracle check under GPU autocast (fp16 through the gradient scaler): a looser bound, since the
    network runs in 8 or 11 mantissa bits."""
    err0, err = learn_gaussian_denoiser(device="cuda", precision=precision)
    assert err < 0.03 * err0 and err < 0.01, (err0, err)


def test_resume_on_the_gpu_and_load_on_the_cpu(tmp_path):
    full = train_from_config(toy_cfg(tmp_path / "a", "train.device=cuda"))
    train_from_config(toy_cfg(tmp_path / "b", "train.device=cuda", "train.steps=10"))
    resumed = train_from_config(toy_cfg(tmp_path / "b", "train.device=cuda"), resume=True)
    ta, _ = read_checkpoint(full.checkpoint)
    tb, _ = read_checkpoint(resumed.checkpoint)
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-5, atol=1e-6, msg=k)
    cpu = load_model(tmp_path / "a")
    gpu = load_model(tmp_path / "a", device="cuda")
    x, s = torch.randn(64, 2), torch.full((64,), 0.7)
    torch.testing.assert_close(gpu(x.cuda(), s.cuda()).cpu(), cpu(x, s), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(S.SAMPLERS))
def test_samplers_give_the_cpu_endpoints_on_the_gpu(name):
    den = build_denoiser(load_config("toy_ve", ["net.hidden=32", "net.depth=2"]), (2,)).double()
    gpu = build_denoiser(load_config("toy_ve", ["net.hidden=32", "net.depth=2"]), (2,)).double()
    gpu.load_state_dict(den.state_dict())
    gpu.to("cuda")
    x = 20 * torch.randn(256, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sig = grids.edm_grid(8, 0.01, 20.0)
    fn, opts = S.get_sampler(name), FAST_OPTS.get(name, {})
    with torch.no_grad():
        ref = fn(den, x, sig, generator=torch.Generator().manual_seed(4), **opts)
        out = fn(gpu, x.cuda(), sig, generator=torch.Generator().manual_seed(4), **opts)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-7, atol=1e-7)


def test_compiled_training_matches_eager(tmp_path):
    """`train.compile=true` (torch.compile of the networks) trains the same weights up to float rounding, and the
    checkpoint keeps the plain module's keys."""
    a = train_from_config(toy_cfg(tmp_path / "a", "train.device=cuda", "train.precision=fp32"))
    b = train_from_config(toy_cfg(tmp_path / "b", "train.device=cuda", "train.precision=fp32", "train.compile=true"))
    ta, _ = read_checkpoint(a.checkpoint)
    tb, _ = read_checkpoint(b.checkpoint)
    assert sorted(ta) == sorted(tb)
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-4, atol=1e-5, msg=k)


def test_a_training_step_never_waits_for_the_host():
    """bf16, channels-last, fused AdamW, EMA: steps between log lines run under `set_sync_debug_mode("error")` (any
    host-device synchronisation raises), and a NaN is still caught at the next synchronisation point."""
    from unifusion.data.loader import to_device
    from unifusion.losses import build_loss
    from unifusion.train import TrainConfig
    from unifusion.train.distributed import DistInfo
    from unifusion.train.step import TrainStep
    from unifusion.train.task import DiffusionTask

    cfg = load_config(None, ["net.kind=unet", "net.model_channels=32", "net.channel_mult=[1,2]", "process.name=ddpm"])
    den = build_denoiser(cfg, (3, 16, 16))
    step = TrainStep(DiffusionTask(den, build_loss("ddpm", den.process)),
                     TrainConfig(batch_size=32, precision="bf16", channels_last=True, ema_decays=(0.999,)),
                     DistInfo(0, 1, 0, torch.device("cuda")), seed=0)
    step.train_mode()
    x, _ = to_device(torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8), None, "cuda",
                     memory_format=torch.channels_last)
    for s in range(3):                                   # warm-up: cuBLAS / cuDNN handles, allocator
        step(s, [(x, None)])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for s in range(3, 8):
            step(s, [(x, None)])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert step.first_nonfinite() is None
    before = {k: v.clone() for k, v in den.net.state_dict().items()}
    step(8, [(x * float("nan"), None)])                  # skipped on the device, reported at the next check
    assert step.first_nonfinite() == 9
    assert all(torch.equal(v, before[k]) for k, v in den.net.state_dict().items())


def test_an_image_folder_trains_on_the_gpu_as_the_tensor_path(tmp_path):
    """Pinned uint8 batches from 2 workers, scaled and flipped on the GPU, train what the float tensor trains
    (float rounding aside: cuDNN's backward is not deterministic)."""
    import numpy as np
    from PIL import Image

    from unifusion.data import ImageFolder, without_labels
    from unifusion.data.loader import LoaderOptions
    from unifusion.losses import build_loss
    from unifusion.train import TrainConfig, fit
    from unifusion.train.task import DiffusionTask

    rng = np.random.default_rng(0)
    for i in range(64):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i:03d}.png")
    folder = without_labels(ImageFolder(tmp_path))
    cfg = load_config(None, ["net.kind=unet", "net.model_channels=16", "net.channel_mult=[1]", "net.dropout=0"])
    weights = []
    for data, workers in ((ImageFolder(tmp_path).data, 0), (folder, 2)):
        torch.manual_seed(0)
        den = build_denoiser(cfg, (3, 16, 16))
        fit(DiffusionTask(den, build_loss("ddpm", den.process)), data, seed=1,
            train=TrainConfig(steps=6, batch_size=16, precision="fp32", device="cuda", progress=False, log_every=0),
            loader=LoaderOptions(num_workers=workers, x_flip=True))
        weights.append({k: v.cpu() for k, v in den.net.state_dict().items()})
    for k in weights[0]:
        torch.testing.assert_close(weights[1][k], weights[0][k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_sampling_on_a_fixed_grid_gives_the_eager_samples(mode):
    """`generate(compile=...)`: Heun on an 18-level grid with the network compiled (and, with "reduce-overhead",
    replayed as CUDA graphs) gives the eager samples up to float rounding."""
    from unifusion.train.generate import generate

    cfg = load_config(None, ["net.kind=unet", "net.model_channels=16", "net.channel_mult=[1,2]",
                             "process.name=edm", "model.target=edm"])
    den = build_denoiser(cfg, (3, 16, 16)).cuda().eval()
    ref, _ = generate(den, 64, (3, 16, 16), sampler="heun", steps=18, batch_size=32, device="cuda")
    out, info = generate(den, 64, (3, 16, 16), sampler="heun", steps=18, batch_size=32, device="cuda", compile=mode)
    assert info["nfe"] == 35
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
