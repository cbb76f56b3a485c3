"""Deterministic samplers against exact PF-ODE solutions of Gaussian-mixture oracles: convergence orders,
per-example grids, NFE accounting, VP-view == VE-view, conditioning pass-through, float64 coefficients."""
import math
import re

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from unifusion import VP, Denoiser, GaussianMixture, grids
from unifusion import samplers as S

# A smooth 1-D case: two broad components, sigma from 10 to 0.05 (no step to 0, whose error does not shrink).
SMOOTH = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0], [1.5]]), torch.tensor([0.5, 0.8]))
S_MAX, S_MIN = 10.0, 0.05


def pf_ode_reference(oracle, x, s_from, s_to, rtol=1e-12):
    """The exact PF-ODE endpoint by scipy's DOP853 in sigma (float64)."""
    def f(s, y):
        xx = torch.from_numpy(y).reshape(x.shape)
        return ((xx - oracle(xx, s)) / s).reshape(-1).numpy()
    sol = solve_ivp(f, (s_from, s_to), x.reshape(-1).numpy(), method="DOP853", rtol=rtol, atol=rtol)
    return torch.from_numpy(sol.y[:, -1]).reshape(x.shape)


@pytest.fixture(scope="module")
def smooth_case():
    x = S_MAX * torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x, pf_ode_reference(SMOOTH, x, S_MAX, S_MIN)


ORDERS = [("euler", {}, 1), ("ddim", {}, 1), ("heun", {}, 2), ("dpmpp_2m", {}, 2), ("dpmpp_3m", {}, 3),
          ("exp_adams", {"order": 2}, 2), ("unipc", {"order": 1}, 2),
          ("unipc", {"order": 2}, 3), ("lms", {"order": 2, "corrector": False}, 2),
          ("lms", {"order": 1, "corrector": True}, 2),
          ("lms", {"order": 2, "corrector": True}, 3), ("hybrid", {"order": 1, "sigma_switch": 1.0}, 2),
          ("hybrid", {"order": 2, "sigma_switch": 1.0}, 3), ("hybrid", {"order": 2, "sigma_switch": 0.3}, 3),
          ("hybrid", {"order": 2, "sigma_switch": 0.1}, 3),
          ("unipc", {"order": 2, "final_adams": True}, 3)]


@pytest.mark.parametrize("name, opts, order", ORDERS,
                         ids=[f"{n}{o.get('order', '')}{'c' if o.get('corrector') else ''}"
                              f"{'a' if o.get('final_adams') else ''}"
                              f"{'s' + str(o['sigma_switch']) if 'sigma_switch' in o else ''}" for n, o, _ in ORDERS])
def test_convergence_order(smooth_case, name, opts, order):
    """Fitted slope of log(RMS error) against log(NFE) is -order within 0.3. `hybrid` at a fixed switch:
    its default switch depends on the step count, so the default is a different method at each n."""
    x, ref = smooth_case
    nfes, errs = [], []
    for n in (8, 16, 32, 64):
        counted = S.count_nfe(SMOOTH)
        out = S.get_sampler(name)(counted, x, grids.geometric_grid(n + 1, S_MIN, S_MAX), **opts)
        nfes.append(counted.nfe)
        errs.append((out - ref).pow(2).mean().sqrt().item())
    slope = np.polyfit(np.log(nfes), np.log(errs), 1)[0]
    assert abs(slope + order) <= 0.3, (slope, errs)


def test_dopri5_tolerance_and_nfe(smooth_case):
    x, ref = smooth_case
    errs, nfes = [], []
    for rtol in (1e-4, 1e-6, 1e-8):
        seen = []
        out = S.sample_dopri5(SMOOTH, x, grids.grid_from_list([S_MAX, S_MIN]), rtol=rtol, atol=rtol,
                              callback=seen.append)
        errs.append((out - ref).abs().max().item())
        nfes.append(seen[-1]["nfe"])
        assert errs[-1] < 100 * rtol
    assert errs[0] > errs[1] > errs[2] and nfes[0] < nfes[1] < nfes[2]
    assert (nfes[0] - 1) % 6 == 0  # 6 evaluations per attempted step + the first


def test_dopri5_final_zero_is_free():
    x = 5 * torch.randn(8, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, b = S.count_nfe(SMOOTH), S.count_nfe(SMOOTH)
    out0 = S.sample_dopri5(a, x, grids.grid_from_list([5.0, 0.01, 0.0]), rtol=1e-6)
    out1 = S.sample_dopri5(b, x, grids.grid_from_list([5.0, 0.01]), rtol=1e-6)
    assert a.nfe == b.nfe
    torch.testing.assert_close(out0, SMOOTH(out1, 0.01))


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_per_example_grids(name):
    """`sigmas` of shape [N+1, B]: column b is example b's grid; equals running each example alone."""
    x = 3 * torch.randn(4, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cols = [grids.grid_from_list([3.0, 1.0]), grids.grid_from_list([2.0, 0.5]),
            grids.grid_from_list([1.5, 0.0]), grids.grid_from_list([0.8, 0.79])]
    out = S.get_sampler(name)(SMOOTH, x, torch.stack(cols, 1))
    for b in range(4):
        torch.testing.assert_close(out[b:b + 1], S.get_sampler(name)(SMOOTH, x[b:b + 1], cols[b]))
    # one ODE step with a different noise level per example, the consistency-distillation teacher's call
    s_cur, s_next = torch.tensor([3.0, 1.0, 0.5, 0.1]), torch.tensor([2.0, 0.7, 0.2, 0.05])
    step = S.get_sampler(name)(SMOOTH, x, torch.stack([s_cur, s_next]))
    ref = pf_ode_reference(SMOOTH, x[:1], 3.0, 2.0)
    assert (step[:1] - ref).abs().item() < (0.5 if name == "euler" else 0.05)


def _vp_view(oracle):
    """The same oracle seen as a VP-SDE eps-prediction network through the Denoiser."""
    vp = VP()
    return Denoiser(oracle.process_model(vp, "eps"), vp, target="eps")


FAST_OPTS = {"langevin": {"n_steps_each": 3, "step_size": 0.4}, "pc": {"snr": 0.1}, "dopri5": {"rtol": 1e-5},
             "edm_stochastic": {"s_churn": 10.0}, "ddim": {"eta": 0.5}}


@pytest.mark.parametrize("name", sorted(S.SAMPLERS))
def test_vp_view_equals_ve_view(name):
    """A VP-view and a VE-view of the same oracle give the same endpoints, same noise."""
    mix = GaussianMixture(torch.ones(3), torch.tensor([[0.0, 1.0], [1.0, -1.0], [-1.0, 0.0]]), torch.tensor(0.04))
    x = 20 * torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sig = grids.edm_grid(8, 0.01, 20.0)
    outs = [S.get_sampler(name)(d, x, sig, generator=torch.Generator().manual_seed(4), **FAST_OPTS.get(name, {}))
            for d in (mix, _vp_view(mix))]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(S.SAMPLERS))
def test_nfe_reported_and_conditioning_passed(name):
    """The callback's last `nfe` equals the evaluations counted by `count_nfe`; model_kwargs reach the model."""
    seen_kwargs, calls = [], []

    def model(x, sigma, label=None):
        seen_kwargs.append(label)
        assert sigma.shape == (x.shape[0],) and sigma.dtype == torch.float64
        return SMOOTH(x, sigma)

    counted = S.count_nfe(model)
    x = 5 * torch.randn(3, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    S.get_sampler(name)(counted, x, grids.edm_grid(4, 0.05, 5.0), callback=calls.append,
                        model_kwargs={"label": 7}, **FAST_OPTS.get(name, {}))
    assert calls[-1]["nfe"] == counted.nfe > 0 and set(seen_kwargs) == {7}
    expected = {"euler": 4, "ddim": 4, "dpmpp_2m": 4, "dpmpp_3m": 4, "exp_adams": 4, "unipc": 4, "lms": 4, "hybrid": 4,
                "ancestral": 4, "euler_maruyama": 4, "heun": 7, "edm_stochastic": 7, "pc": 7, "langevin": 4 * 3 + 1}
    if name in expected:
        assert counted.nfe == expected[name]


def test_float32_model_float64_coefficients():
    """A float32 state stays float32, and agrees with the float64 run to float32 precision (coefficients are
    float64)."""
    x = 10 * torch.randn(32, 1, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    sig = grids.edm_grid(200, 0.01, 10.0)
    for name in ("dpmpp_3m", "unipc", "heun"):
        out32 = S.get_sampler(name)(SMOOTH, x.float(), sig)
        assert out32.dtype == torch.float32
        torch.testing.assert_close(out32.double(), S.get_sampler(name)(SMOOTH, x, sig), rtol=0, atol=2e-5)


def test_identities_between_samplers():
    """In VE coordinates Euler == DDIM(eta=0) == exponential Adams order 1 (DPM-Solver++(1))."""
    x = 10 * torch.randn(16, 1, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    sig = grids.edm_grid(6, 0.02, 10.0)
    e = S.sample_euler(SMOOTH, x, sig)
    torch.testing.assert_close(S.sample_ddim(SMOOTH, x, sig, eta=0.0), e)
    torch.testing.assert_close(S.sample_exp_adams(SMOOTH, x, sig, order=1), e)
    torch.testing.assert_close(S.sample_edm_stochastic(SMOOTH, x, sig), S.sample_heun(SMOOTH, x, sig))


def test_exp_adams_weights_are_exact_for_polynomials():
    """`sum_j w_j P(u_j) = int_0^h e^{u-h} P(u) du` for every polynomial of degree < len(nodes)."""
    nodes, h = [0.0, -0.4, -1.1, -2.0], 0.7
    w = S.exp_adams_weights(nodes, h)
    for m in range(4):
        exact = math.factorial(m) * sum((-1) ** (m - j) * h ** j / math.factorial(j) for j in range(m + 1)) \
            - math.factorial(m) * (-1) ** m * math.exp(-h)  # int_0^h e^{u-h} u^m du
        assert sum(wj * u ** m for wj, u in zip(w, nodes, strict=True)) == pytest.approx(exact, rel=1e-12, abs=1e-15)
    assert S.exp_adams_weights([0.0], 1e-9)[0] == pytest.approx(-math.expm1(-1e-9), rel=1e-12)


def test_registry_and_validation():
    assert S.DEFAULT_SAMPLER in S.SAMPLERS and set(S.RECOMMENDED) >= set(S.SAMPLERS)
    for grid_fn in S.RECOMMENDED.values():
        g = grids.check_sigmas(grid_fn(10, 0.002, 80.0))
        assert g[-1] == 0 and g[0].item() == pytest.approx(80.0) and g.dtype == torch.float64
    with pytest.raises(ValueError, match="'euler'"):
        S.get_sampler("eulr")
    x = torch.zeros(2, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="eta"):
        S.sample_ddim(SMOOTH, x, grids.edm_grid(3), eta=1.5)
    with pytest.raises(ValueError, match="descending"):
        S.sample_euler(SMOOTH, x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="shared 1-D grid"):
        S.sample_dpmpp_2m(SMOOTH, x, torch.ones(3, 2).cumsum(0).flip(0))
    with pytest.raises(ValueError, match="order"):
        S.sample_exp_adams(SMOOTH, x, grids.edm_grid(3), order=5)
    with pytest.raises(ValueError, match="predictor"):
        S.sample_pc(SMOOTH, x, grids.edm_grid(3), predictor="magic")


TWO_SHARP_2D = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0, 0.0], [1.0, 0.5]]),
                               torch.tensor([0.01, 0.02]))  # the hybrid tests' mixture


def test_hybrid_is_unipc_above_and_lms_below_the_switch():
    """`hybrid` with the switch below every level is UniPC ending with an Adams step; above every level it is LMS;
    in between it differs from both (both spaces read the one history of (sigma, x, D))."""
    oracle = TWO_SHARP_2D
    x = 80 * torch.randn(64, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    sig = grids.tuned_grid(12, 0.002, 80.0, sampler="lms")
    torch.testing.assert_close(S.sample_hybrid(oracle, x, sig, order=3, sigma_switch=0.0),
                               S.sample_unipc(oracle, x, sig, order=3, final_adams=True), rtol=0, atol=1e-12)
    torch.testing.assert_close(S.sample_hybrid(oracle, x, sig, order=3, sigma_switch=1e9),
                               S.sample_lms(oracle, x, sig, order=3), rtol=0, atol=1e-12)
    mid = S.sample_hybrid(oracle, x, sig, order=3, sigma_switch=1.0)
    assert (mid - S.sample_lms(oracle, x, sig)).abs().max() > 1e-6
    assert (mid - S.sample_unipc(oracle, x, sig, order=3, final_adams=True)).abs().max() > 1e-6
    for bad in (-1.0, float("nan"), "1.0", True):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            S.sample_hybrid(oracle, x, sig, sigma_switch=bad)


def test_hybrid_default_switch_follows_the_step_count():
    """`sigma_switch=None` (the default) is `grids.hybrid_switch(N)` for a grid of N steps."""
    oracle = TWO_SHARP_2D
    x = 80 * torch.randn(32, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for n in (5, 20, 30):
        sig = grids.tuned_grid(n, 0.002, 80.0, sampler="hybrid")
        torch.testing.assert_close(S.sample_hybrid(oracle, x, sig),
                                   S.sample_hybrid(oracle, x, sig, sigma_switch=grids.hybrid_switch(n)), rtol=0, atol=0)
    sig = grids.tuned_grid(20, 0.002, 80.0, sampler="hybrid")
    assert (S.sample_hybrid(oracle, x, sig) - S.sample_hybrid(oracle, x, sig, sigma_switch=1.0)).abs().max() > 1e-9


def test_final_adams_step_beats_x_equals_d_on_a_sharp_mixture():
    """UniPC's step to 0 as an Adams step in sigma instead of `x = D(x, sigma_min)` (whose error ~ sigma_min^2 / std
    does not shrink with the step count): smaller endpoint error at a coarse final level."""
    oracle = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0], [1.0]]), torch.tensor([0.01, 0.01]))
    x = 10 * torch.randn(256, 1, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ref = pf_ode_reference(oracle, x, 10.0, 1e-6)
    sig = grids.edm_grid(30, 0.05, 10.0)
    err = {fa: (S.sample_unipc(oracle, x, sig, final_adams=fa) - ref).pow(2).mean().sqrt().item()
           for fa in (False, True)}
    assert err[True] < 0.5 * err[False], err


@pytest.mark.parametrize("name", sorted(S.SAMPLERS))
def test_no_grad_float32_sigma_and_k_diffusion_keywords(name):
    """Every sampler runs under no_grad (a trainable model leaves no graph), hands the model sigma in x's dtype,
    takes k-diffusion's `extra_args` as `model_kwargs` (not both) and `disable` (its progress-bar switch)."""
    weight = torch.nn.Parameter(torch.ones(()))
    seen = []

    def model(x, sigma, label=None):
        seen.append((sigma.dtype, label))
        return weight * SMOOTH(x.double(), sigma).to(x.dtype)

    x = 5 * torch.randn(3, 1, generator=torch.Generator().manual_seed(5))
    sig, fn = grids.edm_grid(4, 0.05, 5.0), S.get_sampler(name)
    opts = {**FAST_OPTS.get(name, {}), "generator": torch.Generator().manual_seed(0)}
    out = fn(model, x, sig, extra_args={"label": 3}, disable=False, **opts)
    assert not out.requires_grad and out.dtype == torch.float32
    assert set(seen) == {(torch.float32, 3)}
    opts["generator"] = torch.Generator().manual_seed(0)
    torch.testing.assert_close(fn(model, x, sig, model_kwargs={"label": 3}, **opts), out, rtol=0, atol=0)
    with pytest.raises(ValueError, match="extra_args"):
        fn(model, x, sig, model_kwargs={"label": 3}, extra_args={"label": 3}, **opts)


def test_callback_x_is_where_denoised_was_evaluated():
    """The callback's `x` is the state `denoised` was computed at (k-diffusion's meaning); `x_next` the state after
    the step, which is the next step's `x` for one-step methods; the last `x_next` is the result."""
    x = 10 * torch.randn(16, 1, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    sig = grids.edm_grid(6, 0.02, 10.0)
    for name in ("euler", "heun", "dpmpp_2m", "ddim", "edm_stochastic", "dopri5"):
        calls = []
        out = S.get_sampler(name)(SMOOTH, x, sig, callback=calls.append)
        torch.testing.assert_close(calls[0]["x"], x)
        torch.testing.assert_close(calls[-1]["x_next"], out)
        for c, nxt in zip(calls, calls[1:], strict=False):
            torch.testing.assert_close(c["denoised"], SMOOTH(c["x"], c["sigma_hat"]))
            torch.testing.assert_close(nxt["x"], c["x_next"])
            assert nxt["sigma"] == c["sigma_next"]
