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
