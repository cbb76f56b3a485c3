"""Guidance against closed forms: classifier-free and classifier guidance on the exact mixture oracle (w = 0, 1,
affine in w, through a VP-eps view), one batched call per evaluation, guided samplers landing in the requested
component, labels through every sampler, consistency sampling and the likelihood, and every bad input."""
from __future__ import annotations

import math

import pytest
import torch

from unifusion.consistency import ConsistencyFunction, sample_consistency
from unifusion.grids import edm_grid
from unifusion.guidance import check_interval, check_scale, classifier, classifier_free, num_classes
from unifusion.likelihood import log_likelihood
from unifusion.nets import MLP
from unifusion.oracles import GaussianMixture, grid_gaussians, mixture_64d
from unifusion.parametrization import Denoiser, ProcessModel
from unifusion.processes import VP
from unifusion.samplers import SAMPLERS, get_sampler
from unifusion.train.generate import generate


def _full_2d():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    covs = a @ a.transpose(1, 2) * 0.2 + 0.01 * torch.eye(2, dtype=torch.float64)
    return GaussianMixture([0.2, 0.5, 0.3], torch.randn(3, 2, generator=g, dtype=torch.float64) * 2, covs)


ORACLES = {"grid": grid_gaussians(), "full2d": _full_2d(), "64d": mixture_64d()}
SCALES = (0.0, 0.5, 1.0, 2.0, 4.0)


def _point(o, n=64, seed=0):
    """Noisy points, per-example sigmas over [0.01, 50] and labels including -1 ("no label")."""
    g = torch.Generator().manual_seed(seed)
    s = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(0.01), math.log(50.0), generator=g))
    x = o.sample(n, g) + s[:, None] * torch.randn(n, o.dim, generator=g, dtype=torch.float64)
    y = torch.randint(-1, o.K, (n,), generator=g)
    return x, s, y


def _assert_close(a, b, tol=1e-10):
    err = (a - b).abs().max().item()
    assert err <= tol, err


# ---- exactness --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ORACLES)
def test_cfg_on_the_oracle_is_exact_and_affine_in_w(name):
    o = ORACLES[name]
    x, s, y = _point(o)
    d_u = o.denoiser(x, s)                                # the mixture
    d_c = o.denoiser(x, s, class_labels=y)                # the mixture restricted to component y (y = -1: all)
    assert (d_c - d_u)[y >= 0].abs().max() > 1e-3       # the two differ, so the checks below can fail
    _assert_close(classifier_free(o, 0.0)(x, s, class_labels=y), d_u)
    _assert_close(classifier_free(o, 1.0)(x, s, class_labels=y), d_c)
    for w in SCALES:
        _assert_close(classifier_free(o, w)(x, s, class_labels=y), (1 - w) * d_u + w * d_c)
    _assert_close(classifier_free(o, 3.0)(x, s), d_u)   # no labels: the unconditional model


@pytest.mark.parametrize("name", ["grid", "64d"])
def test_cfg_is_coordinate_free_through_a_vp_eps_view(name):
    """The oracle viewed as a VP eps-predictor and back (`Denoiser`), guided, equals the guided oracle; and the
    guided model viewed as an eps-predictor is `eps_u + w (eps_c - eps_u)` of the eps network itself."""
    o, vp = ORACLES[name], VP()
    eps_net = o.process_model(vp, "eps")
    den = Denoiser(eps_net, vp, "eps")
    x, s, y = _point(o, seed=1)
    s = s.clamp(vp.sigma_ve_min, vp.sigma_ve_max)
    for w in SCALES:
        _assert_close(classifier_free(den, w)(x, s, class_labels=y), classifier_free(o, w)(x, s, class_labels=y))
    t = vp.t_from_sigma_ve(s)
    x_t = vp.alpha(t)[:, None] * x
    eps_u, eps_c = eps_net(x_t, t), eps_net(x_t, t, class_labels=y)
    for w in SCALES:
        eps_w = ProcessModel(classifier_free(den, w), vp, "eps")(x_t, t, class_labels=y)
        _assert_close(eps_w, eps_u + w * (eps_c - eps_u))


@pytest.mark.parametrize("name", ORACLES)
def test_classifier_guidance_with_the_exact_classifier_is_cfg(name):
    """`sigma^2 grad log p(y | x)` is exactly `D_c - D_u` (Tweedie), so classifier guidance with the mixture's
    responsibilities at scale w equals classifier-free guidance at w; at 1 it is the conditional denoiser."""
    o = ORACLES[name]
    x, s, y = _point(o, seed=2)
    _assert_close(classifier(o, o.log_responsibilities, 1.0)(x, s, class_labels=y), o.denoiser(x, s, class_labels=y))
    for w in SCALES:
        _assert_close(classifier(o, o.log_responsibilities, w)(x, s, class_labels=y),
                      classifier_free(o, w)(x, s, class_labels=y))


def test_guidance_interval_guides_only_inside():
    o = ORACLES["grid"]
    x, s, y = _point(o, seed=3)
    lo, hi = 0.3, 5.0
    inside = ((s >= lo) & (s <= hi))[:, None]
    assert inside.any() and (~inside).any()
    out = classifier_free(o, 3.0, interval=(lo, hi))(x, s, class_labels=y)
    _assert_close(out, torch.where(inside, classifier_free(o, 3.0)(x, s, class_labels=y),
                                   o.denoiser(x, s, class_labels=y)))


class _Recorder:
    """An oracle that records the batch size of each call."""

    def __init__(self, o):
        self.o, self.calls, self.num_classes = o, [], o.num_classes

    def __call__(self, x, sigma, class_labels=None):
        self.calls.append(x.shape[0])
        return self.o(x, sigma, class_labels=class_labels)


def test_one_batched_call_per_evaluation():
    o = ORACLES["grid"]
    x, s, y = _point(o, n=50, seed=4)
    labelled = int((y >= 0).sum())
    for w, interval, rows in ((2.0, None, 50 + labelled), (1.0, None, 50), (0.0, None, 50 + labelled),
                              (2.0, (0.3, 5.0), 50 + int(((y >= 0) & (s >= 0.3) & (s <= 5.0)).sum()))):
        rec = _Recorder(o)
        classifier_free(rec, w, interval=interval)(x, s, class_labels=y)
        assert rec.calls == [rows], (w, interval, rec.calls)
    rec = _Recorder(o)
    get_sampler("heun")(classifier_free(rec, 2.0), x, edm_grid(5, 0.01, 50.0), model_kwargs={"class_labels": y})
    assert rec.calls == [50 + labelled] * 9                # Heun on 5 levels: 9 evaluations, each one call


# ---- guided sampling ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler,steps", [("dpmpp_2m", 20), ("hybrid", 20), ("heun", 10), ("euler_maruyama", 20)])
def test_guided_sampler_lands_in_the_requested_component(sampler, steps):
    """w = 1 is the exact conditional denoiser: 2000 starts on the 5 x 5 grid, about 20 evaluations each. Strong
    guidance makes the ODE stiffer: w = 3 needs the 20 steps (with 10, Heun and DPM-Solver++ land only 30-40 %
    in the requested component; docs/guidance.md)."""
    o = ORACLES["grid"]
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, o.K, (2000,), generator=g)
    sigmas = edm_grid(steps, 0.002, 20.0)
    x = 20.0 * torch.randn(2000, 2, generator=g, dtype=torch.float64)
    for w in (1.0, 3.0) if steps >= 20 else (1.0,):
        out = get_sampler(sampler)(classifier_free(o, w), x, sigmas, generator=g, model_kwargs={"class_labels": y})
        hit = (o.component(out) == y).double().mean().item()
        assert hit >= 0.995, (w, hit)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_per_example_labels_work_in_every_sampler(sampler):
    o = ORACLES["grid"]
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, o.K, (200,), generator=g)
    # annealed Langevin: 40 steps per level, each a_i = 0.2 sigma_i^2 (NCSN's step_lr = 2e-5 at sigma_L = 0.01)
    opts = {"n_steps_each": 40, "steps": 10, "sigma_min": 0.01} if sampler == "langevin" else \
        {"steps": 30, "sigma_min": 0.002}
    out, info = generate(classifier_free(o, 1.5), 200, (2,), sampler=sampler, sigma_max=20.0, class_labels=y,
                         seed=3, batch_size=64, **opts)
    assert torch.isfinite(out).all()
    assert (o.component(out.double()) == y).double().mean() >= 0.95, sampler


def test_guided_eps_model_in_the_process_time_samplers():
    """The guided oracle viewed as a VP-SDE eps-network (`ProcessModel`) in DDIM on timesteps and Euler-Maruyama in t:
    the labels reach it through `model_kwargs` and the samples land in the requested component."""
    from unifusion.samplers import sample_ddim_discrete, sample_euler_maruyama_t
    o, vp = ORACLES["grid"], VP()
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, o.K, (400,), generator=g)
    eps = ProcessModel(classifier_free(o, 1.5), vp, "eps")
    x_T = torch.randn(400, 2, generator=g, dtype=torch.float64)
    ts = torch.linspace(1.0, 1e-3, 100, dtype=torch.float64)
    for out in (sample_ddim_discrete(eps, vp, x_T, ts, model_kwargs={"class_labels": y}),
                sample_euler_maruyama_t(eps, vp, x_T, ts, generator=g, model_kwargs={"class_labels": y})):
        assert (o.component(out) == y).double().mean() >= 0.97


def test_labels_in_consistency_sampling_and_likelihood():
    o = ORACLES["grid"]
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, o.K, (500,), generator=g)
    f = ConsistencyFunction(classifier_free(o, 1.0), 0.002, 20.0)
    out = sample_consistency(f, 20.0 * torch.randn(500, 2, generator=g, dtype=torch.float64), [20.0, 0.5],
                             generator=g, model_kwargs={"class_labels": y})
    assert (o.component(out) == y).double().mean() >= 0.99
    x, y = o.sample_labelled(8, g)
    y[::2] = -1                                           # "no label": the unconditional density
    res = log_likelihood(o, x, sigma_min=0.01, sigma_max=50.0, model_kwargs={"class_labels": y},
                         prior_log_prob=lambda x_T: o.log_prob(x_T, 50.0, class_labels=y))
    torch.testing.assert_close(res.log_prob, o.log_prob(x, 0.01, class_labels=y), rtol=0, atol=2e-3)


# ---- bad input -------------------------------------------------------------------------------------------------
def test_bad_guidance_arguments_raise_one_line_errors():
    o = ORACLES["grid"]
    x, s, y = _point(o, n=8)
    for bad in (-1.0, math.nan, math.inf, True, "2"):
        with pytest.raises(ValueError, match="guidance scale must be a finite number >= 0"):
            classifier_free(o, bad)
        with pytest.raises(ValueError, match="classifier guidance scale"):
            classifier(o, o.log_responsibilities, bad)
    for bad in ((5.0, 1.0), (1.0, 1.0), (-1.0, 2.0), (1.0,), "ab", (0.0, math.nan)):
        with pytest.raises(ValueError, match="guidance interval"):
            classifier_free(o, 2.0, interval=bad)
    assert check_interval((0.3, math.inf)) == (0.3, math.inf) and check_scale(0) == 0.0
    cfg = classifier_free(o, 2.0)
    for labels, what in ((y[:4], "shape"), (y.double(), "integers"), (y[:, None], "shape"),
                         (torch.full((8,), 25), r"\[-1, 24\]"), (torch.full((8,), -2), r"\[-1, 24\]")):
        with pytest.raises(ValueError, match="class_labels must .*" + what):
            cfg(x, s, class_labels=labels)
        with pytest.raises(ValueError, match="class_labels must .*" + what):
            o.denoiser(x, s, class_labels=labels)
    uncond = Denoiser(MLP(2, hidden=8, depth=1, emb_dim=8), None, "edm")
    assert num_classes(uncond) == 0 and num_classes(o) == 25 and num_classes(cfg) == 25
    with pytest.raises(ValueError, match="unconditional model"):
        classifier_free(uncond, 2.0)(x.float(), s, class_labels=y)
    with pytest.raises(ValueError, match="unconditional model"):
        generate(uncond, 8, (2,), steps=2, class_labels=y)
    with pytest.raises(ValueError, match="class_labels must be integers of shape \\[9\\]"):
        generate(cfg, 9, (2,), steps=2, class_labels=y)
