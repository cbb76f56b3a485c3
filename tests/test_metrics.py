"""Metrics against exact answers: optimal transport LPs and Gaussian closed forms, the shipped digits classifier
on the real test split, and the digits report on inputs whose verdict is known (real unseen digits, copies of
training digits, noise)."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch

from unifusion import eight_gaussians
from unifusion.data.digits import load_digits
from unifusion.metrics import (CLASSIFIER_PATH, DigitsClassifier, class_count_weights, confident_fraction,
                               copy_fraction, digits_fd, digits_report, fd_floor, frechet_distance,
                               frechet_distance_from_stats, gaussian_stats, median_bandwidth, mmd,
                               nearest_neighbour_ratio, sliced_wasserstein, vector_floor, vector_report)

ROOT = Path(__file__).resolve().parents[1]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- sliced Wasserstein

def w2_squared_lp(a: np.ndarray, b: np.ndarray) -> float:
    """Squared W2 between two 1-D empirical measures by solving the transport linear program (no sorting)."""
    n, m = len(a), len(b)
    cost = (a[:, None] - b[None, :]) ** 2
    rows = np.kron(np.eye(n), np.ones((1, m)))
    cols = np.kron(np.ones((1, n)), np.eye(m))
    res = scipy.optimize.linprog(cost.ravel(), A_eq=np.vstack([rows, cols]),
                                 b_eq=np.concatenate([np.full(n, 1 / n), np.full(m, 1 / m)]), bounds=(0, None))
    return res.fun


@pytest.mark.parametrize("n,m", [(7, 5), (6, 9), (8, 8), (1, 4)])
def test_sw2_in_one_dimension_is_the_exact_w2_of_the_transport_lp(n, m):
    g = gen(n * 10 + m)
    a, b = torch.randn(n, 1, generator=g, dtype=torch.float64), 2 + torch.randn(m, 1, generator=g, dtype=torch.float64)
    sw = sliced_wasserstein(a, b, n_projections=3, generator=g)  # in 1-D every direction is +-1
    assert sw ** 2 == pytest.approx(w2_squared_lp(a[:, 0].numpy(), b[:, 0].numpy()), rel=1e-7, abs=1e-12)


def test_sw2_of_repeated_and_shifted_samples_is_exact():
    x = torch.randn(50, 1, generator=gen(1), dtype=torch.float64)
    assert sliced_wasserstein(x, x.repeat(3, 1)) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(x, x.repeat(2, 1) + 0.7) == pytest.approx(0.7, rel=1e-12)


def test_sw2_matches_the_gaussian_closed_form():
    # theta . x ~ N(theta . mu, s^2) for isotropic Gaussians: W2^2 = (theta . dmu)^2 + (s1 - s2)^2, and the mean of
    # (theta . dmu)^2 over the sphere is |dmu|^2 / d.
    d, g = 3, gen(2)
    mu = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    x = 0.5 * torch.randn(4000, d, generator=g, dtype=torch.float64)
    y = mu + 1.5 * torch.randn(3000, d, generator=g, dtype=torch.float64)
    exact = math.sqrt(mu.square().sum().item() / d + (1.5 - 0.5) ** 2)
    assert sliced_wasserstein(x, y, n_projections=1000, generator=g) == pytest.approx(exact, rel=0.03)


def test_sw2_projections_come_from_the_generator_and_input_is_checked():
    x, y = torch.randn(40, 5, generator=gen(3)), torch.randn(30, 5, generator=gen(4))
    assert sliced_wasserstein(x, y, 16, gen(7)) == sliced_wasserstein(x, y, 16, gen(7))
    assert sliced_wasserstein(x, y, 16, gen(7)) != sliced_wasserstein(x, y, 16, gen(8))
    with pytest.raises(ValueError, match="same dimension"):
        sliced_wasserstein(x, y[:, :4])
    with pytest.raises(ValueError, match="NaN"):
        sliced_wasserstein(x, torch.full((3, 5), float("nan")))
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(x, y, n_projections=0)
    with pytest.raises(ValueError, match=r"shape \[N, d\]"):
        sliced_wasserstein(x[0], y)


# ---------------------------------------------------------------- MMD

def rbf_expectation(dmu: torch.Tensor, var: float, h: float) -> float:
    """E exp(-|z|^2 / (2 h^2)) for z ~ N(dmu, var I_d)."""
    d = dmu.numel()
    return (h * h / (h * h + var)) ** (d / 2) * math.exp(-dmu.square().sum().item() / (2 * (h * h + var)))


@pytest.mark.parametrize("kernel,factors", [("rbf", (1.0,)), ("multiscale", (0.2, 0.5, 1.0, 2.0, 5.0))])
def test_mmd_matches_the_gaussian_closed_form(kernel, factors):
    d, s1, s2, h, g = 2, 1.0, 1.5, 1.5, gen(5)
    mu = torch.tensor([1.2, 0.0], dtype=torch.float64)
    zero = torch.zeros(d, dtype=torch.float64)
    exact = np.mean([rbf_expectation(zero, 2 * s1 ** 2, f * h) + rbf_expectation(zero, 2 * s2 ** 2, f * h)
                     - 2 * rbf_expectation(mu, s1 ** 2 + s2 ** 2, f * h) for f in factors])
    draw = lambda n, s, m=0.0: m + s * torch.randn(n, d, generator=g, dtype=torch.float64)
    est = [mmd(draw(500, s1), draw(400, s2, mu), kernel, bandwidth=h) for _ in range(20)]
    same = [mmd(draw(500, s1), draw(400, s1), kernel, bandwidth=h) for _ in range(20)]
    assert np.mean(est) == pytest.approx(exact, rel=0.1)  # the mean's spread is about 3% here
    assert abs(np.mean(same)) < 0.05 * exact  # unbiased: centred on 0 when the distributions agree


def test_mmd_is_the_unbiased_estimator_and_median_heuristic_is_the_median():
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [2.0]])
    k = lambda r: math.exp(-r * r / 2)
    by_hand = k(1) + k(2) - 2 * (k(0) + k(2) + k(1) + k(1)) / 4  # off-diagonal means for x and y, full mean across
    assert mmd(x, y, bandwidth=1.0) == pytest.approx(by_hand, rel=1e-12)
    assert median_bandwidth(torch.tensor([[0.0], [1.0], [3.0]])) == pytest.approx(2.0)  # distances 1, 3, 2
    assert mmd(x, y) == pytest.approx(mmd(x, y, bandwidth=median_bandwidth(torch.cat([x, y]))))
    with pytest.raises(ValueError, match="kernel"):
        mmd(x, y, kernel="laplace")
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(x, y, bandwidth=-1.0)
    with pytest.raises(ValueError, match="at least 2"):
        mmd(x[:1], y)


def test_vector_report_and_its_floor():
    o, g = eight_gaussians(), gen(6)
    ref = o.sample(1000, generator=g)
    floor = vector_floor(o, ref, 500, generator=g)
    good = vector_report(o.sample(500, generator=g), ref, generator=g)
    bad = vector_report(o.sample(500, generator=g) * 1.2, ref, generator=g)
    assert good["bandwidth"] == floor["bandwidth"] == pytest.approx(median_bandwidth(ref))
    assert floor["repeats"] == 5 and floor["sw2_std"] > 0 and floor["n"] == 500
    assert good["sw2"] < 2 * floor["sw2"] + 0.02 and good["mmd"] < 5e-3
    assert bad["sw2"] > 1.5 * floor["sw2"] and bad["mmd"] > 10 * abs(floor["mmd"])
    with pytest.raises(ValueError, match="same dimension"):
        vector_report(torch.zeros(5, 3), ref)


# ---------------------------------------------------------------- Frechet distance

def fd_scipy(mu1, c1, mu2, c2) -> float:
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    a = rng.normal(size=(4, 4))
    c = a @ a.T + 0.1 * np.eye(4)
    assert frechet_distance_from_stats(mu1, c, mu2, c) == pytest.approx(((mu1 - mu2) ** 2).sum(), rel=1e-9)
    d1, d2 = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 4)  # commuting: sum (sqrt a - sqrt b)^2
    assert frechet_distance_from_stats(mu1, np.diag(d1), mu1, np.diag(d2)) == pytest.approx(
        ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum(), rel=1e-9)
    b = rng.normal(size=(4, 4))
    c2 = b @ b.T + 0.1 * np.eye(4)
    assert frechet_distance_from_stats(mu1, c, mu2, c2) == pytest.approx(fd_scipy(mu1, c, mu2, c2), rel=1e-8)
    sing1, sing2 = np.diag([1.0, 0.0, 0.0]), np.diag([4.0, 0.0, 0.0])  # singular: still (1 - 2)^2
    assert frechet_distance_from_stats(np.zeros(3), sing1, np.zeros(3), sing2) == pytest.approx(1.0, rel=1e-9)
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance_from_stats(mu1, c, mu2[:3], c2)


def test_frechet_distance_of_samples_converges_to_the_closed_form():
    g = gen(9)
    L1 = torch.tensor([[1.0, 0, 0], [0.5, 1.0, 0], [0.2, -0.3, 0.7]], dtype=torch.float64)
    L2 = torch.tensor([[0.8, 0, 0], [-0.4, 1.2, 0], [0.1, 0.3, 1.0]], dtype=torch.float64)
    mu = torch.tensor([0.5, 0.0, -1.0], dtype=torch.float64)
    x = torch.randn(40000, 3, generator=g, dtype=torch.float64) @ L1.T
    y = mu + torch.randn(40000, 3, generator=g, dtype=torch.float64) @ L2.T
    exact = fd_scipy(np.zeros(3), (L1 @ L1.T).numpy(), mu.numpy(), (L2 @ L2.T).numpy())
    assert frechet_distance(x, y) == pytest.approx(exact, rel=0.03)
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(x[:1], y)


def test_fd_floor_extrapolation_predicts_fresh_real_draws():
    """The 1/n fit from a pool of 360 real digits predicts the FD of 600 fresh real digits (measured directly on a
    larger disjoint pool), where resampling the 360 with replacement would overshoot."""
    x, _ = load_digits("train")
    feats = DigitsClassifier.load().features(x).double()
    perm = torch.randperm(feats.shape[0], generator=gen(0))
    ref, pool = gaussian_stats(feats[perm[:718]]), feats[perm[718:]]
    direct, _ = fd_floor(pool, ref, 600, repeats=20, generator=gen(1))
    fitted, std = fd_floor(pool[:360], ref, 600, repeats=10, generator=gen(2))
    resampled = [pool[:360][torch.randint(360, (600,), generator=gen(i))] for i in range(5)]
    boot = np.mean([frechet_distance_from_stats(*gaussian_stats(r), *ref) for r in resampled])
    assert fitted == pytest.approx(direct, rel=0.15)
    assert boot > 1.3 * direct


def test_frequency_weights_equal_repeated_rows_and_class_draws_have_multinomial_counts():
    f = torch.randn(30, 4, generator=gen(0), dtype=torch.float64)
    w = torch.randint(0, 4, (30,), generator=gen(1)).double()
    mu, cov = gaussian_stats(torch.repeat_interleave(f, w.long(), dim=0))
    mu_w, cov_w = gaussian_stats(f, w)
    assert torch.allclose(mu_w, mu) and torch.allclose(cov_w, cov)
    labels, probs = torch.arange(60) % 3, torch.tensor([0.5, 0.3, 0.2])
    counts = []
    for i in range(400):
        w = class_count_weights(labels, probs, 45, gen(i))
        per_class = torch.stack([w[labels == k].sum() for k in range(3)])
        assert float(w.sum()) == pytest.approx(45) and ((w == 0) | (w == 1) | (w > 1)).all()
        counts.append(per_class)
    counts = torch.stack(counts)
    assert torch.allclose(counts.mean(0), 45 * probs.double(), rtol=0.03)                      # Multinomial mean
    assert torch.allclose(counts.var(0), 45 * probs.double() * (1 - probs.double()), rtol=0.2)  # and variance
    with pytest.raises(ValueError, match="weights must be"):
        gaussian_stats(f, torch.ones(29))
    with pytest.raises(ValueError, match="class_probs"):
        class_count_weights(labels, torch.tensor([0.5, 0.6]), 10)
    with pytest.raises(ValueError, match="no points"):
        class_count_weights(labels, torch.tensor([0.25, 0.25, 0.25, 0.25]), 10)
    with pytest.raises(ValueError, match="together"):
        fd_floor(f, gaussian_stats(f), 10, labels=labels[:30])


def test_class_count_floor_of_a_stratified_pool_matches_iid_draws_of_a_mixture():
    """Data: 10 well-separated Gaussian classes (exact mixture mean and covariance as the reference). Stratified pools
    of 360 (36 per class, like the digits test split) score well below i.i.d. draws of 360; the same pools with
    i.i.d. class counts (`fd_floor` with labels) match the i.i.d. draws."""
    d, K, per = 6, 10, 36
    means = 2.0 * torch.randn(K, d, generator=gen(0), dtype=torch.float64)
    probs = torch.full((K,), 1.0 / K, dtype=torch.float64)
    mix_mean = means.mean(0)
    mix_cov = torch.eye(d, dtype=torch.float64) + (means - mix_mean).T @ (means - mix_mean) / K
    ref = (mix_mean, mix_cov)
    g = gen(1)
    draw = lambda labels: means[labels] + torch.randn(labels.numel(), d, generator=g, dtype=torch.float64)
    iid = np.mean([frechet_distance_from_stats(*gaussian_stats(draw(torch.multinomial(probs, 360, True, generator=g))),
                                               *ref) for _ in range(300)])
    strat, corrected = [], []
    labels = torch.arange(K).repeat_interleave(per)
    for i in range(30):
        pool = draw(labels)
        strat.append(fd_floor(pool, ref, 360, 1, gen(i))[0])
        corrected.append(fd_floor(pool, ref, 360, 20, gen(i), labels, probs)[0])
    assert np.mean(strat) < 0.75 * iid
    assert np.mean(corrected) == pytest.approx(iid, rel=0.1)


# ---------------------------------------------------------------- digits classifier and report

def test_shipped_classifier_loads_cached_and_reaches_its_stated_test_accuracy():
    clf = DigitsClassifier.load()
    assert clf is DigitsClassifier.load() and not clf.training
    assert CLASSIFIER_PATH.stat().st_size < 1_000_000
    meta = json.loads(CLASSIFIER_PATH.with_suffix(".json").read_text())
    x, y = load_digits("test")
    with torch.no_grad():
        acc = (clf(x).argmax(1) == y).double().mean().item()
    assert acc >= 0.985
    assert acc == pytest.approx(meta["test_accuracy"], abs=1 / 360)


def test_training_script_runs_and_its_weights_load(tmp_path):
    spec = importlib.util.spec_from_file_location("train_clf", ROOT / "scripts" / "train_digits_classifier.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--steps", "3", "--batch", "16", "--out", str(tmp_path / "clf")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.json", "clf.safetensors"]
    clf = DigitsClassifier.load(tmp_path / "clf.safetensors")
    assert clf(torch.zeros(2, 64)).shape == (2, 10)
    assert json.loads((tmp_path / "clf.json").read_text())["train"]["steps"] == 3
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "clf.safetensors").read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot load"):
        DigitsClassifier.load(tmp_path / "bad.safetensors")


def test_real_unseen_digits_score_the_floor():
    x, _ = load_digits("test")
    r = digits_report(x)
    assert r["n"] == 360 and r["fd"] == pytest.approx(r["fd_floor"]) and r["fd_ratio"] == pytest.approx(1.0)
    assert r["fd_floor_iid"] > 1.2 * r["fd_floor"]  # the stratified split lacks the class-count noise of i.i.d. draws
    assert r["fd_ratio_iid"] == pytest.approx(r["fd"] / r["fd_floor_iid"]) and r["fd_floor_iid_std"] > 0
    assert r["fd_count"] == 360 and r["fd_all"] == pytest.approx(r["fd"])
    half = digits_report(x[:180])  # below 360: the floor averages test subsets of 180
    assert half["fd_count"] == 180 and half["fd_floor_std"] > 0 and 0.7 < half["fd_ratio"] < 1.5
    assert r["nn_ratio"] == pytest.approx(1.0) and r["copy_fraction"] == 0.0 and not r["memorization"]
    assert r["confident_fraction"] == pytest.approx(r["confident_fraction_floor"])
    assert r["confident_fraction"] > 0.9
    assert digits_report(x.reshape(-1, 1, 8, 8)) == r


def test_copies_of_training_digits_are_flagged_and_noise_scores_badly():
    x_tr, _ = load_digits("train")
    copies = digits_report(x_tr[:400])
    assert copies["memorization"] and copies["nn_ratio"] == 0.0 and copies["copy_fraction"] == 1.0
    assert nearest_neighbour_ratio(x_tr[:50]) == 0.0 and copy_fraction(x_tr[:50]) == 1.0
    noise = torch.rand(500, 64, generator=gen(3)) * 2 - 1
    r = digits_report(noise)
    assert r["fd_ratio"] > 20 and r["confident_fraction"] < 0.3 and r["nn_ratio"] > 2 and not r["memorization"]
    assert digits_fd(noise) == pytest.approx(r["fd"]) and confident_fraction(noise) == r["confident_fraction"]
    assert r["fd_count"] == 360 and r["fd_all_floor"] >= 0 and r["fd_all_floor_std"] > 0  # 500 > 360: 1/n fit


def test_digits_input_is_checked():
    with pytest.raises(ValueError, match=r"\[N, 64\] or \[N, 1, 8, 8\]"):
        digits_fd(torch.zeros(10, 63))
    with pytest.raises(ValueError, match="NaN"):
        confident_fraction(torch.full((4, 64), float("nan")))
    with pytest.raises(ValueError, match="threshold"):
        confident_fraction(torch.zeros(4, 64), threshold=1.5)
    with pytest.raises(ValueError, match="n must be in"):
        digits_report(torch.zeros(10, 64), n=11)
