"""Stochastic samplers reach the exact distribution of a 1-D Gaussian mixture (two-sample Kolmogorov-Smirnov
statistic within a stated bound), and the process-time forms equal their VE-coordinate forms."""
import math

import pytest
import torch
from scipy.stats import ks_2samp

from unifusion import DDPM, VP, Denoiser, GaussianMixture, grids
from unifusion import samplers as S

MIX = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0], [1.5]]), torch.tensor([0.09, 0.25]))
N = 3000
# KS critical value at alpha = 1e-3 for two samples of N: 1.95 sqrt(2/N) = 0.050; plus 0.02 for the samplers'
# discretisation bias at the step counts below. A sampler that ignores the data (prior noise, a single
# mode, the mean) scores > 0.3 here.
KS_BOUND = 1.95 * math.sqrt(2 / N) + 0.02

CASES = {
    "ancestral": (grids.edm_grid(100, 0.005, 20.0), {}),
    "ddim_eta_half": (grids.edm_grid(100, 0.005, 20.0), {"eta": 0.5}),
    "euler_maruyama": (grids.edm_grid(300, 0.005, 20.0), {}),
    "pc": (grids.edm_grid(60, 0.005, 20.0), {"snr": 0.16}),
    "langevin": (grids.geometric_grid(40, 0.02, 20.0, zero=True), {"n_steps_each": 12, "step_size": 1.25}),
    "edm_stochastic": (grids.edm_grid(40, 0.005, 20.0), {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 10.0}),
}


def ks(samples):
    exact = MIX.sample(N, generator=torch.Generator().manual_seed(99))
    return ks_2samp(samples.flatten().numpy(), exact.flatten().numpy()).statistic


def test_bound_is_meaningful():
    """The exact-vs-exact floor is below the bound, a wrong distribution is far above it."""
    assert ks(MIX.sample(N, generator=torch.Generator().manual_seed(1))) < KS_BOUND
    assert ks(torch.randn(N, 1, generator=torch.Generator().manual_seed(1))) > 0.2


@pytest.mark.parametrize("case", sorted(CASES))
def test_stochastic_sampler_reaches_exact_distribution(case):
    sigmas, opts = CASES[case]
    name = "ddim" if case.startswith("ddim") else case
    g = torch.Generator().manual_seed(0)
    x = sigmas[0].item() * torch.randn(N, 1, generator=g, dtype=torch.float64)
    out = S.get_sampler(name)(MIX, x, sigmas, generator=g, **opts)
    assert ks(out) < KS_BOUND


def test_same_generator_same_samples():
    x = 10 * torch.randn(8, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sig = grids.edm_grid(10, 0.01, 10.0)
    for name in ("ancestral", "euler_maruyama", "pc", "edm_stochastic"):
        opts = {"s_churn": 5.0} if name == "edm_stochastic" else {}
        a = S.get_sampler(name)(MIX, x, sig, generator=torch.Generator().manual_seed(1), **opts)
        b = S.get_sampler(name)(MIX, x, sig, generator=torch.Generator().manual_seed(1), **opts)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ddpm_on_its_timesteps_equals_ve_ancestral():
    """Ho et al. Algorithm 2 on DDPM's 1000 timesteps == VE-coordinate ancestral sampling, same noise."""
    p = DDPM()
    x_T = torch.randn(16, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = S.sample_ddpm(MIX.process_model(p, "eps"), p, x_T, generator=torch.Generator().manual_seed(3))
    sig = grids.sigmas_from_timesteps(p, torch.arange(999, -1, -1))
    alpha_T = p.alpha(999.0).item()
    b = S.sample_ancestral(MIX, x_T / alpha_T, sig, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_discrete_ddim_equals_ve_ddim(eta, spacing):
    p = DDPM()
    ts = grids.ddim_timesteps(1000, 10, spacing)
    x_t = torch.randn(16, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = S.sample_ddim_discrete(MIX.process_model(p, "eps"), p, x_t, ts, eta=eta,
                               generator=torch.Generator().manual_seed(5))
    alpha = p.alpha(ts[0].double()).item()
    b = S.sample_ddim(MIX, x_t / alpha, grids.sigmas_from_timesteps(p, ts), eta=eta,
                      generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)


def test_vp_sde_euler_maruyama_in_t_reaches_exact_distribution():
    """VP-SDE EM in t and EM in VE coordinates: different discretisations, the same exact law."""
    vp = VP(t_min=1e-3)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(N, 1, generator=g, dtype=torch.float64)
    ts = torch.linspace(1.0, 1e-3, 300, dtype=torch.float64)
    out = S.sample_euler_maruyama_t(MIX.process_model(vp, "eps"), vp, x, ts, generator=g)
    assert ks(out / vp.alpha(1e-3).item()) < KS_BOUND


def test_ancestral_on_a_vp_denoiser_reaches_exact_distribution():
    """The same VE sampler on a VP-trained (here: exact VP eps-model) network."""
    vp = VP()
    den = Denoiser(MIX.process_model(vp, "eps"), vp, target="eps")
    g = torch.Generator().manual_seed(7)
    sig = grids.uniform_t_grid(vp, 200, t_min=1e-3)
    out = S.sample_ancestral(den, sig[0].item() * torch.randn(N, 1, generator=g, dtype=torch.float64), sig, generator=g)
    assert ks(out) < KS_BOUND
