"""The seminar, executable: each claim of "The Two Formulations of Diffusion Models" (DESIGN.md) measured.

One function per claim computes its numbers, decides PASS or FAIL by a stated test and draws its figure; the
report (`unifusion seminar`, `report.run`) only calls them and writes Markdown plus a self-contained HTML page.

* `oracle_claims`: the claims with an exact answer, on Gaussian-mixture oracles (no training):
  1 VP and VE samplers reach the same endpoints (`same_endpoints`), 2a the output conversions are exact
  (`exact_conversions`), 3 reverse SDE and PF-ODE share marginals (`sde_ode_marginals`), 4 ODE error against
  NFE by method (`error_vs_nfe`).
* `digits_claims`: the claims that need trained models, on scikit-learn's digits: 2b eps / x0 / v / EDM targets
  reach the same FD (`targets_same_fd`), 5 the denoiser's error against sigma (`denoiser_error_vs_sigma`),
  6 consistency distillation (`consistency_distillation`), 7 PF-ODE bits/dim (`likelihoods`).
* `common`: `ClaimResult`, the digits training budget, parallel training, sample evaluation.
"""
from .common import Budget, ClaimResult

__all__ = ["ClaimResult", "Budget"]
