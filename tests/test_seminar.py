"""The seminar's claims as functions: exact claims pass, each test can fail, and the report runs end to end."""
import math

import pytest
import torch

from unifusion.cli import main
from unifusion.data import load_digits
from unifusion.oracles import EmpiricalData, GaussianMixture
from unifusion.seminar import Budget
from unifusion.seminar import digits_claims as dc
from unifusion.seminar import oracle_claims as oc
from unifusion.seminar.common import pixel_fd, score_samples


def test_oracle_claims_pass(tmp_path):
    r1 = oc.same_endpoints(tmp_path, n=200, steps=(8, 16, 32, 64))
    r2 = oc.exact_conversions(n=64)
    r3 = oc.sde_ode_marginals(tmp_path, n=500, sde_steps=200, ode_steps=32, pairs=3)
    r4 = oc.error_vs_nfe(tmp_path, n=64, steps=(4, 8, 16, 32))
    for r in (r1, r2, r3, r4):
        assert r.passed, (r.number, r.measured)
        assert all(f.exists() and f.suffix == ".png" for f in r.figures) and r.table
    assert len(r1.figures) == len(r3.figures) == len(r4.figures) == 1


def test_vp_time_heun_is_second_order_and_matches_ve_heun():
    """The VP-time solver of claim 1 converges to the VE solver's endpoint at order 2 (not a copy of it)."""
    from unifusion.oracles import eight_gaussians
    from unifusion.processes import VP
    from unifusion.samplers import sample_heun

    o, p = eight_gaussians(), VP(t_min=1e-3)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    diffs = []
    for k in (32, 64, 128):
        ts = torch.linspace(1.0, 1e-3, k, dtype=torch.float64)
        a = oc.heun_in_time(o.process_model(p, "eps"), p, x, ts)
        b = sample_heun(o, x / float(p.alpha(1.0)), torch.cat([p.sigma_ve(ts), torch.zeros(1, dtype=torch.float64)]))
        diffs.append(float((a - b).abs().max()))
    assert diffs[0] > 0 and 3.0 < diffs[0] / diffs[1] < 6 and 3.0 < diffs[1] / diffs[2] < 6


def _wiener(x_tr):
    """The best linear denoiser of the training digits (exact for Gaussian data), as a VE denoiser."""
    mu, cov = x_tr.mean(0), torch.cov(x_tr.T)
    lam, U = torch.linalg.eigh(cov)

    def D(x, sigma):
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)[:1]
        return (mu + ((x.double() - mu) @ U) * (lam / (lam + s ** 2)) @ U.T).to(x.dtype)
    return D


def test_denoiser_claim_passes_for_a_denoiser_and_fails_for_a_memorizer(tmp_path):
    x_tr = load_digits("train")[0].double()
    good = dc.denoiser_error_vs_sigma(_wiener(x_tr), tmp_path, sigmas=[0.01, 0.1, 1.0, 10.0, 80.0], label="linear")
    assert good.passed, good.measured
    copier = EmpiricalData(x_tr)   # the exact optimal denoiser of the training set: it snaps unseen digits to copies
    bad = dc.denoiser_error_vs_sigma(lambda x, s: copier(x.double(), s[0]), tmp_path, sigmas=[0.01, 1.0, 80.0])
    assert not bad.passed and "x variance" in bad.measured


def test_likelihood_claim_is_exact_on_the_gaussian_baseline(tmp_path):
    """The Gaussian of the training digits as an exact denoiser: noised to the ODE's start, the dequantization noise's
    sd w/sqrt(12), it is the baseline (the training digits' Gaussian plus w^2/12 per pixel), so its PF-ODE bits/dim
    equal the closed form (the claim's comparison is fair), and the claim fails: it is no better than the baseline."""
    x_tr = load_digits("train")[0].double()
    gauss = GaussianMixture(torch.ones(1), x_tr.mean(0)[None], torch.cov(x_tr.T)[None])
    budget = Budget(nll_n=12, hutchinson=0)
    r = dc.likelihoods({"Gaussian as a model": gauss}, tmp_path, budget)
    name, bpd, se, diff, diff_se, nfe, _ = r.data["rows"][0]
    # the same density, up to the ODE's tolerance and the N(0, 80^2 I) prior's misfit: 1e-3 nats/dim
    assert abs(diff) < 1e-3 / math.log(2) and nfe > 0
    assert not r.passed and "oracle max error" in r.measured
    from unifusion.nll import dequantize
    y = dequantize(load_digits("test")[0][:12], 17, torch.Generator().manual_seed(0))
    closed = dc.gaussian_baseline_nll(y).mean() / (64 * math.log(2)) + math.log2(8)
    assert bpd == pytest.approx(float(closed), abs=1e-3 / math.log(2))


def test_sample_scores_flag_copies():
    x_tr, x_te = load_digits("train")[0], load_digits("test")[0]
    copies, fresh = score_samples(x_tr[:360]), score_samples(x_te)
    assert copies["copy_fraction"] == 1.0 and copies["memorizing"]
    assert fresh["copy_fraction"] == 0.0 and not fresh["memorizing"]
    assert pixel_fd(x_te) < 0.2 * pixel_fd(torch.rand(360, 64) * 2 - 1)


@pytest.mark.slow
def test_quick_report_end_to_end(tmp_path, capsys):
    """The smoke run: every claim measured, Markdown and self-contained HTML written, PASS/FAIL printed and the
    exit code 1 when a claim fails (the quick budget's tiny digits models are not expected to pass)."""
    out = tmp_path / "seminar"
    rc = main(["seminar", "--quick", "--out", str(out)])
    text = capsys.readouterr().out
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    numbers = ["1", "2a", "2b", "3", "4", "5", "6", "7"]
    assert all(f"## {k}. " in md for k in numbers) and all(f"claim {k:3s}" in text for k in numbers)
    assert rc == (0 if text.count("PASS") == len(numbers) else 1)
    assert "<img" in page and "src=\"data:image/png;base64," in page and "src=\"claim" not in page
    assert page.count("<img") == md.count("![")
    assert "copy fraction" in md and "Runtime" in md and "load average median" in md
