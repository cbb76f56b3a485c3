"""The claims that need trained models, on scikit-learn's 8x8 digits (`common.Budget` sets the size).

`train_models` trains the four output parametrizations of `common.TARGET_SETS` over `budget.seeds` seeds; the
claims then take those models:

2b. `targets_same_fd`: eps-, x0-, v- and EDM-preconditioned networks reach the same FD within the seed spread.
5.  `denoiser_error_vs_sigma`: the trained denoiser's MSE against sigma on unseen digits, beside the exact optimal
    denoiser of the training set (`oracles.EmpiricalData`) and the best linear (Gaussian, Wiener) denoiser.
6.  `consistency_distillation`: consistency distillation of the EDM model (Song et al. 2023) in 1 and 2 steps
    against its teacher and 1-step Euler, in classifier features and in raw pixels.
7.  `likelihoods`: PF-ODE bits/dim of the VP (eps) and EDM models on the test split (`unifusion.nll`), against a
    full-covariance Gaussian fitted to the training digits, with the machinery checked on an exact oracle.

Every model's FD is shown with its copy fraction; a model whose copy fraction exceeds `common.MEMORIZING` is
flagged as memorizing and cannot pass a claim.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from .common import Budget, ClaimResult, MEMORIZING, TARGET_SETS, digits_config, sample_digits, score_samples, \
    train_configs

__all__ = ["train_models", "targets_same_fd", "denoiser_error_vs_sigma", "consistency_distillation", "likelihoods",
           "gaussian_baseline_nll"]


def train_models(out: Path, budget: Budget) -> dict:
    """Train `TARGET_SETS` x `budget.seeds` digits models under `out/models/`; returns
    `{target: [(checkpoint, seconds) per seed]}`."""
    cfgs = {f"{t}_seed{s}": digits_config(t, s, budget) for s in range(budget.seeds) for t in TARGET_SETS}
    done = train_configs(cfgs, Path(out) / "models", budget.workers)
    return {t: [done[f"{t}_seed{s}"] for s in range(budget.seeds)] for t in TARGET_SETS}


def _model_row(name: str, nfe, sc: dict, extra: str = "") -> str:
    flag = " **memorizing**" if sc["memorizing"] else ""
    return (f"| {name} | {nfe} | {sc['fd']:.2f} | {sc['pixel_fd']:.2f} | {sc['copy_fraction']:.3f}{flag} |"
            + (f" {extra} |" if extra else ""))


def targets_same_fd(trained: dict, out: Path, budget: Budget, seed: int = 0) -> ClaimResult:
    """Claim 2b. Every model samples `budget.n` digits with the same sampler on the same grid: EDM's Heun on 18
    levels from sigma 80 to 0.002 (35 NFE; the VP-SDE's own range would start at 152, beyond what the log-normal
    training distribution covers). PASS: no model memorizes, and every target's mean FD lies within 2 pooled seed
    standard deviations of the mean over targets."""
    from ..plots import save_groups, save_image_grid
    from ..train import load_model

    t0 = time.perf_counter()
    scores, figures = {}, []
    for target, runs in trained.items():
        scores[target] = []
        for k, (ckpt, _) in enumerate(runs):
            x, nfe, _ = sample_digits(load_model(ckpt), budget.n, seed, sigma_min=0.002, sigma_max=80.0)
            scores[target].append(score_samples(x))
            if k == 0:
                figures.append(save_image_grid(x[:64].reshape(-1, 1, 8, 8), Path(out) / f"claim2_{target}.png",
                                               title=f"{target} (seed 0)"))
    fds = {t: np.array([s["fd"] for s in v]) for t, v in scores.items()}
    means = {t: float(v.mean()) for t, v in fds.items()}
    pooled = float(np.sqrt(np.mean([v.var(ddof=1) for v in fds.values()]))) if budget.seeds > 1 else float("nan")
    grand = float(np.mean(list(means.values())))
    spread = max(abs(m - grand) for m in means.values())
    memorizing = [t for t, v in scores.items() if any(s["memorizing"] for s in v)]
    passed = not memorizing and spread <= 2 * pooled
    figures.insert(0, save_groups({t: v for t, v in fds.items()}, Path(out) / "claim2_fd_by_target.png",
                                  ylabel="digits FD (classifier features)", title=f"{budget.seeds} seeds per target"))
    table = ["| target | FD per seed | mean +- sd | pixel FD (mean) | copy fraction (max) |",
             "|---|---|---:|---:|---:|"]
    for t, v in scores.items():
        cf = max(s["copy_fraction"] for s in v)
        per_seed = ", ".join(f"{f:.2f}" for f in fds[t])
        table.append(f"| {t} | {per_seed} | {means[t]:.2f} +- {fds[t].std(ddof=1):.2f} | "
                     f"{np.mean([s['pixel_fd'] for s in v]):.2f} | {cf:.3f}"
                     f"{' **memorizing**' if cf > MEMORIZING else ''} |")
    return ClaimResult(
        "2b", "networks trained on noise, clean-data, velocity and EDM-preconditioned targets reach the same FD",
        f"no model memorizes (copy fraction <= {MEMORIZING}); every target's mean FD within 2 pooled seed sd of "
        "the mean over targets", passed,
        f"means {', '.join(f'{t} {m:.2f}' for t, m in means.items())}; largest distance from their mean "
        f"{spread:.2f} vs 2 x pooled seed sd {2 * pooled:.2f}" + (f"; memorizing: {memorizing}" if memorizing else ""),
        table, figures, time.perf_counter() - t0, {"scores": scores})


@torch.no_grad()
def denoiser_error_vs_sigma(model, out: Path, sigmas=None, seed: int = 0, label: str = "trained") -> ClaimResult:
    """Claim 5: per-pixel MSE of `D(x0 + sigma eps, sigma)` on the 360 test digits against sigma, for the trained
    model, the exact optimal denoiser of the training split (`EmpiricalData`) on the same noisy test digits and on
    noisy training digits, and the best linear denoiser (the Wiener filter of the training mean and covariance,
    optimal for Gaussian data: an upper bound on the optimal denoiser's error). PASS: the trained denoiser's
    error rises with sigma (Spearman >= 0.9), is good at the smallest sigma (MSE <= 0.05 x the data variance) and
    poor at the largest (MSE >= 0.5 x the data variance)."""
    from ..data import load_digits
    from ..oracles import EmpiricalData
    from ..plots import save_metric_vs_steps

    t0 = time.perf_counter()
    sigmas = sigmas if sigmas is not None else np.geomspace(0.005, 80.0, 13)
    x_tr, x_te = load_digits("train")[0].double(), load_digits("test")[0].double()
    mu, cov = x_tr.mean(0), torch.cov(x_tr.T)
    lam, U = torch.linalg.eigh(cov)
    var = float(lam.sum() / 64)
    oracle = EmpiricalData(x_tr)
    g = torch.Generator().manual_seed(seed)
    curves = {label: [], "optimal for the training set, on test digits": [],
              "optimal for the training set, on training digits": [], "best linear (Gaussian) denoiser": []}
    for s in sigmas:
        eps = torch.randn(x_te.shape, generator=g, dtype=torch.float64)
        y = x_te + s * eps
        wiener = mu + ((y - mu) @ U) * (lam / (lam + s ** 2)) @ U.T
        y_tr = x_tr[:360] + s * torch.randn(360, 64, generator=g, dtype=torch.float64)
        est = {label: model(y.float(), torch.full((360,), float(s))).double(),
               "optimal for the training set, on test digits": oracle(y, s),
               "best linear (Gaussian) denoiser": wiener}
        for k, v in est.items():
            curves[k].append((s, float((v - x_te).pow(2).mean())))
        curves["optimal for the training set, on training digits"].append(
            (s, max(float((oracle(y_tr, s) - x_tr[:360]).pow(2).mean()), 1e-12)))
    fig = save_metric_vs_steps(curves, Path(out) / "claim5_denoiser_mse.png", floor={"data variance": var},
                               ylabel="MSE per pixel", xlabel="sigma", logx=True, logy=True,
                               title="denoising unseen digits")
    mse = np.array([v for _, v in curves[label]])
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    rho = float(np.corrcoef(rank(np.asarray(sigmas)), rank(mse))[0, 1])
    passed = rho >= 0.9 and mse[0] <= 0.05 * var and mse[-1] >= 0.5 * var
    names = list(curves)
    table = ["| sigma | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    table += [f"| {s:.3g} | " + " | ".join(f"{curves[k][i][1]:.3g}" for k in names) + " |"
              for i, s in enumerate(sigmas)]
    return ClaimResult(
        "5", "the denoiser is good at small sigma and poor at large sigma",
        "trained denoiser's MSE rises with sigma (Spearman >= 0.9), <= 0.05 x data variance at the smallest sigma, "
        ">= 0.5 x at the largest", passed,
        f"MSE {mse[0]:.2g} at sigma {sigmas[0]:.3g} ({mse[0] / var:.1e} x variance) -> {mse[-1]:.3g} at sigma "
        f"{sigmas[-1]:.3g} ({mse[-1] / var:.2f} x); Spearman {rho:.2f}", table, [fig], time.perf_counter() - t0)


def consistency_distillation(teacher_ckpt, out: Path, budget: Budget, seed: int = 0) -> ClaimResult:
    """Claim 6: distil the teacher (`unifusion distill`'s machinery: N = 18 levels, EMA target mu = 0.95, L2, Heun
    teacher step, as the demo) for `budget.cd_steps` steps, sample 1 step and 2 steps (the intermediate level
    picked on a validation draw, `consistency.demo`), and compare with the teacher's Heun (35 NFE) and 1-step Euler.
    PASS: 1-step CD FD <= 1.5 x the teacher's and 2-step <= 1.2 x, in classifier features and in raw pixels;
    1-step CD beats 1-step Euler; the student does not memorize."""
    from ..consistency import consistency_sigmas, distill_config, distill_from_config, load_consistency
    from ..consistency import sample_consistency
    from ..consistency.demo import _two_step_sigma
    from ..plots import save_groups, save_image_grid
    from ..train import load_model

    t0 = time.perf_counter()
    cfg = distill_config(teacher=teacher_ckpt, sets=[
        f"seed={seed}", f"train.steps={budget.cd_steps}", "train.progress=false", "train.threads=1", "train.lr=5e-4",
        "train.batch_size=256", "train.warmup=0", "train.ckpt_every=0",
        f"train.log_every={max(1, budget.cd_steps // 10)}",
        "consistency.N=18", "consistency.mu=0.95"])
    cd_dir = Path(out) / "models" / "consistency"
    (cd_dir / "checkpoint.safetensors").unlink(missing_ok=True)
    t_cd = time.perf_counter()
    distill_from_config(cfg, out=cd_dir)
    t_cd = time.perf_counter() - t_cd
    f, shape = load_consistency(cd_dir)
    teacher = load_model(teacher_ckpt)
    rows = {}
    x, nfe, _ = sample_digits(teacher, budget.n, seed)
    rows["teacher, Heun"] = (x, nfe)
    x, nfe, _ = sample_digits(teacher, budget.n, seed, sampler="euler", steps=1)
    rows["teacher, Euler 1 step"] = (x, nfe)
    s2 = _two_step_sigma(f, shape, budget.n, seed)
    for k, sig in ((1, consistency_sigmas(1, f.sigma_min, f.sigma_max)),
                   (2, torch.tensor([f.sigma_max, s2], dtype=torch.float64))):
        g = torch.Generator().manual_seed(seed)
        x = sample_consistency(f, torch.randn((budget.n, *shape), generator=g) * f.sigma_max, sig, generator=g)
        rows[f"consistency, {k} step{'s' if k > 1 else ''}"] = (x, k)
    scores = {k: score_samples(x) for k, (x, _) in rows.items()}
    figures = [save_image_grid(x[:64].reshape(-1, 1, 8, 8), Path(out) / f"claim6_{i}.png", title=k)
               for i, (k, (x, _)) in enumerate(rows.items())]
    te = scores["teacher, Heun"]
    ratio = {k: (s["fd"] / te["fd"], s["pixel_fd"] / te["pixel_fd"]) for k, s in scores.items()}
    one, two = ratio["consistency, 1 step"], ratio["consistency, 2 steps"]
    copies = any(scores[k]["memorizing"] for k in rows if "consistency" in k)
    passed = (max(one) <= 1.5 and max(two) <= 1.2 and not copies
              and scores["consistency, 1 step"]["fd"] < scores["teacher, Euler 1 step"]["fd"])
    figures.insert(0, save_groups({k: [r[0]] for k, r in ratio.items()}, Path(out) / "claim6_fd_ratio.png",
                                  ylabel="FD / teacher's FD (features)", title="consistency distillation",
                                  lines={"1.5 x teacher": 1.5, "1.2 x teacher": 1.2}))
    table = ["| model | NFE | FD | pixel FD | copy fraction | x teacher (features, pixels) |",
             "|---|---:|---:|---:|---:|---:|"]
    table += [_model_row(k, rows[k][1], s, f"{ratio[k][0]:.2f}, {ratio[k][1]:.2f}") for k, s in scores.items()]
    return ClaimResult(
        "6", "consistency models: 1-step CD beats 1-step Euler and nears the teacher; 2 steps closer still",
        "1-step CD <= 1.5 x teacher FD and 2-step <= 1.2 x, in classifier features and raw pixels; 1-step CD < "
        "1-step Euler; no memorizing student", passed,
        f"1 step {one[0]:.2f} x / {one[1]:.2f} x (features / pixels), 2 steps (sigma_1 {s2:g}) {two[0]:.2f} x / "
        f"{two[1]:.2f} x; Euler 1 step {ratio['teacher, Euler 1 step'][0]:.1f} x; distillation {budget.cd_steps} "
        f"steps in {t_cd:.0f} s", table, figures, time.perf_counter() - t0)


def gaussian_baseline_nll(y: torch.Tensor, levels: int = 17) -> torch.Tensor:
    """Per-example negative log-density (nats) of dequantized digits `y` under the full-covariance Gaussian fitted
    (maximum likelihood) to the dequantized training digits: mean and covariance of the training digits plus the
    dequantization noise's variance `w^2 / 12` per pixel. The baseline a diffusion model must beat."""
    from ..data import load_digits

    x_tr = load_digits("train")[0].double()
    w2 = (2.0 / (levels - 1)) ** 2 / 12     # the variance uniform dequantization adds: the fit to dequantized data
    cov = torch.cov(x_tr.T) + w2 * torch.eye(64, dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal(x_tr.mean(0), cov)
    return -mvn.log_prob(y.double())


def likelihoods(models: dict, out: Path, budget: Budget, seed: int = 0, scores: dict | None = None,
                judged=None) -> ClaimResult:
    """Claim 7: bits/dim of each model in `models` (`name -> Denoiser`; `scores`: its `score_samples`, shown beside)
    on the first `budget.nll_n` test digits (PF-ODE to sigma 80 with the prior `N(0, 80^2 I)`, from the uniform
    dequantization noise's sd `w / sqrt(12)` = 0.036 (`nll.dequantization_sigma`: a model trained on the 17 grey
    levels concentrates its density on them as sigma -> 0, and the bound holds for its marginal at any level);
    `budget.hutchinson` Hutchinson estimates per digit, or the exact divergence for 0; one uniform dequantization
    draw over the 17 grey levels shared by every model and the baseline, so differences are paired), beside the
    full-covariance Gaussian baseline, and the same machinery on an exact 8-d mixture oracle (its density at sigma
    0.002, exact). PASS: the oracle's PF-ODE NLL equals its exact log-density to 1e-3 nats/dim, and every model
    named in `judged` (default: all) has bits/dim below the Gaussian baseline's by more than 3 standard errors of the
    paired difference and does not memorize; the others are shown for comparison."""
    from ..data import load_digits
    from ..nets import MixtureOracle
    from ..nll import _bpd, dequantization_sigma, dequantize, nll
    from ..parametrization import Denoiser
    from ..plots import save_groups
    from ..processes import EDM

    t0 = time.perf_counter()
    net = MixtureOracle(8, "mixture", k=4, seed=seed)     # an exact model: the PF-ODE density is known
    gm = net.mixture()
    xo = gm.sample(32, torch.Generator().manual_seed(seed + 1))
    res = nll(Denoiser(net, EDM(sigma_max=1000.0), "x0", noise_cond="log_sigma"), xo, progress=False)
    oracle_err = float((res["nats"] + gm.log_prob(xo, 0.002)).abs().max()) / 8
    x = load_digits("test")[0][:budget.nll_n]
    y = dequantize(x, 17, torch.Generator().manual_seed(seed))     # one dequantization for every model: paired
    base_bpd = _bpd(-gaussian_baseline_nll(y, 17), 64, 17)
    n = x.shape[0]
    se = lambda v: float(v.std() / math.sqrt(n)) if n > 1 else float("nan")  # noqa: E731
    rows, ok, per_example, s_min = [], True, {}, dequantization_sigma(17)
    for name, model in models.items():
        r = nll(model, y, levels=0, hutchinson=budget.hutchinson, seed=seed, sigma_min=s_min, sigma_max=80.0,
                progress=False)
        r["bpd"] = _bpd(-r["nats"], 64, 17)
        per_example[name] = r["bpd"]
        diff = r["bpd"] - base_bpd
        if judged is None or name in judged:
            ok = ok and float(diff.mean()) + 3 * se(diff) < 0 and not (scores or {}).get(name, {}).get("memorizing")
        rows.append((name, float(r["bpd"].mean()), se(r["bpd"]), float(diff.mean()), se(diff), r["nfe"], r["seconds"]))
    passed = oracle_err <= 1e-3 and ok
    fig = save_groups(dict(per_example, **{"Gaussian baseline": base_bpd}), Path(out) / "claim7_bits_per_dim.png",
                      ylabel="bits/dim per test digit", title="PF-ODE likelihoods of unseen digits",
                      lines={"uniform over 17 levels": math.log2(17)})
    scores = scores or {}
    sc = lambda k, key: f"{scores[k][key]:.{2 if key == 'fd' else 3}f}" if k in scores else "-"  # noqa: E731
    table = ["| model | bits/dim | vs Gaussian baseline (paired) | FD | copy fraction | NFE (all batches) | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    mark = lambda k: k if judged is None or k in judged else f"{k} (shown for comparison)"  # noqa: E731
    table += [f"| {mark(k)} | {b:.3f} +- {s:.3f} | {d:+.3f} +- {ds:.3f} | {sc(k, 'fd')} | {sc(k, 'copy_fraction')} "
              f"| {nfe} | {sec:.0f} |" for k, b, s, d, ds, nfe, sec in rows]
    table += [f"| full-covariance Gaussian (closed form) | {float(base_bpd.mean()):.3f} +- {se(base_bpd):.3f} | 0 | "
              "- | - | - | - |", f"| uniform over the 17 levels | {math.log2(17):.3f} | - | - | - | - | - |"]
    return ClaimResult(
        "7", "the likelihood view: exact bits/dim from the probability-flow ODE",
        "PF-ODE NLL of an exact 8-d mixture oracle = its log-density to 1e-3 nats/dim; the "
        + (", ".join(judged) if judged else "digits") + f" models (PF-ODE from sigma w/sqrt(12) = {s_min:.3f}, the "
        "dequantization noise's sd) below the Gaussian baseline by > 3 standard errors (paired), not memorizing",
        passed,
        f"oracle max error {oracle_err:.1e} nats/dim; "
        + "; ".join(f"{k} {b:.3f} +- {s:.3f} bits/dim" for k, b, s, *_ in rows)
        + f"; Gaussian {float(base_bpd.mean()):.3f}", table, [fig], time.perf_counter() - t0,
        {"rows": rows, "n": n})

