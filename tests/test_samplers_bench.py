"""The sampler benchmark scripts (`bench/samplers.py`, `bench/sampler_tuning.py`, `bench/flip_study.py`) on a few
starts: outputs written, the reference independently confirmed, the flip study checked against independent runs."""
import json
import math

import pytest
import torch
from bench_scripts import load_bench

from unifusion import grids
from unifusion import samplers as S

B = load_bench("samplers")


def test_reference_agrees_with_our_dopri5_and_tighter_solve():
    oracle = B.sharp_2d()
    x = 80 * torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref, nfe = B.pf_ode_reference(oracle, x)
    tight, _ = B.pf_ode_reference(oracle, x, rtol=1e-12)
    assert B.endpoint_errors(ref, tight, oracle)["rms"] < 1e-8 and nfe > 100
    ours = S.sample_dopri5(oracle, x, grids.grid_from_list([80.0, 1e-4, 0.0]), rtol=1e-7, atol=1e-9)
    err = B.endpoint_errors(ours, ref, oracle)
    assert err["rms"] < 1e-4 and err["mode_change"] == 0.0


def test_metrics():
    oracle = B.sharp_2d()
    a = oracle.sample(500, generator=torch.Generator().manual_seed(1))
    assert B.endpoint_errors(a, a, oracle) == {"rms": 0.0, "median": 0.0, "mode_change": 0.0}
    shifted = a + torch.tensor([1.0, 0.0], dtype=torch.float64)  # every point one component to the right
    e = B.endpoint_errors(shifted, a, oracle)
    assert e["mode_change"] > 0.7 and math.isclose(e["median"], e["rms"], rel_tol=1e-9)
    b = oracle.sample(500, generator=torch.Generator().manual_seed(2))
    assert B.sw2(a, b) < 0.2 < B.sw2(a, 3 * b)
    assert B.sw2(torch.full_like(a, float("nan")), b) == math.inf  # a diverged sampler's row, not an exception


def test_bench_main_quick(tmp_path):
    assert B.main(["--quick", "--starts", "16", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "samplers.json").read_text())
    names = {(r["sampler"], r["grid"]) for r in res["deterministic"]}
    assert ("unipc", "recommended") in names and ("euler", "edm") in names
    assert all(r["nfe"] <= r["nfe_target"] for r in res["deterministic"] if r["nfe_target"])
    md = (tmp_path / "samplers.md").read_text()
    assert "| sampler | grid |" in md
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["samplers.2d-25.png", "samplers.64d-10.png"]
    assert all(p.stat().st_size > 1000 for p in tmp_path.glob("*.png"))
    with pytest.raises(SystemExit) as bad:  # bad input: one-line error, exit status 2
        B.main(["--starts", "3", "--out", str(tmp_path / "never")])
    assert bad.value.code == 2 and not (tmp_path / "never").exists()


def test_every_tuned_grid_has_its_fit_settings():
    """`bench/sampler_tuning.py grid NAME` can refit every entry of `grids.TUNED`, with the settings it was fitted
    with."""
    T = load_bench("sampler_tuning")
    assert set(T.TUNE_SETTINGS) == set(grids.TUNED)
    for name, settings in T.TUNE_SETTINGS.items():
        assert name in S.SAMPLERS and 0 < settings["rms_weight"] < 1
        if "starts_from" in settings:
            assert all(len(p) == 3 for n in grids.TUNED[name] for p in settings["starts_from"](n))


def test_flip_study_agrees_with_independent_runs():
    """The flip study's findings, checked against runs made here: the benchmark's starts, each sampled again (alone)
    by `sample_hybrid` on a grid built here, against a tight dopri5 solve (not the study's scipy reference). The
    starts reported as flipped at NFE 5 are exactly those that end in another component; each studied start flips at
    exactly the NFE values reported; and the RMS without the flips is that of the other starts."""
    F = load_bench("flip_study")
    res = F.flip_study("2d-25", nfe=5, starts=48, max_nfe=8, peers=False, log=lambda *_: None)
    oracle = B.sharp_2d()
    x = 80 * torch.randn(48, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    truth_x = S.sample_dopri5(oracle, x, grids.grid_from_list([80.0, 1e-5, 0.0]), rtol=1e-9, atol=1e-11)
    truth = oracle.component(truth_x)
    grid_of = {"recommended": lambda n: grids.tuned_grid(n, 0.002, 80.0, sampler="hybrid"),
               "edm": lambda n: grids.edm_grid(n, 0.002, 80.0)}
    assert res["studied"], "the case must have flips to check"
    for name, grid in grid_of.items():
        out = S.sample_hybrid(oracle, x, grid(5))
        flipped = torch.nonzero(oracle.component(out) != truth).flatten().tolist()
        assert res["flips"][f"hybrid/{name}"] == flipped
        e = (out - truth_x).norm(dim=1) / truth_x.norm(dim=1).pow(2).mean().sqrt()
        keep = torch.ones(48, dtype=torch.bool)
        keep[flipped] = False
        rms = res["rms"][f"hybrid/{name}"]
        assert rms["without_own_flips"] == pytest.approx(e[keep].pow(2).mean().sqrt().item(), rel=1e-4)
        assert rms["all"] == pytest.approx(e.pow(2).mean().sqrt().item(), rel=1e-4)
        for i in res["studied"]:
            flips_at = [n for n in range(5, 9) if oracle.component(S.sample_hybrid(oracle, x[i:i + 1], grid(n)))
                        != truth[i]]
            assert res["per_start"][i][f"hybrid/{name}"]["flips_at"] == flips_at
