"""PF-ODE likelihoods against the exact Gaussian-mixture density, in VE and in process coordinates."""
import math

import pytest
import torch

from unifusion import VP, Denoiser, GaussianMixture, eight_gaussians
from unifusion.integrate import dopri5
from unifusion.likelihood import bits_per_dim, log_likelihood


def test_dopri5_reaches_tolerance_on_a_linear_ode():
    """dy/du = -y (u + 1): y(u) = y0 exp(-(u^2/2 + u)); both directions."""
    y0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    f = lambda y, u: -y * (u + 1)
    exact = lambda u: y0 * math.exp(-(u ** 2 / 2 + u))
    for rtol in [1e-4, 1e-8]:
        y, dy, nfe = dopri5(f, y0, 0.0, 2.0, rtol=rtol, atol=rtol)
        assert (y - exact(2.0)).abs().max() < 50 * rtol
        torch.testing.assert_close(dy, f(y, 2.0))
    y, _, nfe_back = dopri5(f, exact(2.0), 2.0, 0.0, rtol=1e-8, atol=1e-8)
    assert (y - y0).abs().max() < 1e-6 and nfe_back > 7


def test_exact_divergence_matches_mixture_density():
    gm = eight_gaussians()
    g = torch.Generator().manual_seed(0)
    s_min, s_max = 0.05, 40.0
    x = gm.sample(8, g) + s_min * torch.randn(8, 2, generator=g, dtype=torch.float64)
    res = log_likelihood(gm, x, sigma_min=s_min, sigma_max=s_max, prior_log_prob=lambda z: gm.log_prob(z, s_max),
                         rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(res.log_prob, gm.log_prob(x, s_min), rtol=0, atol=2e-4)
    # the default Gaussian prior N(0, s_max^2) only adds its (small) misfit to the exact p_{s_max}
    res2 = log_likelihood(gm, x, sigma_min=s_min, sigma_max=s_max, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(res2.log_prob, gm.log_prob(x, s_min), rtol=0, atol=5e-3)


def test_process_coordinates_vp_model():
    """A VP eps-model, likelihood of x_{t_min} in VP coordinates, equals the mixture's exact VP marginal."""
    gm, p = eight_gaussians(), VP(t_min=1e-3)
    D = Denoiser(gm.process_model(p, "eps"), p, "eps")
    g = torch.Generator().manual_seed(1)
    t0 = torch.tensor(p.t_min, dtype=torch.float64)
    x = p.marginal_sample(gm.sample(4, g), t0, torch.randn(4, 2, generator=g, dtype=torch.float64))
    a, s = p.alpha(t0), p.sigma(t0)
    exact = gm._posterior(x, a, s)[0]  # log-density of alpha x0 + sigma eps
    prior = lambda z: gm.log_prob(z, p.sigma_ve_max)  # exact VE-coordinate density at sigma~(t_max)
    res = log_likelihood(D, x, process=p, prior_log_prob=prior, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(res.log_prob, exact, rtol=0, atol=5e-4)


def test_hutchinson_is_unbiased_within_its_standard_error():
    g = torch.Generator().manual_seed(2)
    gm = GaussianMixture(torch.ones(3), torch.randn(3, 6, generator=g, dtype=torch.float64),
                         0.05 + torch.rand(3, 6, generator=g, dtype=torch.float64))
    x = gm.sample(4, g) + 0.1 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    prior = lambda z: gm.log_prob(z, 20.0)
    exact = log_likelihood(gm, x, sigma_min=0.1, sigma_max=20.0, prior_log_prob=prior, rtol=1e-5, atol=1e-5).log_prob
    runs = torch.stack([log_likelihood(gm, x, sigma_min=0.1, sigma_max=20.0, divergence="hutchinson",
                                       prior_log_prob=prior,
                                       generator=torch.Generator().manual_seed(k), rtol=1e-5, atol=1e-5).log_prob
                        for k in range(8)])
    se = runs.std(0) / math.sqrt(runs.shape[0])
    assert ((runs.mean(0) - exact).abs() < 5 * se + 1e-3).all(), (runs.mean(0), exact, se)
    assert (runs.std(0) > 0).all()  # the estimator really is stochastic
    torch.testing.assert_close(exact, gm.log_prob(x, 0.1), rtol=0, atol=1e-3)


def test_bits_per_dim_and_bad_input():
    # a uniform density on [-1, 1]^d has log p = -d log 2, which is exactly 8 bits per 8-bit dimension
    d = 3
    assert abs(float(bits_per_dim(torch.tensor(-d * math.log(2.0)), d)) - 8.0) < 1e-12
    gm = eight_gaussians()
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(gm, torch.zeros(2, 2), divergence="trace")
    with pytest.raises(ValueError, match="sigma_min"):
        log_likelihood(gm, torch.zeros(2, 2), sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="x contains NaN"):
        log_likelihood(gm, torch.full((2, 2), float("nan")))
