"""Noise processes: closed forms against numeric integration, autodiff and high-precision arithmetic."""
import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unifusion.processes import DDPM, EDM, PROCESSES, VDM, VE, VP, RectifiedFlow, SubVP, VPCosine, get_process


def vdm_learned(hidden: int = 32, seed: int = 3) -> VDM:
    """A learned VDM schedule with random (far from linear) monotone-network weights and end points."""
    p = VDM(gamma_min=-9.0, gamma_max=6.0, hidden=hidden)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        p.v.copy_(torch.randn(hidden, generator=g, dtype=torch.float64) + 2.0)
        p.u.mul_(4.0)
        p.b.copy_(3 * torch.randn(hidden, generator=g, dtype=torch.float64))
    return p.requires_grad_(False)


ALL = [DDPM(), VP(), VPCosine(), SubVP(), VE(), EDM(), RectifiedFlow(),
       DDPM(interpolation="linear"), DDPM(schedule="squaredcos_cap_v2"),
       DDPM(0.00085, 0.012, schedule="scaled_linear", rescale_zero_terminal_snr=True),
       vdm_learned(), VDM(shape="vp").requires_grad_(False)]
IDS = [p.name for p in ALL[:7]] + ["ddpm-linear-interp", "ddpm-cosine", "ddpm-zero-snr", "vdm-learned", "vdm-vp-shape"]


def interior(p, n=64):
    """A float64 grid strictly inside (t_min, t_max)."""
    return torch.linspace(p.t_min, p.t_max, n + 2, dtype=torch.float64)[1:-1]


# ---- forward SDE simulated by Euler-Maruyama matches the closed-form marginal ------------------------
# (t_a, t_b): a stretch of each process that is not stiff, so 1000 EM steps have small bias.
SDE_SPANS = {"ddpm": (0.0, 600.0), "vp": (1e-5, 0.6), "vp-cosine": (0.0, 0.8), "subvp": (1e-5, 0.6),
             "ve": (0.0, 0.6), "edm": (0.002, 3.0), "rf": (0.0, 0.8), "vdm": (1e-5, 0.6)}


@pytest.mark.parametrize("p", ALL, ids=IDS)
def test_forward_sde_matches_marginal(p):
    """Start from the exact marginal at t_a, integrate dx = f x dt + g dw; mean/var must match alpha x0, sigma^2."""
    ta, tb = SDE_SPANS[p.name]
    m, n_steps, x0 = 20000, 1000, 1.5
    g = torch.Generator().manual_seed(0)
    ts = torch.linspace(ta, tb, n_steps + 1, dtype=torch.float64)
    x = p.marginal_sample(torch.full((m,), x0, dtype=torch.float64), torch.tensor(ta, dtype=torch.float64),
                          torch.randn(m, generator=g, dtype=torch.float64))
    f, g2 = p.sde_coeffs(ts)
    for i in range(n_steps):
        dt = ts[i + 1] - ts[i]
        x = x + f[i] * x * dt + torch.sqrt(g2[i] * dt) * torch.randn(m, generator=g, dtype=torch.float64)
    mean, var = float(x.mean()), float(x.var())
    a, s = float(p.alpha(tb)), float(p.sigma(tb))
    # statistical bound: 5 standard errors; EM bias in mean/variance is O(dt) (< 0.4% here), allow 1%.
    se_mean, se_var = s / math.sqrt(m), s ** 2 * math.sqrt(2.0 / (m - 1))
    assert abs(mean - a * x0) < 5 * se_mean + 1e-2 * abs(a * x0), (mean, a * x0)
    assert abs(var - s ** 2) < 5 * se_var + 1e-2 * s ** 2, (var, s ** 2)


# ---- SDE coefficients: closed form == autodiff, derivatives == finite differences --------------------
@pytest.mark.parametrize("p", ALL, ids=IDS)
def test_sde_coeffs_closed_form_matches_autodiff(p):
    t = interior(p)
    if isinstance(p, DDPM):  # stay off the kinks at integer timesteps
        t = torch.floor(t) + 0.37
    f, g2 = p.sde_coeffs(t)
    fa, g2a = p.sde_coeffs_autodiff(t)
    torch.testing.assert_close(f, fa, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g2, g2a, rtol=1e-10, atol=1e-12)
    assert (g2 > 0).all()


@pytest.mark.parametrize("p", ALL, ids=IDS)
def test_coefficient_derivatives_match_finite_differences(p):
    t = interior(p, 16)
    if isinstance(p, DDPM):
        t = torch.floor(t) + 0.5
    h = 1e-6 * (p.t_max - p.t_min)
    c = p.coefficients(t)
    torch.testing.assert_close(c.d_alpha, (p.alpha(t + h) - p.alpha(t - h)) / (2 * h), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(c.d_sigma, (p.sigma(t + h) - p.sigma(t - h)) / (2 * h), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("p", [VP(), VPCosine(), DDPM(), vdm_learned()], ids=["vp", "vp-cosine", "ddpm", "vdm"])
def test_variance_preserving(p):
    t = torch.linspace(p.t_min, p.t_max, 101, dtype=torch.float64)
    torch.testing.assert_close(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-14)
    f, g2 = p.sde_coeffs(t)
    torch.testing.assert_close(g2, -2 * f, rtol=1e-12, atol=0)  # VP: g^2 = beta = -2 f


# ---- inverses ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", ALL, ids=IDS)
@settings(max_examples=60, deadline=None)
@given(u=st.floats(1e-6, 1 - 1e-6))
def test_t_from_log_snr_inverts_log_snr(p, u):
    t = torch.tensor(p.t_min + u * (p.t_max - p.t_min), dtype=torch.float64)
    assert abs(float(p.t_from_log_snr(p.log_snr(t)) - t)) <= 1e-9 * max(1.0, p.t_max)
    assert abs(float(p.t_from_sigma_ve(p.sigma_ve(t)) - t)) <= 1e-9 * max(1.0, p.t_max)


@pytest.mark.parametrize("p", ALL, ids=IDS)
def test_log_snr_strictly_decreasing(p):
    lam = p.log_snr(interior(p, 500))
    assert (lam[1:] < lam[:-1]).all()


def test_ddpm_integer_timesteps_are_the_discrete_schedule():
    p = DDPM()
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    t = torch.arange(1000, dtype=torch.float64)
    np.testing.assert_allclose(p.alpha(t).numpy() ** 2, abar, rtol=1e-12)
    np.testing.assert_allclose(p.sigma(t).numpy() ** 2, 1 - abar, rtol=1e-12)
    # halfway between two timesteps, log sigma~ is the average (the documented interpolation)
    mid = torch.tensor([10.5, 500.5], dtype=torch.float64)
    expected = 0.5 * (p.sigma_ve(torch.floor(mid)).log() + p.sigma_ve(torch.ceil(mid)).log())
    torch.testing.assert_close(p.sigma_ve(mid).log(), expected, rtol=1e-13, atol=0)


def test_ddpm_scaled_linear_schedule():
    p = DDPM(0.00085, 0.012, schedule="scaled_linear")
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    np.testing.assert_allclose(p.alpha(999.0).item() ** 2, np.prod(1 - betas), rtol=1e-12)


def test_ddpm_cosine_betas_are_nichol_and_dhariwal_discretised():
    p = DDPM(schedule="squaredcos_cap_v2")
    i = np.arange(1000)
    f = np.cos(((i + 1) / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
    abar = f / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    clipped = int(np.argmax(1 - abar[1:] / abar[:-1] > 0.999)) + 1  # improved DDPM caps beta at 0.999
    np.testing.assert_allclose(p.alphas_cumprod.numpy()[:clipped], abar[:clipped], rtol=1e-11)
    assert float(p.betas.max()) == pytest.approx(0.999) and clipped > 990


def test_ddpm_linear_interpolation_is_linear_in_sigma():
    p = DDPM(interpolation="linear")
    mid = torch.tensor([10.5, 500.25], dtype=torch.float64)
    lo, hi = p.sigma_ve(torch.floor(mid)), p.sigma_ve(torch.ceil(mid))
    torch.testing.assert_close(p.sigma_ve(mid), lo + (mid - torch.floor(mid)) * (hi - lo), rtol=1e-13, atol=0)
    t = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(p.sigma_ve(t), DDPM().sigma_ve(t), rtol=1e-13, atol=0)  # the same at integers


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_ddpm_zero_terminal_snr_is_lin_et_al_algorithm_1(schedule):
    kw = {"beta_start": 0.00085, "beta_end": 0.012} if schedule == "scaled_linear" else {}
    old, new = DDPM(schedule=schedule, **kw), DDPM(schedule=schedule, rescale_zero_terminal_snr=True, **kw)
    a, a0, aT = old.alphas_cumprod.sqrt(), old.alphas_cumprod[0].sqrt(), old.alphas_cumprod[-1].sqrt()
    torch.testing.assert_close(new.alphas_cumprod.sqrt(), (a - aT) * a0 / (a0 - aT), rtol=1e-9, atol=1e-15)
    assert new.alphas_cumprod[-1] == 0 and new.alphas_cumprod[0] == pytest.approx(float(old.alphas_cumprod[0]))
    # sigma~ is infinite at t = N-1: the process stops at the largest finite level, 4096 (or the last step repeated)
    s = new.sigma_ve(new.timesteps_tensor())
    assert torch.isfinite(s).all() and (s[1:] > s[:-1]).all() and new.sigma_ve_max == float(s[-1])
    if float(new.alphas_cumprod[-2]) > 2.0 ** -24:
        assert new.sigma_ve_max == pytest.approx(math.sqrt(2.0 ** 24 - 1), rel=1e-12)
    assert new.t_from_sigma_ve(new.sigma_ve_max) == pytest.approx(999.0, abs=1e-9)


def test_ddpm_from_betas_and_alphas_cumprod():
    p = DDPM(0.00085, 0.012, schedule="scaled_linear")
    q = DDPM.from_alphas_cumprod(p.alphas_cumprod)
    torch.testing.assert_close(q.log_sigmas, p.log_sigmas, rtol=0, atol=1e-13)
    r = DDPM(betas=p.betas.tolist(), interpolation="linear")
    assert r.schedule == "custom" and r.interpolation == "linear" and r.num_timesteps == 1000
    torch.testing.assert_close(r.alphas_cumprod, p.alphas_cumprod, rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        DDPM.from_alphas_cumprod([0.9, 0.95, 0.5])
    with pytest.raises(ValueError, match="betas must lie in"):
        DDPM(betas=[0.1, 1.0, 0.2])
    with pytest.raises(ValueError, match="length >= 2"):
        DDPM(betas=[0.1])
    with pytest.raises(ValueError, match="interpolation='cubic'"):
        DDPM(interpolation="cubic")


# ---- stability at both ends: compare with 50-digit arithmetic ----------------------------------------
def _mp_reference(p, t):
    """alpha, sigma from the table's formulas (call inside `mpmath.workdps(50)`)."""
    t = mpmath.mpf(t)
    if isinstance(p, SubVP) or isinstance(p, VP):
        la = -t ** 2 * (p.beta_max - p.beta_min) / 4 - t * p.beta_min / 2
        a = mpmath.exp(la)
        s = (1 - a ** 2) if isinstance(p, SubVP) else mpmath.sqrt(1 - a ** 2)
        return a, s
    if isinstance(p, VPCosine):
        s = mpmath.mpf(p.s)
        f = lambda u: mpmath.cos((u + s) / (1 + s) * mpmath.pi / 2)
        a = f(t) / f(0)
        return a, mpmath.sqrt(1 - a ** 2)
    if isinstance(p, VE):
        return mpmath.mpf(1), p.s_min * (mpmath.mpf(p.s_max) / p.s_min) ** t
    if isinstance(p, EDM):
        return mpmath.mpf(1), t
    if isinstance(p, RectifiedFlow):
        return 1 - t, t
    raise AssertionError(p)


@pytest.mark.parametrize("p", [VP(), SubVP(), VPCosine(), VE(), EDM(), RectifiedFlow()],
                         ids=["vp", "subvp", "vp-cosine", "ve", "edm", "rf"])
def test_ends_are_accurate_to_full_precision(p):
    span = p.t_max - p.t_min
    for t in [p.t_min + 1e-9 * span, p.t_min + 1e-4 * span, 0.5 * (p.t_min + p.t_max), p.t_max - 1e-4 * span, p.t_max]:
        if t <= 0:
            continue
        with mpmath.workdps(50):
            a, s = _mp_reference(p, t)
            ref_log_snr = float(2 * mpmath.log(a / s))
        tt = torch.tensor(t, dtype=torch.float64)
        assert abs(float(p.alpha(tt)) / float(a) - 1) < 1e-13, ("alpha", t)
        assert abs(float(p.sigma(tt)) / float(s) - 1) < 1e-12, ("sigma", t)
        assert abs(float(p.log_snr(tt)) - ref_log_snr) < 1e-11 * max(1, abs(ref_log_snr)), ("log_snr", t)


# ---- sampling, prior --------------------------------------------------------------------------------
@pytest.mark.parametrize("p", ALL, ids=IDS)
def test_marginal_sample_broadcasts_per_example_t(p):
    x0 = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = interior(p, 5)
    xt = p.marginal_sample(x0, t, eps)
    for i in range(5):
        torch.testing.assert_close(xt[i], p.alpha(t[i]) * x0[i] + p.sigma(t[i]) * eps[i])


@pytest.mark.parametrize("p", ALL, ids=IDS)
def test_prior(p):
    g = torch.Generator().manual_seed(1)
    x = p.prior_sample((20000, 2), generator=g, dtype=torch.float64)
    assert abs(float(x.std()) / p.prior_std - 1) < 5 * math.sqrt(1 / 40000) + 1e-3
    ref = torch.distributions.Normal(0.0, p.prior_std).log_prob(x[:10]).sum(1)
    torch.testing.assert_close(p.prior_log_prob(x[:10]), ref)
    x2 = p.prior_sample((20000, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(x2, x)  # the generator decides


# ---- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", ALL, ids=IDS)
def test_bad_input_names_the_argument(p):
    with pytest.raises(ValueError, match="t must lie in"):
        p.alpha(p.t_max + 0.1 * (p.t_max - p.t_min) + 1)
    with pytest.raises(ValueError, match="t must lie in"):
        p.sigma(torch.tensor([p.t_min - 1.0]))
    with pytest.raises(ValueError, match="t contains NaN"):
        p.log_snr(torch.tensor([float("nan")], dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        p.t_from_sigma_ve(torch.tensor([-1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma must lie in"):
        p.t_from_sigma_ve(torch.tensor([1e9], dtype=torch.float64))
    with pytest.raises(ValueError, match="same shape"):
        p.marginal_sample(torch.zeros(2, 3), p.t_max, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="x0 contains NaN"):
        p.marginal_sample(torch.full((2, 3), float("nan")), p.t_max, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="shape"):
        p.prior_sample((2, -1))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="beta_min"):
        VP(beta_min=-1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        VE(sigma_min=10.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="num_timesteps"):
        DDPM(num_timesteps=1)
    with pytest.raises(ValueError, match="schedule"):
        DDPM(schedule="cosine")
    with pytest.raises(ValueError, match="process='nope' is not one of"):
        get_process("nope")
    assert set(PROCESSES) == {"ddpm", "vp", "vp-cosine", "subvp", "ve", "edm", "rf", "vdm"}


# ---- VDM's learned schedule -------------------------------------------------------------------------
def test_vdm_with_the_vp_shape_is_vp():
    """The VP-SDE written in the learned-schedule class's parametrization (its log-SNR shape, its end points)
    reproduces VP: alpha, sigma, log-SNR, SDE coefficients, and the numeric inverse against VP's closed form."""
    q, v = VDM(shape="vp", learn_ends=False), VP()
    t = torch.cat([torch.tensor([1e-5, 1e-5 + 1e-9, 1 - 1e-9, 1.0], dtype=torch.float64),
                   torch.rand(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)])
    for a, b in [(q.alpha(t), v.alpha(t)), (q.sigma(t), v.sigma(t)), (q.sigma_ve(t), v.sigma_ve(t)),
                 *zip(q.sde_coeffs(t), v.sde_coeffs(t), strict=True)]:
        torch.testing.assert_close(a, b, rtol=1e-13, atol=0)
    torch.testing.assert_close(q.log_snr(t), v.log_snr(t), rtol=0, atol=1e-12)
    torch.testing.assert_close(q.t_from_log_snr(v.log_snr(t)), v.t_from_log_snr(v.log_snr(t)), rtol=1e-12, atol=1e-15)
    assert list(q.parameters()) == []


def test_vdm_linear_shape_and_learned_ends():
    p = VDM(gamma_min=-10.0, gamma_max=4.0, shape="linear")
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(p.log_snr(t), -(-10.0 + 14.0 * t), rtol=0, atol=1e-13)
    assert p.gamma_ends == pytest.approx((-10.0, 4.0), abs=1e-13)
    assert {n for n, _ in p.named_parameters()} == {"gamma_0", "gamma_gap"}
    assert {n for n, _ in VDM(hidden=8).named_parameters()} == {"gamma_0", "gamma_gap", "w", "u", "b", "v"}
    assert VDM().log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist() == pytest.approx([13.3, -5.0])


def test_vdm_inverse_carries_the_implicit_gradient():
    """`t(lambda)` solves gamma(t) = -lambda numerically; its gradient in the end-point parameter (one Newton step on
    top of the solve: implicit differentiation) matches finite differences."""
    p = vdm_learned().requires_grad_(True)
    lam = torch.tensor([5.0, 0.0, -3.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(p.t_from_log_snr(lam).sum(), p.gamma_0)
    h = 1e-6
    with torch.no_grad():
        p.gamma_0 += h
        up = p.t_from_log_snr(lam).sum()
        p.gamma_0 -= 2 * h
        down = p.t_from_log_snr(lam).sum()
        p.gamma_0 += h
    assert float(grad) == pytest.approx(float((up - down) / (2 * h)), rel=1e-6)


def test_vdm_variance_gradient_scales_only_the_shape():
    p = vdm_learned().requires_grad_(True)
    t = torch.rand(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    scale = torch.arange(6, dtype=torch.float64)

    def grads(ctx):
        with ctx:
            out = p._log_alpha(t) + p._sde_coeffs(t)[1]
        return torch.autograd.grad(out.sum(), [p.v, p.gamma_0])

    plain = grads(torch.enable_grad())
    scaled = grads(p.variance_gradient(lambda: scale))
    weighted = torch.autograd.grad((scale * (p._log_alpha(t) + p._sde_coeffs(t)[1])).sum(), p.v)[0]
    torch.testing.assert_close(scaled[0], weighted)        # the shape sees sum_b scale_b dL_b
    torch.testing.assert_close(scaled[1], plain[1])        # the end points do not
    assert p._scale is None


def test_vdm_bad_arguments():
    with pytest.raises(ValueError, match="gamma_min < gamma_max"):
        VDM(gamma_min=2.0, gamma_max=1.0)
    with pytest.raises(ValueError, match="shape"):
        VDM(shape="cubic")
    with pytest.raises(ValueError, match="hidden"):
        VDM(hidden=0)
