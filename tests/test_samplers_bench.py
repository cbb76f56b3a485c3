"""The sampler benchmark end to end on a few starts: outputs written, reference independently confirmed."""
import json
import math

import torch

from unifusion import grids
from unifusion import samplers as S
from unifusion.bench import samplers as B


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
    assert B.sliced_w2(a, b) < 0.2 < B.sliced_w2(a, 3 * b)


def test_bench_main_quick(tmp_path):
    assert B.main(["--quick", "--starts", "16", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "samplers.json").read_text())
    names = {(r["sampler"], r["grid"]) for r in res["deterministic"]}
    assert ("unipc", "recommended") in names and ("euler", "edm") in names
    assert all(r["nfe"] <= r["nfe_target"] for r in res["deterministic"] if r["nfe_target"])
    md = (tmp_path / "samplers.md").read_text()
    assert "| sampler | grid |" in md and (tmp_path / "samplers.png").stat().st_size > 1000
    assert B.main(["--starts", "3", "--out", str(tmp_path / "never")]) == 2   # bad input: one line, exit 2
    assert not (tmp_path / "never").exists()


def test_every_tuned_grid_has_its_fit_settings():
    """`--tune NAME` can refit every entry of `grids.TUNED`, with the settings it was fitted with."""
    assert set(B.TUNE_SETTINGS) == set(grids.TUNED)
    for name, settings in B.TUNE_SETTINGS.items():
        assert name in S.SAMPLERS and 0 < settings["rms_weight"] < 1
        if "starts_from" in settings:
            assert all(len(p) == 3 for n in grids.TUNED[name] for p in settings["starts_from"](n))


def test_flip_study_small():
    """`--flip-study`'s function on a few 2-D starts at NFE 5: every studied start is one that flips, `ok_from` is past
    the last flipping NFE, and excluding the flips can only lower the RMS."""
    res = B.flip_study("2d-25", nfe=5, starts=48, max_nfe=8, peers=False, log=lambda *_: None)
    assert res["studied"] and set(res["studied"]) == set(res["flips"]["hybrid/recommended"]) | set(res["flips"]["hybrid/edm"])
    for row in res["per_start"].values():
        for grid in ("recommended", "edm"):
            r = row[f"hybrid/{grid}"]
            assert all(5 <= n < r["ok_from"] for n in r["flips_at"])
    for m, r in res["rms"].items():
        assert r["without_own_flips"] <= r["all"] and r["flips"] == len(res["flips"][m])
