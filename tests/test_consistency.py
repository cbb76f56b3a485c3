"""Consistency models against exact answers: the boundary condition, closed-form Gaussian flow maps, the
teacher's ODE step through the conversion layer, the improved-CT schedules, and distillation on eight
Gaussians with the exact oracle teacher (1-step CD vs 1-step Euler in sliced Wasserstein-2)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from unifusion.consistency import (ConsistencyFunction, cd_loss, consistency_scalings, consistency_sigmas,
                                   ct_loss, ema_update, get_distance, ict_num_scales, karras_sigmas, l1, l2,
                                   lognormal_index_probs, pseudo_huber, sample_consistency)
from unifusion.oracles import GaussianMixture, eight_gaussians
from unifusion.parametrization import Denoiser, edm_precond
from unifusion.processes import VP

S_MIN, S_MAX = 0.002, 80.0


class _Net(torch.nn.Module):
    """A small random network `net(x, noise_cond)` with a non-zero output (so the boundary test can fail)."""

    def __init__(self, d=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(d + 1, d, generator=g, dtype=torch.float64))

    def forward(self, x, c, class_labels=None):
        c = torch.as_tensor(c, dtype=x.dtype).expand(x.shape[0])
        return torch.tanh(torch.cat([x, c[:, None]], 1) @ self.w.to(x.dtype)) * 3.0


class GaussianFlow(torch.nn.Module):
    """The exact consistency function of data `N(mu, s0^2 I)`: the VE PF-ODE flow map to `sigma_min`,
    `f*(x, sigma) = mu + (x - mu) sqrt((s0^2 + sigma_min^2) / (s0^2 + sigma^2))`."""

    def __init__(self, mu, s0, sigma_min=S_MIN, sigma_max=S_MAX):
        super().__init__()
        self.mu, self.s0, self.sigma_min, self.sigma_max = mu, s0, sigma_min, sigma_max

    def forward(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        r = ((self.s0 ** 2 + self.sigma_min ** 2) / (self.s0 ** 2 + s ** 2)).sqrt()
        return self.mu + (x - self.mu) * r[:, None].to(x.dtype)


# ---- the consistency function ------------------------------------------------------------------------------
def test_scalings_meet_the_boundary_and_approach_edm():
    s = torch.tensor([S_MIN, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out = consistency_scalings(s, S_MIN, 0.5)
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    e_skip, e_out, _, _ = edm_precond(s, 0.5)
    torch.testing.assert_close(c_skip[1:], e_skip[1:], rtol=2e-2, atol=0)   # same shape away from sigma_min
    torch.testing.assert_close(c_out[2:], e_out[2:], rtol=1e-4, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_boundary_condition_is_exact_for_any_model(dtype):
    x = torch.randn(5, 3, dtype=dtype) * 4
    mix = GaussianMixture(torch.ones(2), torch.randn(2, 3), 0.3)
    vp = VP()
    models = [
        ConsistencyFunction.from_net(_Net()),                                        # EDM-preconditioned net
        ConsistencyFunction(Denoiser(_Net(), vp, "eps")),                            # a VP eps-network
        ConsistencyFunction(Denoiser(mix.process_model(vp, "v"), vp, "v")),          # a VP v-predictor
        ConsistencyFunction(mix),                                                    # an oracle
    ]
    for f in models:
        assert torch.equal(f(x, S_MIN), x)
        sig = torch.tensor([S_MIN, 1.0, S_MIN, 80.0, 3.0], dtype=torch.float64)     # per-example levels
        out = f(x, sig)
        assert torch.equal(out[[0, 2]], x[[0, 2]]) and out.dtype == dtype
        assert not torch.allclose(out[[1, 3, 4]], x[[1, 3, 4]])                      # a live network elsewhere


def test_from_net_is_song_parametrization():
    net, x, s = _Net(), torch.randn(4, 3, dtype=torch.float64), torch.tensor([0.01, 0.3, 2.0, 70.0]).double()
    c_skip, c_out = consistency_scalings(s, S_MIN, 0.5)
    _, _, c_in, c_noise = edm_precond(s, 0.5)
    want = c_skip[:, None] * x + c_out[:, None] * net(c_in[:, None] * x, c_noise)
    torch.testing.assert_close(ConsistencyFunction.from_net(net)(x, s), want, rtol=1e-10, atol=1e-12)


def test_vp_teacher_gives_the_same_consistency_function_as_the_oracle():
    mix, vp = eight_gaussians(), VP()
    f_vp = ConsistencyFunction(Denoiser(mix.process_model(vp, "eps"), vp, "eps"))
    f_or = ConsistencyFunction(mix)
    x, s = torch.randn(64, 2, dtype=torch.float64) * 3, torch.logspace(-2, 1.5, 64, dtype=torch.float64)
    torch.testing.assert_close(f_vp(x, s), f_or(x, s), rtol=1e-6, atol=1e-6)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="sigma_min"):
        ConsistencyFunction(eight_gaussians(), sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="sigma_data"):
        ConsistencyFunction(eight_gaussians(), sigma_data=0.0)
    with pytest.raises(ValueError, match="distance"):
        get_distance("lpips")
    with pytest.raises(ValueError, match="same shape"):
        l2(torch.zeros(2, 3), torch.zeros(2, 4))


# ---- grids and sampling ------------------------------------------------------------------------------------
def test_karras_sigmas_follow_the_formula():
    n, rho = 18, 7.0
    s = karras_sigmas(n, S_MIN, S_MAX, rho)
    i = torch.arange(n, dtype=torch.float64)
    want = (S_MIN ** (1 / rho) + i / (n - 1) * (S_MAX ** (1 / rho) - S_MIN ** (1 / rho))) ** rho
    assert s.dtype == torch.float64 and s.shape == (n,)
    torch.testing.assert_close(s, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_multistep_levels_stay_within_bounds(steps):
    sig = consistency_sigmas(steps, S_MIN, S_MAX)
    assert sig.shape == (steps,) and sig[0].item() == pytest.approx(S_MAX)
    assert (sig[1:] < sig[:-1]).all() and (sig > S_MIN).all() and (sig <= S_MAX).all()
    f, seen = GaussianFlow(0.0, 1.0), []
    x = sample_consistency(f, torch.randn(100, 2, dtype=torch.float64) * S_MAX, torch.cat([sig, sig.new_zeros(1)]),
                           generator=torch.Generator().manual_seed(0), callback=lambda d: seen.append(d["sigma"]))
    assert len(seen) == steps and all(S_MIN <= float(s) <= S_MAX for s in seen) and torch.isfinite(x).all()


def test_sampling_rejects_levels_out_of_bounds():
    f, x = GaussianFlow(0.0, 1.0), torch.randn(4, 2)
    for bad in ([100.0], [80.0, 0.001], [80.0, 1.0, 2.0], [80.0, float("nan")], [[80.0, 1.0]]):
        with pytest.raises(ValueError, match="sigmas"):
            sample_consistency(f, x, bad)


def test_multistep_sampling_matches_the_closed_form_distribution():
    """With the exact flow map of N(mu, s0^2), every step's output is Gaussian with a known variance:
    v <- (s0^2 + s_min^2) / (s0^2 + s^2) * (v_in), v_in = v + s^2 - s_min^2 (and S_MAX^2 at the start)."""
    mu, s0, n = 1.5, 0.7, 200_000
    f, sig = GaussianFlow(mu, s0), [S_MAX, 2.0, 0.3]
    z = torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = sample_consistency(f, z * S_MAX,
                           sig, generator=torch.Generator().manual_seed(2))
    v = S_MAX ** 2
    for i, s in enumerate(sig):
        v = (v if i == 0 else v + s ** 2 - S_MIN ** 2) * (s0 ** 2 + S_MIN ** 2) / (s0 ** 2 + s ** 2)
    assert abs(x.mean().item() - mu) < 5 * math.sqrt(v / n)
    assert abs(x.var().item() / v - 1) < 5 * math.sqrt(2 / n)


# ---- distances, EMA, schedules -----------------------------------------------------------------------------
def test_distances():
    x, y = torch.zeros(2, 4), torch.tensor([[3.0, 4.0, 0, 0], [0, 0, 0, 0]])
    assert l2(x, y).tolist() == [25.0, 0.0] and l1(x, y).tolist() == [7.0, 0.0]
    c = 0.00054 * 2.0
    torch.testing.assert_close(pseudo_huber(x, y), torch.tensor([math.sqrt(25 + c * c) - c, 0.0]))
    r = torch.full((1, 4), 1e-5, dtype=torch.float64)                          # quadratic near 0: r^2 / (2c)
    torch.testing.assert_close(pseudo_huber(r, 0 * r), l2(r, 0 * r) / (2 * c), rtol=1e-3, atol=0)


def test_ema_update():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    ema_update(a, b, 1.0)
    assert torch.equal(a.weight, wa)
    ema_update(a, b, 0.75)
    torch.testing.assert_close(a.weight.detach(), 0.75 * wa + 0.25 * wb)
    ema_update(a, b, 0.0)
    assert torch.equal(a.weight, b.weight)
    with pytest.raises(ValueError, match="mu"):
        ema_update(a, b, 1.5)


def test_ict_curriculum_doubles_from_10_to_1280():
    K = 8000
    ns = [ict_num_scales(k, K) for k in range(K)]
    assert ns[0] == 11 and ns[-1] == 1281
    assert sorted(set(ns)) == [11, 21, 41, 81, 161, 321, 641, 1281]
    assert all(b >= a for a, b in zip(ns[:-1], ns[1:], strict=True))
    assert ns.index(21) == K // 8                                                   # K' = floor(K / 8)


def test_lognormal_index_probs_are_the_lognormal_mass_between_levels():
    sig = karras_sigmas(41)
    p = lognormal_index_probs(sig, -1.1, 2.0)
    assert p.shape == (40,) and abs(p.sum().item() - 1) < 1e-12 and (p > 0).all()
    g = torch.Generator().manual_seed(0)                                           # Monte Carlo of log-normal sigma
    s = torch.exp(-1.1 + 2.0 * torch.randn(400_000, generator=g, dtype=torch.float64))
    s = s[(s >= sig[0]) & (s <= sig[-1])]
    counts = torch.bincount(torch.searchsorted(sig, s).clamp(1, 40) - 1, minlength=40).double()
    assert (counts / counts.sum() - p).abs().max() < 4e-3


# ---- the losses against exact answers ----------------------------------------------------------------------
def test_cd_loss_vanishes_for_the_exact_consistency_function():
    """The exact flow map of N(mu, s0^2), with its own exact denoiser as teacher, has a CD loss of the order of one
    Heun step's error; a wrong function (the denoiser itself) does not."""
    mu, s0 = 0.5, 0.8
    teacher = GaussianMixture(torch.ones(1), torch.full((1, 2), mu), s0 ** 2)
    exact, g = GaussianFlow(mu, s0), torch.Generator().manual_seed(0)
    x0 = teacher.sample(4096, generator=g)
    sig = karras_sigmas(40)
    loss = cd_loss(exact, exact, teacher, x0, sig, generator=g, distance=l2).mean().item()
    loss_euler = cd_loss(exact, exact, teacher, x0, sig, generator=g, distance=l2, solver="euler").mean().item()
    wrong = cd_loss(ConsistencyFunction(teacher), ConsistencyFunction(teacher), teacher, x0, sig, generator=g,
                    distance=l2).mean().item()
    assert loss < 1e-6 and loss < loss_euler / 20 and wrong > 1e3 * loss, (loss, loss_euler, wrong)


def test_cd_loss_is_the_same_for_a_vp_teacher_and_the_oracle():
    mix, vp = eight_gaussians(), VP()
    teacher_vp = Denoiser(mix.process_model(vp, "eps"), vp, "eps")
    f = ConsistencyFunction.from_net(_Net(2), sigma_data=1.4)
    x0, sig = mix.sample(256, generator=torch.Generator().manual_seed(0)), karras_sigmas(18)
    a = cd_loss(f, f, mix, x0, sig, generator=torch.Generator().manual_seed(1))
    b = cd_loss(f, f, teacher_vp, x0, sig, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_ct_loss_weights_by_the_level_gap():
    """For f = the identity-like exact flow of a point mass at 0, x_i and x_{i+1} share z: f(x_{i+1}) - f(x_i) is
    known in closed form, so the weighted pseudo-Huber loss is too."""
    f = GaussianFlow(0.0, 0.0 + 1e-12)                                              # f*(x, s) = x * s_min / s
    x0, sig = torch.zeros(8, 3, dtype=torch.float64), karras_sigmas(11)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    loss = ct_loss(f, x0, sig, generator=g1, distance=l1)
    torch.multinomial(lognormal_index_probs(sig), 8, replacement=True, generator=g2)  # advance g2 like ct_loss
    z = torch.randn(x0.shape, generator=g2, dtype=torch.float64)
    # f*(x0 + s z, s) = s_min z whatever s: the two outputs agree, the exact loss is 0
    assert loss.abs().max() < 1e-9
    f_lin = lambda x, s: x                                                          # f = id: d = |z|_1 (s_{i+1} - s_i)
    f_lin.sigma_min = S_MIN
    loss = ct_loss(f_lin, x0, sig, generator=torch.Generator().manual_seed(5), distance=l1)
    torch.testing.assert_close(loss, z.abs().sum(1), rtol=1e-9, atol=1e-12)


# ---- distillation end to end -------------------------------------------------------------------------------
@pytest.mark.slow
def test_cd_with_the_oracle_teacher_beats_euler_at_one_step():
    """Eight Gaussians, exact oracle teacher, a small MLP student, 400 steps: the loss falls, and 1-step CD samples
    are within 3x the exact-vs-exact sliced-W2 floor while 1-step Euler (all mass at the data mean) is far off."""
    from unifusion.metrics import sliced_wasserstein
    from unifusion.nets import MLP
    from unifusion.samplers import sample_euler

    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                                       # a tiny MLP: 1 thread is fastest
    try:
        _distill_and_compare(copy, sliced_wasserstein, MLP, sample_euler)
    finally:
        torch.set_num_threads(threads)


def _distill_and_compare(copy, sliced_wasserstein, MLP, sample_euler):
    torch.manual_seed(0)
    g, mix, sd = torch.Generator().manual_seed(0), eight_gaussians(), 1.418
    f = ConsistencyFunction.from_net(MLP(2, hidden=96, depth=3), sigma_data=sd)
    f_target = copy.deepcopy(f).requires_grad_(False)
    sig, opt, losses = karras_sigmas(18), torch.optim.Adam(f.parameters(), lr=3e-3), []
    for _ in range(400):
        loss = cd_loss(f, f_target, mix, mix.sample(256, generator=g, dtype=torch.float32), sig, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(f_target, f, 0.9)
        losses.append(loss.item())
    assert sum(losses[-50:]) < 0.5 * sum(losses[:50])
    n, gm = 4000, torch.Generator().manual_seed(1)
    ref, ref2 = mix.sample(n, generator=g), mix.sample(n, generator=g)
    floor = sliced_wasserstein(ref, ref2, generator=gm)
    z = torch.randn(n, 2, generator=g) * S_MAX
    sw_cd = sliced_wasserstein(sample_consistency(f_target, z, [S_MAX]).double(), ref, generator=gm)
    sw_euler = sliced_wasserstein(sample_euler(mix, z, torch.tensor([S_MAX, 0.0])).double(), ref, generator=gm)
    assert sw_cd < 3 * floor and sw_cd < 0.25 * sw_euler, (sw_cd, floor, sw_euler)


# ---- `unifusion distill`: the training loop's checkpoints, resume and sampling --------------------------------
_TINY = ["train.progress=false", "train.threads=1", "train.batch_size=64", "train.log_every=0", "consistency.N=8"]


@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory):
    """A tiny EDM model of eight Gaussians trained for a few steps by `unifusion train`'s machinery."""
    from unifusion.train import load_config, train_from_config
    out = tmp_path_factory.mktemp("teacher")
    cfg = load_config("toy_ve", ["data.n=512", "net.hidden=32", "net.depth=1", "net.emb_dim=16", "train.steps=5",
                                 "train.progress=false", "train.threads=1", "train.batch_size=64", "train.log_every=0"])
    return train_from_config(cfg, out=out).checkpoint


def _weights(path):
    from unifusion.train import read_checkpoint
    tensors, _ = read_checkpoint(path)
    return tensors


def test_distill_cli_trains_resumes_bit_exactly_and_samples(toy_teacher, tmp_path):
    from unifusion.cli import main as unifusion_main
    from unifusion.consistency.cli import load_consistency, main

    a, b = tmp_path / "a", tmp_path / "b"
    tiny = [arg for s in _TINY for arg in ("--set", s)]
    assert main([str(toy_teacher), "--out", str(a), "--set", "train.steps=6", *tiny]) == 0
    assert main([str(toy_teacher), "--out", str(b), "--set", "train.steps=3", *tiny]) == 0
    assert main([str(toy_teacher), "--out", str(b), "--resume", "--set", "train.steps=6",
                 *sum([["--set", s] for s in _TINY], [])]) == 0
    wa, wb = _weights(a / "checkpoint.safetensors"), _weights(b / "checkpoint.safetensors")
    assert any(k.startswith("task.target.") for k in wa) and int(wa["task.step"]) == 6
    assert wa.keys() == wb.keys()
    for k in wa:                                                    # student, EMA, target, optimiser: bit-exact
        assert torch.equal(wa[k], wb[k]), k
    import yaml
    assert "loss" not in yaml.safe_load((a / "config.yaml").read_text())   # the saved config has no unused loss
    f, shape = load_consistency(a)
    x = torch.randn(7, *shape)
    assert shape == (2,) and torch.equal(f(x, f.sigma_min), x)
    assert unifusion_main(["sample", str(a), "--sampler", "consistency", "--steps", "2", "--n", "20"]) == 0
    assert (a / "samples_consistency_2nfe.npz").exists()
    assert unifusion_main(["sample", str(a), "--sampler", "consistency", "--sigmas", "80,0.56,0.1", "--n", "20"]) == 0
    assert (a / "samples_consistency_3nfe.npz").exists()  # the user's levels, one evaluation each


def test_distill_cli_consistency_training_and_errors(toy_teacher, tmp_path, capsys):
    from unifusion.consistency.cli import load_consistency, main
    sets = sum([["--set", s] for s in _TINY + ["data.n=512", "net.hidden=32", "net.depth=1", "train.steps=4"]], [])
    assert main(["--ct", "toy_ve", "--out", str(tmp_path / "ct"), *sets]) == 0
    f, _ = load_consistency(tmp_path / "ct")
    assert f.config["consistency"]["mode"] == "ct" and f.config["consistency"]["distance"] is None
    capsys.readouterr()
    for argv in ([str(toy_teacher), "--set", "consistency.bogus=1"], [str(toy_teacher), "--ct", "toy_ve"], [],
                 [str(tmp_path / "missing.safetensors")], [str(toy_teacher), "--set", "consistency.distance=lpips"]):
        assert main(argv + ["--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("unifusion distill: error:"), err
    with pytest.raises(ValueError, match="not a `unifusion distill` checkpoint"):
        load_consistency(toy_teacher)
    with pytest.raises(ValueError, match="target"):
        load_consistency(tmp_path / "ct", weights="target")
    assert not (tmp_path / "bad").exists()


def test_distillation_inherits_the_teacher_training_settings(toy_teacher):
    """CD takes the teacher's training settings (lr, batch, warm-up, seed, ...), as CT takes its config's, with the
    distill defaults of steps / EMA / logging on top and `--set` over all; the config has no unused `loss`."""
    from unifusion.consistency.task import TRAIN_DEFAULTS, distill_config
    from unifusion.train import read_checkpoint
    teacher = read_checkpoint(toy_teacher)[1]["config"]
    cfg = distill_config(teacher=toy_teacher, sets=["train.lr=3e-4"])
    for k, v in teacher["train"].items():
        expect = 3e-4 if k == "lr" else TRAIN_DEFAULTS.get(k, v)
        assert cfg["train"][k] == expect, k
    assert teacher["train"]["lr"] != 3e-4 and cfg["train"]["batch_size"] == teacher["train"]["batch_size"] == 64
    assert cfg["seed"] == teacher["seed"] and "loss" not in cfg
    ct = distill_config(__import__("unifusion.train", fromlist=["load_config"]).load_config("toy_ve"))
    assert "loss" not in ct and ct["train"]["lr"] == 2e-3
