"""Exact oracles: score = grad log p, denoiser = posterior mean (Monte Carlo), densities normalise."""
import pytest
import torch

from unifusion.oracles import EmpiricalData, GaussianMixture, eight_gaussians, grid_gaussians, mixture_64d


def _full_2d():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    covs = a @ a.transpose(1, 2) * 0.2 + 0.01 * torch.eye(2, dtype=torch.float64)
    return GaussianMixture([0.2, 0.5, 0.3], torch.randn(3, 2, generator=g, dtype=torch.float64) * 2, covs)


ORACLES = {
    "eight": eight_gaussians(), "grid": grid_gaussians(), "full2d": _full_2d(), "64d": mixture_64d(),
    "diag": GaussianMixture([1.0, 2.0], [[0.0, 1.0, 2.0], [1.0, -1.0, 0.0]], [[0.1, 0.2, 0.3], [0.5, 0.05, 0.2]]),
    "empirical": EmpiricalData(torch.randn(50, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)),
}


@pytest.mark.parametrize("name", ORACLES)
def test_score_is_gradient_of_log_density(name):
    o = ORACLES[name]
    g = torch.Generator().manual_seed(0)
    x = o.sample(32, g) + torch.randn(32, o.dim, generator=g, dtype=torch.float64)
    for s in [0.02, 0.3, 1.0, 10.0]:
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(o.log_prob(xr, s).sum(), xr)
        torch.testing.assert_close(o.score(x, s), grad, rtol=1e-8, atol=1e-8)
        # Tweedie: D(x) = x + sigma^2 score(x) (computed by a different formula)
        torch.testing.assert_close(o.denoiser(x, s), x + s ** 2 * o.score(x, s), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", ["eight", "full2d", "diag"])
def test_denoiser_is_the_monte_carlo_posterior_mean(name):
    """Self-normalised importance sampling from the prior: E[x0 | x] ~ sum w_i x0_i / sum w_i,
    w_i = N(x; x0_i, sigma^2 I); the delta-method standard error bounds the difference."""
    o = ORACLES[name]
    g = torch.Generator().manual_seed(1)
    x0 = o.sample(400000, g)
    for s in [0.3, 1.0]:
        x = o.sample(4, g) + s * torch.randn(4, o.dim, generator=g, dtype=torch.float64)
        for xi in x:
            logw = -((x0 - xi) ** 2).sum(1) / (2 * s ** 2)
            w = torch.softmax(logw, 0)
            mean = (w[:, None] * x0).sum(0)
            se = torch.sqrt((w[:, None] ** 2 * (x0 - mean) ** 2).sum(0))
            d = o.denoiser(xi[None], s)[0]
            assert ((d - mean).abs() < 5 * se + 1e-12).all(), (s, d, mean, se)


@pytest.mark.parametrize("name", ["eight", "full2d", "grid"])
def test_density_integrates_to_one(name):
    o = ORACLES[name]
    for s in [0.0, 0.5]:
        lim, n = 5.0, 401  # spacing 0.025 = std/2 of the sharpest component: the Riemann sum is spectrally accurate
        u = torch.linspace(-lim, lim, n, dtype=torch.float64)
        xy = torch.cartesian_prod(u, u)
        mass = o.log_prob(xy, s).exp().sum() * (u[1] - u[0]) ** 2
        assert abs(float(mass) - 1) < 2e-3, float(mass)


def test_sample_moments_match_the_mixture():
    o = ORACLES["full2d"]
    x = o.sample(200000, torch.Generator().manual_seed(4))
    w, mu = o.weights, o.means
    covs = (o.U @ torch.diag_embed(o.lam) @ o.U.transpose(1, 2))
    mean = (w[:, None] * mu).sum(0)
    second = (w[:, None, None] * (covs + mu[:, :, None] * mu[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None, :]
    se = (cov.diagonal() / x.shape[0]).sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0.03, atol=0.01)


def test_empirical_data_equals_a_mixture_of_point_masses():
    """Two independent code paths: EmpiricalData vs GaussianMixture with zero covariances."""
    pts = torch.randn(40, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    emp, gm = EmpiricalData(pts, chunk=7), GaussianMixture(torch.ones(40), pts, 0.0)
    x = 2 * torch.randn(16, 4, dtype=torch.float64)
    for s in [0.05, 0.5, 3.0]:
        torch.testing.assert_close(emp.denoiser(x, s), gm.denoiser(x, s), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(emp.log_prob(x, s), gm.log_prob(x, s), rtol=1e-9, atol=1e-9)
    # sigma -> 0: the denoiser returns the nearest point
    near = pts[torch.cdist(x, pts).argmin(1)]
    torch.testing.assert_close(emp.denoiser(x, 1e-3), near)


def test_float32_batched_and_far_away():
    o = mixture_64d()
    x = o.sample(8, torch.Generator().manual_seed(0)) + torch.randn(8, 64, dtype=torch.float64)
    s = torch.logspace(-1, 1, 8, dtype=torch.float64)
    d64 = o.denoiser(x, s)
    torch.testing.assert_close(o.denoiser(x.float(), s.float()).double(), d64, rtol=1e-3, atol=1e-3)
    for i in range(8):  # per-example sigma equals one call per example
        torch.testing.assert_close(o.denoiser(x[i:i + 1], s[i]), d64[i:i + 1])
    far = torch.full((2, 64), 1e4, dtype=torch.float64)
    assert torch.isfinite(o.log_prob(far, 0.1)).all() and torch.isfinite(o.score(far, 0.1)).all()
    far2 = torch.full((2, 2), 1e4, dtype=torch.float32)
    assert torch.isfinite(grid_gaussians().denoiser(far2, 0.01)).all()


def test_component_labels_and_presets():
    o = grid_gaussians()
    assert o.K == 25 and o.dim == 2 and eight_gaussians().K == 8 and mixture_64d().dim == 64
    torch.testing.assert_close(o.component(o.means), torch.arange(25))
    assert torch.equal(mixture_64d(seed=3).means, mixture_64d(seed=3).means)


def test_bad_input_names_the_argument():
    o = eight_gaussians()
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2\]"):
        o.denoiser(torch.zeros(3, 5), 1.0)
    with pytest.raises(ValueError, match="x contains NaN"):
        o.score(torch.full((3, 2), float("nan")), 1.0)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        o.log_prob(torch.zeros(3, 2), -1.0)
    with pytest.raises(ValueError, match=r"sigma must be a scalar or have shape \[3\]"):
        o.denoiser(torch.zeros(3, 2), torch.ones(4))
    with pytest.raises(ValueError, match="weights must be"):
        GaussianMixture([1.0, -1.0], [[0.0], [1.0]], 1.0)
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, -1.0]]])
    with pytest.raises(ValueError, match="n must be an integer"):
        o.sample(0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        EmpiricalData(torch.zeros(3, 2)).denoiser(torch.zeros(1, 2), 0.0)


# ---- conditional answers: the mixture restricted to one component -------------------------------------------
@pytest.mark.parametrize("name", ["grid", "full2d", "64d"])
def test_conditional_answers_are_the_component_and_bayes_holds(name):
    """`p(x | y)` is component y's Gaussian: Bayes' rule against the unconditional density and the exact
    classifier, score = gradient, Tweedie, and label -1 = the whole mixture."""
    o = ORACLES[name]
    g = torch.Generator().manual_seed(3)
    x = o.sample(16, g) + 0.3 * torch.randn(16, o.dim, generator=g, dtype=torch.float64)
    for s in [0.0, 0.2, 2.0]:
        log_r = o.log_responsibilities(x, s)
        torch.testing.assert_close(log_r.exp().sum(1), torch.ones(16, dtype=torch.float64))
        for k in range(min(o.K, 6)):
            y = torch.full((16,), k)
            lp = o.log_prob(x, s, class_labels=y)
            torch.testing.assert_close(o.weights[k].log() + lp - o.log_prob(x, s), log_r[:, k], rtol=1e-9, atol=1e-9)
            if s > 0:
                xr = x.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(o.log_prob(xr, s, class_labels=y).sum(), xr)
                torch.testing.assert_close(o.score(x, s, class_labels=y), grad, rtol=1e-8, atol=1e-8)
                torch.testing.assert_close(o.denoiser(x, s, class_labels=y), x + s ** 2 * o.score(x, s, class_labels=y),
                                           rtol=1e-8, atol=1e-8)
        none = torch.full((16,), -1)
        torch.testing.assert_close(o.log_prob(x, s, class_labels=none), o.log_prob(x, s), rtol=0, atol=0)
        assert torch.equal(o.component(x, s), log_r.argmax(1))


def test_conditional_density_integrates_to_one_and_sampling_labels_match():
    o = ORACLES["full2d"]
    u = torch.linspace(-6.0, 6.0, 481, dtype=torch.float64)
    xy = torch.cartesian_prod(u, u)
    for k in range(o.K):
        mass = o.log_prob(xy, 0.3, class_labels=torch.full((xy.shape[0],), k)).exp().sum() * (u[1] - u[0]) ** 2
        assert abs(float(mass) - 1) < 1e-3, (k, float(mass))
    x, y = o.sample_labelled(20000, torch.Generator().manual_seed(0))
    assert torch.equal(x, o.sample(20000, torch.Generator().manual_seed(0)))       # the same draws
    for k in range(o.K):                                   # each component's points have that component's mean
        se = (x[y == k].var(0) / int((y == k).sum())).sqrt()
        assert ((x[y == k].mean(0) - o.means[k]).abs() < 5 * se).all()
    with pytest.raises(ValueError, match=r"class_labels must lie in \[-1, 2\]"):
        o.denoiser(x[:4], 1.0, class_labels=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"class_labels must lie in \[-1, -1\]"):
        ORACLES["empirical"].denoiser(torch.zeros(2, 3, dtype=torch.float64), 1.0, class_labels=torch.tensor([0, 0]))
