"""Losses against exact oracles: the exact network is the minimiser, weights do what the papers say.

Every statistical check uses common random numbers (the same generator seed for the networks compared),
so differences are paired and their standard errors small; tolerances are 4-5 standard errors.
"""
import math

import pytest
import torch
from torch import nn

from unifusion.losses import (LOSSES, Constant, DenoisingLoss, EDMWeight, GeometricSigmas, LikelihoodWeight,
                              LogNormalSigma, SigmaSquared, UniformTime, UniformTimesteps, build_loss)
from unifusion.oracles import eight_gaussians
from unifusion.parametrization import Denoiser, edm_precond
from unifusion.utils import expand_like
from unifusion.processes import DDPM, VE, VP, RectifiedFlow, SubVP, VPCosine

ORACLE = eight_gaussians()
SD = 0.5


class ExactF(nn.Module):
    """The exact EDM network `F = (D_oracle(x, sigma) - c_skip x) / c_out` at input `(c_in x, ln(sigma)/4)`."""

    def __init__(self, oracle, sigma_data=SD):
        super().__init__()
        self.oracle, self.sd = oracle, sigma_data

    def forward(self, x_in, c_noise, **unused):
        sigma = torch.exp(4 * c_noise.to(torch.float64))
        c_skip, c_out, c_in = (c[:, None] for c in edm_precond(sigma, self.sd)[:3])
        x = x_in / c_in
        return (self.oracle(x, sigma) - c_skip * x) / c_out


class Perturbed(nn.Module):
    """`net + sign * delta(x_in)`, a smooth data-dependent perturbation of the network's own output."""

    def __init__(self, net, sign=1.0, scale=0.3):
        super().__init__()
        self.net, self.sign, self.scale = net, sign, scale

    def forward(self, x, c, **kw):
        return self.net(x, c, **kw) + self.sign * self.scale * torch.tanh(x + 0.5)


def exact_denoiser(process, target, net_wrap=lambda n: n):
    if target == "edm":
        return Denoiser(net_wrap(ExactF(ORACLE)), None, "edm", sigma_data=SD)
    return Denoiser(net_wrap(ORACLE.process_model(process, target)), process, target)


# (loss name, process, target, kwargs)
CASES = [
    ("ddpm", DDPM(), "eps", {}),
    ("ncsn", VE(sigma_min=0.01, sigma_max=10.0), "score", {}),
    ("score_sde", VP(), "score", {}),
    ("score_sde", SubVP(), "score", {}),
    ("score_sde", VE(), "score", {}),
    ("score_sde", VP(), "score", {"likelihood": True}),
    ("vdm", VP(), "eps", {"t_min": 0.05}),  # the ELBO weight grows like 1/sigma^2: keep the variance testable
    ("edm", None, "edm", {}),
    ("eps", VPCosine(), "eps", {}),
    ("x0", VP(), "x0", {}),
    ("v", VP(), "v", {}),
    ("mse", RectifiedFlow(), "flow", {}),
]
IDS = [f"{c[0]}-{c[1].name if c[1] else 'vecoords'}-{c[2]}" + "".join(f"-{k}" for k in c[3]) for c in CASES]


def _losses(loss, den, x0, seed):
    return loss(den, x0, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,process,target,kw", CASES, ids=IDS)
def test_exact_network_is_the_minimiser(name, process, target, kw):
    """E[loss(exact + delta)] - E[loss(exact)] = E[w delta^2] > 0 and the first-order term E[w delta e] vanishes:
    the exact network is a stationary point and any perturbation scores higher in expectation."""
    n = 8000
    x0 = ORACLE.sample(n, torch.Generator().manual_seed(1))
    loss = build_loss(name, process, **kw)
    l0 = _losses(loss, exact_denoiser(process, target), x0, 2)
    lp = _losses(loss, exact_denoiser(process, target, lambda m: Perturbed(m, +1.0)), x0, 2)
    lm = _losses(loss, exact_denoiser(process, target, lambda m: Perturbed(m, -1.0)), x0, 2)
    assert l0.shape == (n,) and torch.isfinite(l0).all()
    se = lambda d: d.std() / math.sqrt(n)
    excess = lp - l0
    assert excess.mean() > 5 * se(excess), f"perturbed network does not score higher: {excess.mean():.3g}"
    first_order = lp - lm  # 4 w delta.e / d: zero mean iff the exact network is stationary
    assert first_order.mean().abs() < 4.5 * se(first_order), \
        f"first-order term {first_order.mean():.3g} +- {se(first_order):.3g} is not zero"


def test_first_order_check_has_power():
    """Negative control: a biased network (exact + 0.3 tanh) fails the stationarity check of the test above."""
    n, process = 8000, VP()
    x0 = ORACLE.sample(n, torch.Generator().manual_seed(1))
    loss = build_loss("score_sde", process)
    biased = lambda s: (lambda m: Perturbed(Perturbed(m, +1.0), s))
    lp = _losses(loss, exact_denoiser(process, "score", biased(+1.0)), x0, 2)
    lm = _losses(loss, exact_denoiser(process, "score", biased(-1.0)), x0, 2)
    d = lp - lm
    assert d.mean().abs() > 10 * d.std() / math.sqrt(n)


class Fixed:
    """A noise-level sampler returning given times (the test's way to look at one noise level)."""

    def __init__(self, t):
        self.t = torch.as_tensor(t, dtype=torch.float64)

    def __call__(self, n, process, generator=None, device=None):
        return self.t.expand(n).clone() if self.t.ndim == 0 else self.t.clone()


class PlusUnitNoise(nn.Module):
    """`net + z`, z ~ N(0, I) from its own generator: a unit-variance error independent of everything else."""

    def __init__(self, net):
        super().__init__()
        self.net, self.g = net, torch.Generator().manual_seed(7)

    def forward(self, x, c, **kw):
        return self.net(x, c, **kw) + torch.randn(x.shape, generator=self.g, dtype=x.dtype)


@pytest.mark.parametrize("sigma", [0.002, 0.05, 0.5, 5.0, 80.0])
def test_edm_weight_equalises_unit_error_across_sigma(sigma):
    """lambda(sigma) c_out(sigma)^2 = 1, so a unit-variance error of F costs 1 at every sigma
    (Karras et al. 2022, Sec. 5)."""
    s = torch.tensor(sigma, dtype=torch.float64)
    assert torch.allclose(EDMWeight(SD)(s, None) * edm_precond(s, SD)[1] ** 2, torch.tensor(1.0, dtype=torch.float64),
                          rtol=1e-12)
    n = 6000
    x0 = ORACLE.sample(n, torch.Generator().manual_seed(3))
    loss = DenoisingLoss(Fixed(sigma), EDMWeight(SD), "edm", space="x0")
    l0 = _losses(loss, exact_denoiser(None, "edm"), x0, 4)
    l1 = _losses(loss, exact_denoiser(None, "edm", PlusUnitNoise), x0, 4)
    d = l1 - l0
    assert abs(d.mean() - 1.0) < 4.5 * d.std() / math.sqrt(n)


def test_edm_loss_equals_its_raw_form():
    """lambda |D - x0|^2 (paper's form) = |F - (x0 - c_skip x)/c_out|^2 (the preconditioned target), per example."""
    x0 = ORACLE.sample(512, torch.Generator().manual_seed(5))
    den = exact_denoiser(None, "edm", lambda m: Perturbed(m))
    paper = build_loss("edm")
    raw = DenoisingLoss(LogNormalSigma(), Constant(), "edm", space="raw")
    assert torch.allclose(_losses(paper, den, x0, 6), _losses(raw, den, x0, 6), rtol=1e-9)


def test_every_output_type_trains_on_edms_objective_in_x0_space():
    """`space="x0"`, `weight="edm"`, log-normal sigma: eps, x0 and v networks on VP see EDM's loss
    `lambda(sigma) |D - x0|^2`, example by example (the same draws; the exact denoiser is the same D in every
    parametrization)."""
    x0 = ORACLE.sample(256, torch.Generator().manual_seed(12))
    edm = _losses(build_loss("edm", p_mean=-0.6, sigma_data=SD), exact_denoiser(None, "edm"), x0, 13)
    for target in ("eps", "x0", "v"):
        loss = build_loss(target, VP(), noise="lognormal", p_mean=-0.6, weight="edm", sigma_data=SD, space="x0")
        assert torch.allclose(_losses(loss, exact_denoiser(VP(), target), x0, 13), edm, rtol=1e-6, atol=1e-9), target


@pytest.mark.parametrize("process", [VP(), VE(), DDPM()], ids=["vp", "ve", "ddpm"])
def test_x0_space_is_raw_eps_error_times_snr_inverse(process):
    """For an eps network, |x0_hat - x0|^2 = (sigma/alpha)^2 |eps_hat - eps|^2 exactly (Ho et al. 2020, eq. 15)."""
    t = torch.linspace(process.t_min + 0.01 * (process.t_max - process.t_min), process.t_max, 64, dtype=torch.float64)
    x0 = ORACLE.sample(64, torch.Generator().manual_seed(8))
    den = exact_denoiser(process, "eps", lambda m: Perturbed(m))
    raw = _losses(DenoisingLoss(Fixed(t), Constant(), "eps"), den, x0, 9)
    x0s = _losses(DenoisingLoss(Fixed(t), Constant(), "eps", space="x0"), den, x0, 9)
    assert torch.allclose(x0s, raw * process.sigma_ve(t) ** 2, rtol=1e-8)


def test_dsm_weighting_makes_score_loss_an_eps_loss():
    """NCSN: sigma^2 |s - (-eps/sigma)|^2 = |sigma s + eps|^2 (Song & Ermon 2019, eq. 6): with s = -eps_hat/sigma the
    DSM loss of a score network equals L_simple of the matching eps network, per example."""
    process = VE(sigma_min=0.01, sigma_max=10.0)
    x0 = ORACLE.sample(512, torch.Generator().manual_seed(10))
    t = torch.rand(512, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    dsm = _losses(DenoisingLoss(Fixed(t), SigmaSquared(), "score"),
                  exact_denoiser(process, "score", lambda m: Perturbed(m)), x0, 12)

    class EpsOfScore(nn.Module):
        """The eps network of the perturbed score network: -sigma (s + delta) = eps_exact - sigma delta."""

        def forward(self, x, c, **kw):
            s = process.sigma(c)[:, None]
            return ORACLE.process_model(process, "eps")(x, c) - s * 0.3 * torch.tanh(x + 0.5)
    simple = _losses(DenoisingLoss(Fixed(t), Constant(), "eps"), Denoiser(EpsOfScore(), process, "eps"), x0, 12)
    assert torch.allclose(dsm, simple, rtol=1e-8)


def test_vdm_elbo_is_half_the_likelihood_weighted_dsm():
    """-1/2 dlambda/dt |eps_hat - eps|^2 (VDM eq. 17) = 1/2 g^2 |s_hat - s|^2 (Song, Durkan et al. 2021) per example,
    for the eps and score views of the same model; on VP, -dlambda/dt = beta / sigma^2 (checked by autodiff)."""
    process = VP()
    x0 = ORACLE.sample(256, torch.Generator().manual_seed(13))
    t = torch.linspace(0.01, 1.0, 256, dtype=torch.float64)
    eps_net = exact_denoiser(process, "eps", lambda m: Perturbed(m))
    from unifusion.parametrization import ProcessModel
    score_net = Denoiser(ProcessModel(eps_net, process, "score"), process, "score")
    vdm = _losses(DenoisingLoss(Fixed(t), build_loss("vdm", process).weight, "eps", reduce="sum"), eps_net, x0, 14)
    dsm = _losses(DenoisingLoss(Fixed(t), LikelihoodWeight(), "score", reduce="sum"), score_net, x0, 14)
    assert torch.allclose(vdm, 0.5 * dsm, rtol=1e-7)
    tt = t.clone().requires_grad_(True)
    (dlam,) = torch.autograd.grad(process.log_snr(tt).sum(), tt)
    assert torch.allclose(build_loss("vdm", process).weight(t, process), -0.5 * dlam, rtol=1e-10)


def test_losses_on_images_equal_losses_on_flattened_vectors():
    """Shapes do not matter to a loss: a pointwise network on [B, 1, 8, 8] and on [B, 64] gives the same values."""
    class Pointwise(nn.Module):
        def forward(self, x, c, **kw):
            return torch.tanh(x) * (1 + 0.001 * expand_like(c, x))
    x0 = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(15), dtype=torch.float64) * 2 - 1
    for name, process, target in [("ddpm", DDPM(), "eps"), ("edm", None, "edm"), ("v", VP(), "v")]:
        den = Denoiser(Pointwise(), process, target)
        loss = build_loss(name, process)
        img, vec = _losses(loss, den, x0, 16), _losses(loss, den, x0.flatten(1), 16)
        assert img.shape == (16,) and torch.allclose(img, vec, rtol=1e-12)


def test_likelihood_weight_is_g_squared():
    """g(t)^2 of the process (Song, Durkan et al. 2021): VE gives 2 sigma^2 ln(s_max/s_min), VP gives beta(t)."""
    t = torch.linspace(0.05, 1.0, 20, dtype=torch.float64)
    ve, vp = VE(0.01, 50.0), VP()
    assert torch.allclose(LikelihoodWeight()(t, ve) / SigmaSquared()(t, ve),
                          torch.full_like(t, 2 * math.log(50.0 / 0.01)), rtol=1e-12)
    assert torch.allclose(LikelihoodWeight()(t, vp), vp.beta(t), rtol=1e-12)


# ---- noise-level samplers -----------------------------------------------------------------------------

def test_uniform_timesteps_are_the_discrete_steps():
    p, n = DDPM(), 40000
    t = UniformTimesteps()(n, p, torch.Generator().manual_seed(0))
    assert t.dtype == torch.float64 and (t == t.round()).all() and t.min() >= 0 and t.max() <= 999
    counts = torch.histc(t, bins=10, min=0, max=1000)
    assert ((counts - n / 10).abs() < 5 * math.sqrt(n / 10)).all()


def test_lognormal_sigma_moments_and_clamping():
    n = 40000
    s = LogNormalSigma(-1.2, 1.2)(n, None, torch.Generator().manual_seed(0))
    ls = s.log()
    assert abs(ls.mean() + 1.2) < 4 * 1.2 / math.sqrt(n) and abs(ls.std() - 1.2) < 0.02
    p = VE(sigma_min=0.01, sigma_max=1.0)
    t = LogNormalSigma(-1.2, 1.2)(n, p, torch.Generator().manual_seed(0))
    assert torch.allclose(p.sigma_ve(t), s.clamp(0.01, 1.0), rtol=1e-10)


def test_geometric_sigmas_lie_in_the_set():
    p = VE(sigma_min=0.01, sigma_max=50.0)
    gs = GeometricSigmas(num_scales=10)
    sigmas = gs.sigmas(p)
    assert torch.allclose(sigmas[[0, -1]], torch.tensor([50.0, 0.01], dtype=torch.float64))
    ratios = sigmas[1:] / sigmas[:-1]
    assert torch.allclose(ratios, ratios[0].expand(9))
    s = p.sigma_ve(gs(5000, p, torch.Generator().manual_seed(0)))
    assert ((s[:, None] - sigmas[None]).abs().min(1).values < 1e-9 * s).all()
    assert len(torch.unique(s.round(decimals=6))) == 10


def test_uniform_time_range():
    t = UniformTime()(10000, VP(), torch.Generator().manual_seed(0))
    assert t.min() >= 1e-5 and t.max() <= 1.0 and abs(t.mean() - 0.5) < 0.02
    with pytest.raises(ValueError, match="t_min"):
        UniformTime(0.0, 2.0)(10, VP())


def test_same_generator_same_loss_and_backprop():
    torch.manual_seed(0)
    from unifusion.nets import MLP
    net = MLP(2, hidden=32, depth=1, emb_dim=16)
    nn.init.normal_(net.out.weight, std=0.1)
    den = Denoiser(net, VP(), "v")
    x0 = ORACLE.sample(64, torch.Generator().manual_seed(0), dtype=torch.float32)
    loss = build_loss("v", VP())
    a, b = _losses(loss, den, x0, 1), _losses(loss, den, x0, 1)
    assert a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, _losses(loss, den, x0, 2))
    a.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)


# ---- bad input ------------------------------------------------------------------------------------------

def test_bad_input_names_the_value():
    with pytest.raises(ValueError, match="'nope' is not one of .*'ddpm'"):
        build_loss("nope", VP())
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['bogus'\]"):
        build_loss("edm", None, bogus=1)
    with pytest.raises(ValueError, match="num_timesteps"):
        build_loss("ddpm", VP())
    with pytest.raises(ValueError, match="target='x0'"):
        build_loss("ddpm", DDPM())(exact_denoiser(DDPM(), "x0"), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="sigma_data"):
        build_loss("edm", sigma_data=1.0)(exact_denoiser(None, "edm"), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="x0 must be"):
        build_loss("v", VP())(exact_denoiser(VP(), "v"), torch.zeros(4))
    with pytest.raises(ValueError, match="noise='gauss' is not one of"):
        build_loss("x0", VP(), noise="gauss")
    assert set(LOSSES) >= {"ddpm", "ncsn", "score_sde", "vdm", "edm", "x0", "v", "eps", "mse"}


# ---- VDM's whole ELBO and its learned schedule ----------------------------------------------------------------
def _gaussian_eps_model(mu, s2, process):
    """The exact eps-predictor of Gaussian data `N(mu, s2 I)` for `process`, as a `Denoiser` (noise_cond t)."""
    from unifusion.oracles import GaussianMixture

    gm = GaussianMixture(torch.ones(1), mu[None], torch.tensor([s2], dtype=torch.float64))
    return Denoiser(gm.process_model(process, "eps"), process, "eps")


@pytest.mark.parametrize("shape", ["learned", "vp"])
def test_vdm_diffusion_term_equals_its_gaussian_closed_form(shape):
    """For data N(mu, s^2 I) and the exact eps-network, E|eps - eps_hat|^2 = d s^2 SNR / (1 + s^2 SNR), so
    E[L_diff] = d/2 [log(1 + s^2 SNR(t_min)) - log(1 + s^2 SNR(t_max))] whatever the schedule's shape (Kingma et al.
    2021, eq. 17 integrated in log-SNR); the prior term is |x|^2 / (2 sigma~_max^2) exactly."""
    from unifusion.losses import VDMLoss
    from unifusion.processes import VDM

    p = VDM(shape=shape).requires_grad_(False)
    if shape == "learned":
        with torch.no_grad():
            p.v.copy_(torch.randn(p.v.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 2)
    d, s2, n = 4, 0.3, 20000
    mu = torch.tensor([1.0, -1.0, 0.0, 1.0], dtype=torch.float64)        # on the levels of levels=3
    x0 = mu.expand(n, d).clone()                                          # the prior and reconstruction terms see x0
    den = _gaussian_eps_model(mu, s2, p)
    g = torch.Generator().manual_seed(1)
    data = mu + math.sqrt(s2) * torch.randn(n, d, generator=g, dtype=torch.float64)
    diff = VDMLoss(levels=3).diffusion(den, data, generator=g)
    snr = torch.exp(-torch.tensor(p.gamma_ends, dtype=torch.float64))
    closed = 0.5 * d * float(torch.log1p(s2 * snr[0]) - torch.log1p(s2 * snr[1]))
    se = float(diff.std()) / math.sqrt(n)
    assert abs(float(diff.mean()) - closed) < 4 * se, (float(diff.mean()), closed, se)
    terms = VDMLoss(levels=3).terms(den, x0, generator=g)
    torch.testing.assert_close(terms["prior"], 0.5 * x0.square().sum(1) / p.sigma_ve_max ** 2)


def test_vdm_reconstruction_term_closed_form():
    """Two levels (+-1): p(x = +1 | z_0) = sigmoid(2 x~_0 / sigma~_0^2), so -log p(x | z_0) is
    softplus(-2 x x~_0 / sigma~_0^2)."""
    from unifusion.losses import VDMLoss
    from unifusion.processes import VDM

    p = VDM(gamma_min=-1.0, gamma_max=5.0, shape="linear").requires_grad_(False)
    x0 = torch.tensor([[1.0, -1.0, 1.0]], dtype=torch.float64).repeat(50, 1)
    den = _gaussian_eps_model(torch.zeros(3, dtype=torch.float64), 1.0, p)
    g, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    recon = VDMLoss(levels=2).terms(den, x0, generator=g)["reconstruction"]
    s = p.sigma_ve_min
    x_ve = x0 + s * torch.randn(x0.shape, generator=g2, dtype=torch.float64)
    torch.testing.assert_close(recon, torch.nn.functional.softplus(-2 * x0 * x_ve / s ** 2).sum(1))


def test_vdm_schedule_gets_the_variance_gradient():
    """Under the VDM loss the shape parameters get the gradient of the batch variance of L_diff (over its batch mean,
    a positive factor), the end points and the network that of the mean loss."""
    from unifusion.losses import VDMLoss
    from unifusion.nets import MLP
    from unifusion.processes import VDM

    torch.manual_seed(0)
    p = VDM(hidden=8)
    den = Denoiser(MLP(3, hidden=16, depth=1), p, "eps", noise_cond="log_sigma").double()
    x0 = torch.randint(0, 5, (16, 3)).double() / 2 - 1
    loss = VDMLoss(levels=5)
    params = [p.v, p.gamma_0, den.net.out.bias]

    def grads(value):
        return torch.autograd.grad(value, params, allow_unused=True)

    with_trick = grads(loss(den, x0, torch.Generator().manual_seed(7)).mean())
    terms = loss.terms(den, x0, torch.Generator().manual_seed(7))
    plain = grads(sum(terms.values()).mean())
    l_diff = loss.terms(den, x0, torch.Generator().manual_seed(7))["diffusion"]
    variance = grads(l_diff.var(unbiased=False) / l_diff.mean().detach())
    torch.testing.assert_close(with_trick[0], variance[0])          # shape: d Var(L_diff) / mean(L_diff)
    torch.testing.assert_close(with_trick[1], plain[1])             # end point: d mean(L)
    torch.testing.assert_close(with_trick[2], plain[2])             # network: d mean(L)
    assert not torch.allclose(with_trick[0], plain[0])
    plain_loss = VDMLoss(levels=5, variance_gradient=False)
    torch.testing.assert_close(grads(plain_loss(den, x0, torch.Generator().manual_seed(7)).mean())[0], plain[0])


def test_vdm_loss_bad_input_and_low_discrepancy_times():
    from unifusion.losses import LowDiscrepancyTime, VDMLoss
    from unifusion.processes import VDM

    with pytest.raises(ValueError, match="levels"):
        build_loss("vdm_elbo", VDM())
    with pytest.raises(ValueError, match="levels must be"):
        VDMLoss(levels=1)
    den = _gaussian_eps_model(torch.zeros(2, dtype=torch.float64), 1.0, VDM(shape="linear"))
    with pytest.raises(ValueError, match="not on levels=17"):
        VDMLoss(levels=17)(den, torch.full((4, 2), 0.3, dtype=torch.float64))
    t = LowDiscrepancyTime()(1000, VDM(), torch.Generator().manual_seed(0))
    counts = torch.histc(t, bins=10, min=0.0, max=1.0)
    assert (counts == 100).all() and t.min() >= 0 and t.max() < 1   # one stratum per 1/B: exactly even
