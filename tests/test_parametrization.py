"""Output conversions, EDM preconditioning and the Denoiser wrapper: round trips and exact oracles."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unifusion import parametrization as P
from unifusion.oracles import eight_gaussians, mixture_64d
from unifusion.processes import DDPM, EDM, VE, VP, RectifiedFlow, SubVP, VPCosine

PROCS = [DDPM(), VP(), VPCosine(), SubVP(), VE(), EDM(), RectifiedFlow()]
TARGETS = ["eps", "x0", "score", "v", "flow"]

coef = st.floats(1e-2, 1.0)
noise = st.floats(1e-2, 80.0)


def _batch(seed=0, b=6, d=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64)


@settings(max_examples=100, deadline=None)
@given(a=coef, s=noise, da=st.floats(-3, -0.01), ds=st.floats(0.01, 3), seed=st.integers(0, 10))
def test_every_conversion_round_trips(a, s, da, ds, seed):
    x0, eps = _batch(seed)
    x_t = a * x0 + s * eps
    a_, s_ = torch.tensor(a, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)
    tol = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(P.x0_from_eps(x_t, P.eps_from_x0(x_t, x0, a_, s_), a_, s_), x0, **tol)
    torch.testing.assert_close(P.eps_from_x0(x_t, x0, a_, s_), eps, **tol)
    torch.testing.assert_close(P.eps_from_score(P.score_from_eps(eps, s_), s_), eps, **tol)
    torch.testing.assert_close(P.x0_from_score(x_t, P.score_from_x0(x_t, x0, a_, s_), a_, s_), x0, **tol)
    torch.testing.assert_close(P.score_from_x0(x_t, x0, a_, s_), P.score_from_eps(eps, s_), **tol)
    v = P.v_from_x0(x_t, x0, a_, s_)
    torch.testing.assert_close(v, a * eps - s * x0, **tol)
    torch.testing.assert_close(P.v_from_eps(x_t, eps, a_, s_), v, **tol)
    torch.testing.assert_close(P.x0_from_v(x_t, v, a_, s_), x0, **tol)
    torch.testing.assert_close(P.eps_from_v(x_t, v, a_, s_), eps, **tol)
    u = P.flow_from_x0(x_t, x0, a_, s_, da, ds)
    torch.testing.assert_close(u, da * x0 + ds * eps, **tol)
    torch.testing.assert_close(P.x0_from_flow(x_t, u, a_, s_, da, ds), x0, **tol)
    for target in TARGETS:
        out = P.target_from_x0(target, x_t, x0, a_, s_, da, ds)
        torch.testing.assert_close(P.x0_from_target(target, x_t, out, a_, s_, da, ds), x0, **tol)


def test_vp_velocity_is_salimans_ho():
    """For alpha^2 + sigma^2 = 1: x0 = alpha x_t - sigma v and eps = sigma x_t + alpha v (Salimans & Ho 2022)."""
    x0, eps = _batch(1)
    a = torch.tensor([0.3, 0.5, 0.7, 0.9, 0.99, 0.1], dtype=torch.float64)
    s = (1 - a ** 2).sqrt()
    x_t = a[:, None] * x0 + s[:, None] * eps
    v = P.v_from_x0(x_t, x0, a, s)
    torch.testing.assert_close(a[:, None] * x_t - s[:, None] * v, x0)
    torch.testing.assert_close(s[:, None] * x_t + a[:, None] * v, eps)


def test_rectified_flow_velocity_is_eps_minus_x0():
    p = RectifiedFlow()
    x0, eps = _batch(2)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    c = p.coefficients(t)
    x_t = p.marginal_sample(x0, t, eps)
    torch.testing.assert_close(P.flow_from_x0(x_t, x0, c.alpha, c.sigma, c.d_alpha, c.d_sigma), eps - x0)


def test_edm_preconditioning_table():
    """Karras et al. 2022, Table 1 / App. B.6: unit-variance network input and training target for
    data of variance sd^2, and D(x) -> x as sigma -> 0."""
    sd = 0.5
    s = torch.logspace(-3, 2, 50, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = P.edm_precond(s, sd)
    torch.testing.assert_close(c_in ** 2 * (sd ** 2 + s ** 2), torch.ones_like(s))
    target_var = ((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * s ** 2) / c_out ** 2
    torch.testing.assert_close(target_var, torch.ones_like(s))
    torch.testing.assert_close(c_noise, s.log() / 4)
    assert abs(float(c_skip[0]) - 1) < 1e-4 and float(c_out[0]) < 1e-3


@pytest.mark.parametrize("p", PROCS, ids=[p.name for p in PROCS])
@pytest.mark.parametrize("target", TARGETS)
def test_ve_view_of_a_process_trained_oracle_is_the_ve_oracle(p, target):
    """The exact network of process p predicting `target`, wrapped as a Denoiser, is the VE oracle."""
    gm = eight_gaussians()
    x = gm.sample(64, torch.Generator().manual_seed(0)) + 0.3 * torch.randn(64, 2, dtype=torch.float64)
    lo, hi = max(p.sigma_ve_min, 1e-3), min(p.sigma_ve_max, 80.0)
    sigma = torch.logspace(math.log10(lo * 1.01), math.log10(hi * 0.99), 64, dtype=torch.float64)
    D = P.Denoiser(gm.process_model(p, target), p, target)
    x_t = x * sigma[:, None]
    torch.testing.assert_close(D(x_t, sigma), gm.denoiser(x_t, sigma), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("p", PROCS, ids=[p.name for p in PROCS])
@pytest.mark.parametrize("target", TARGETS)
def test_process_model_round_trip(p, target):
    """Denoiser(ProcessModel(D, p, target), p, target) == D, and ProcessModel of the VE oracle is p's exact network."""
    gm = mixture_64d()
    x = gm.sample(16, torch.Generator().manual_seed(3))
    t = torch.linspace(p.t_min, p.t_max, 18, dtype=torch.float64)[1:-1]
    x_t = p.marginal_sample(x, t, torch.randn_like(x))
    exact = gm.process_model(p, target)(x_t, t)
    torch.testing.assert_close(P.ProcessModel(gm, p, target)(x_t, t), exact, rtol=1e-8, atol=1e-8)
    back = P.Denoiser(P.ProcessModel(gm, p, target), p, target)
    s = p.sigma_ve(t)
    torch.testing.assert_close(back(x_t, s), gm.denoiser(x_t, s), rtol=1e-8, atol=1e-8)


def test_edm_target_wrapper_reproduces_oracle():
    gm = eight_gaussians()
    sd = 0.5

    def F(x_in, c_noise):  # the exact EDM network: F = (D* - c_skip x) / c_out at x = x_in / c_in
        s = torch.exp(4 * c_noise.to(torch.float64))
        c_skip, c_out, c_in, _ = P.edm_precond(s, sd)
        x = x_in / c_in[:, None]
        return (gm.denoiser(x, s) - c_skip[:, None] * x) / c_out[:, None]

    D = P.Denoiser(F, None, "edm", sigma_data=sd)
    x = 3 * torch.randn(32, 2, dtype=torch.float64)
    s = torch.logspace(-2, 1.5, 32, dtype=torch.float64)
    torch.testing.assert_close(D(x, s), gm.denoiser(x, s))
    torch.testing.assert_close(D.raw(x, s), F(x * P.edm_precond(s, sd)[2][:, None], s.log() / 4))


def test_denoiser_noise_conditioning_and_dtypes():
    seen = {}

    def net(x_t, c):
        seen["c"] = c
        return torch.zeros_like(x_t)

    p = VP()
    x = torch.randn(4, 2)
    s = torch.tensor([0.1, 1.0, 10.0, 50.0], dtype=torch.float64)
    out = P.Denoiser(net, p, "eps", time_scale=999.0)(x, s)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(seen["c"].double(), 999.0 * p.t_from_sigma_ve(s), rtol=1e-6, atol=0)
    P.Denoiser(net, p, "x0", noise_cond="log_sigma")(x, s)
    torch.testing.assert_close(seen["c"].double(), s.log() / 4, rtol=1e-6, atol=1e-7)
    P.Denoiser(net, p, "x0")(x, 2.0)  # a scalar sigma broadcasts over the batch
    assert seen["c"].shape == (4,)
    edm = P.Denoiser(lambda x_in, c: seen.update(c=c) or torch.zeros_like(x_in), None, "edm")
    edm(x.double(), 0.002)  # a python float sigma is not rounded through float32
    assert float(seen["c"][0]) == math.log(0.002) / 4


def test_denoiser_bad_arguments():
    with pytest.raises(ValueError, match="target='logits' is not one of"):
        P.Denoiser(lambda x, c: x, VP(), "logits")
    with pytest.raises(ValueError, match="process=None"):
        P.Denoiser(lambda x, c: x, None, "eps")
    with pytest.raises(ValueError, match="noise_cond"):
        P.Denoiser(lambda x, c: x, VP(), "eps", noise_cond="sigma")
    with pytest.raises(ValueError, match="sigma_data"):
        P.Denoiser(lambda x, c: x, None, "edm", sigma_data=0.0)
    with pytest.raises(ValueError, match="per-example scalars"):
        P.x0_from_eps(torch.zeros(4, 2), torch.zeros(4, 2), torch.ones(3), torch.ones(3))
