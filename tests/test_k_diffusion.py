"""k-diffusion both ways: its model wrappers run under every unifusion sampler, its samplers run on a unifusion
`Denoiser` and take the same steps as ours, and our samplers take its keywords and give its callback keys.

k-diffusion is installed with `pip install --no-deps k-diffusion` (`make test` does); its package `__init__`
imports torchvision, so `sampling.py` and `external.py` are loaded on their own (`load_k_diffusion` of
`bench/samplers.py`)."""
import pytest
import torch
from bench_scripts import load_bench

from unifusion import DDPM, VP, Denoiser, grids
from unifusion import samplers as S
from unifusion.nets import build_net
from unifusion.oracles import eight_gaussians

MIX = eight_gaussians()
FAST = {"langevin": {"n_steps_each": 2}, "dopri5": {"rtol": 1e-2}}


@pytest.fixture(scope="module")
def kd():
    """`(sampling, external)` of k-diffusion, loaded without its package `__init__`."""
    try:
        return load_bench("samplers").load_k_diffusion("sampling", "external")
    except ImportError as e:
        pytest.skip(f"{e} (make test installs it)")


def _float32_net():
    torch.manual_seed(0)
    return build_net("mlp", dim=2, hidden=32, depth=2, emb_dim=16).float().eval()


@pytest.mark.parametrize("wrapper", ["DiscreteEpsDDPMDenoiser", "DiscreteVDDPMDenoiser"])
def test_k_diffusion_wrapper_of_a_float32_net_runs_under_every_sampler(kd, wrapper):
    """The model receives sigma in x's dtype, so a k-diffusion wrapper over a float32 network works."""
    _, external = kd
    model = getattr(external, wrapper)(_float32_net(), DDPM().alphas_cumprod.float(), quantize=False)
    sigmas = grids.edm_grid(6, 0.02, 80.0)
    for name, fn in S.SAMPLERS.items():
        x = 80 * torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
        out = fn(model, x, sigmas, generator=torch.Generator().manual_seed(1), **FAST.get(name, {}))
        assert out.dtype == torch.float32 and torch.isfinite(out).all(), name


def test_k_diffusion_wrapper_is_our_denoiser(kd):
    """k-diffusion's eps wrapper of the exact DDPM eps model and our `Denoiser` of it sample alike (float32)."""
    _, external = kd
    p = DDPM()
    eps = MIX.process_model(p, "eps")
    theirs = external.DiscreteEpsDDPMDenoiser(eps, p.alphas_cumprod.float(), quantize=False)
    ours = Denoiser(eps, p, target="eps")
    x = 80 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    sigmas = grids.edm_grid(10, 0.02, 80.0)
    for name in ("heun", "dpmpp_2m", "hybrid"):
        torch.testing.assert_close(S.get_sampler(name)(theirs, x, sigmas), S.get_sampler(name)(ours, x, sigmas),
                                   rtol=1e-4, atol=1e-4)


SAME = [("sample_euler", "euler", {}), ("sample_heun", "heun", {}), ("sample_dpmpp_2m", "dpmpp_2m", {}),
        ("sample_lms", "lms", {"order": 4, "corrector": False, "self_start": False})]


@pytest.mark.parametrize("theirs, ours, opts", SAME, ids=[s[0] for s in SAME])
def test_k_diffusion_samplers_on_our_denoiser_equal_ours(kd, theirs, ours, opts):
    """k-diffusion's samplers on a unifusion `Denoiser` (float32 state, float32 grid as `get_sigmas_karras` gives)
    end where ours do (float64 coefficients) to float32 precision: at most 1e-5 at |x| ~ 2.5 (measured)."""
    sampling, _ = kd
    vp = VP()
    d = Denoiser(MIX.process_model(vp, "eps"), vp, target="eps")
    sigmas = grids.edm_grid(12, 0.002, 80.0)
    x = 80 * torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    a = getattr(sampling, theirs)(d, x, sigmas.float(), disable=True)
    b = S.get_sampler(ours)(d, x, sigmas, **opts)
    assert a.dtype == b.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("heun", [False, True])
def test_k_diffusion_churn_is_edm_stochastic(kd, heun):
    """k-diffusion's Euler / Heun with churn are `edm_stochastic(heun=...)`: with `s_noise=0` the churn raises sigma
    without drawing noise, so the two are comparable step by step (float64)."""
    sampling, _ = kd
    sigmas = grids.edm_grid(10, 0.01, 20.0)
    x = 20 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    churn = {"s_churn": 5.0, "s_tmin": 0.05, "s_tmax": 10.0, "s_noise": 0.0}
    theirs = getattr(sampling, "sample_heun" if heun else "sample_euler")(MIX, x, sigmas, disable=True, **churn)
    ours = S.sample_edm_stochastic(MIX, x, sigmas, heun=heun, **churn)
    torch.testing.assert_close(theirs, ours)
    assert (ours - S.get_sampler("heun" if heun else "euler")(MIX, x, sigmas)).abs().max() > 1e-3  # churn acts


def test_callback_carries_k_diffusion_keys(kd):
    """Step by step, our callback's `x, i, sigma, sigma_hat, denoised` are k-diffusion's (Euler, float64)."""
    sampling, _ = kd
    sigmas = grids.edm_grid(5, 0.01, 20.0)
    x = 20 * torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs, ours = [], []
    sampling.sample_euler(MIX, x, sigmas, callback=theirs.append, disable=True)
    S.sample_euler(MIX, x, sigmas, callback=ours.append)
    assert len(theirs) == len(ours) == 5
    for a, b in zip(theirs, ours, strict=True):
        assert a["i"] == b["i"] and float(a["sigma"]) == b["sigma"] and float(a["sigma_hat"]) == b["sigma_hat"]
        torch.testing.assert_close(a["x"], b["x"])
        torch.testing.assert_close(a["denoised"], b["denoised"])
    torch.testing.assert_close(ours[-1]["x_next"], S.sample_euler(MIX, x, sigmas))
