"""`unifusion nll` on a run whose model is an exact oracle: the reported density is the mixture's."""
import json
import math

import numpy as np
import pytest
import torch

from unifusion.cli import main
from unifusion.data import load_npz
from unifusion.nll import dequantize, nll, summarize
from unifusion.train import load_model
from unifusion.train.oracle import write_oracle_run


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle")
    write_oracle_run(out, dim=8, k=4, seed=0, n=24)
    x, _ = load_npz(out / "data.npz")
    exact = -load_model(out).net.mixture().log_prob(x.double(), 0.002)   # the PF-ODE density starts at sigma_min
    return out, exact


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_nll_of_the_oracle_run_is_its_exact_density(oracle_run, capsys):
    out, exact = oracle_run
    assert main(["nll", str(out), "--data", str(out / "data.npz"), "--json"]) == 0
    rep = _json(capsys)
    nats = torch.tensor(rep["per_example"]["nats"], dtype=torch.float64)
    assert rep["levels"] == 0 and rep["dims"] == 8 and rep["n"] == 24
    assert float((nats - exact).abs().max()) / 8 < 1e-3
    assert rep["bits_per_dim"] == pytest.approx(float(exact.mean()) / (8 * math.log(2)), abs=1e-3)


def test_hutchinson_lies_within_three_standard_errors(oracle_run, capsys):
    out, exact = oracle_run
    assert main(["nll", str(out), "--data", str(out / "data.npz"), "--hutchinson", "8", "--seed", "3", "--json"]) == 0
    rep = _json(capsys)
    nats = torch.tensor(rep["per_example"]["nats"], dtype=torch.float64)
    se = torch.tensor(rep["per_example"]["nats_se"], dtype=torch.float64)
    assert (se > 0).all()
    mean_se = float(se.square().sum().sqrt()) / len(se)       # the Hutchinson noise of the mean over examples
    assert abs(float(nats.mean() - exact.mean())) < 3 * mean_se, (float(nats.mean()), float(exact.mean()), mean_se)


def test_fixed_grid_has_a_fixed_nfe_and_converges(oracle_run, capsys, tmp_path):
    out, exact = oracle_run
    path = tmp_path / "r.json"
    assert main(["nll", str(out), "--data", str(out / "data.npz"), "--steps", "60", "--batch-size", "10",
                 "--json", str(path)]) == 0
    rep = json.loads(path.read_text())
    assert rep["nfe"] == 3 * (6 * 60 + 1)                    # 3 batches, 6 evaluations per step plus the first
    nats = torch.tensor(rep["per_example"]["nats"], dtype=torch.float64)
    assert float((nats - exact).abs().max()) / 8 < 1e-3
    assert main(["nll", str(out), "--data", str(out / "data.npz"), "--n", "4"]) == 0
    text = capsys.readouterr().out
    assert "4 examples" in text and "continuous data" in text and "bits/dim" in text


def test_dequantized_bits_per_dim_of_discrete_data():
    """With L levels the bound is (-log p(y) - d log w) / (d ln 2), w = 2/(L-1): a density uniform over each level's
    bin (p = (L w)^-d on [-1 - w/2, 1 + w/2]^d) scores exactly log2(L) bits/dim."""
    L, d = 17, 64
    w = 2 / (L - 1)
    log_p = torch.full((5,), -d * math.log(L * w), dtype=torch.float64)
    from unifusion.nll import _bpd
    torch.testing.assert_close(_bpd(log_p, d, L), torch.full((5,), math.log2(L), dtype=torch.float64))
    x = torch.linspace(-1, 1, L).repeat(100, 1)
    y = dequantize(x, L, torch.Generator().manual_seed(0))
    assert float((y - x).abs().max()) <= w / 2 and float((y - x).abs().max()) > 0.45 * w
    assert torch.equal(dequantize(x, 0), x)
    s = summarize({"nats": log_p.neg(), "bpd": _bpd(log_p, d, L), "nfe": 1, "seconds": 0.0}, d, L)
    assert s["bin_width"] == w and s["bits_per_dim"] == pytest.approx(math.log2(L))


def test_digits_default_levels_and_bad_input(tmp_path, capsys):
    from unifusion.train import load_config, train_from_config

    cfg = load_config("digits_vp", ["train.steps=2", "net.hidden=16", "net.depth=1", "train.progress=false",
                                    "train.log_every=1", f"out={tmp_path / 'run'}", "train.ema_decays=[]"])
    train_from_config(cfg)
    assert main(["nll", str(tmp_path / "run"), "--n", "2", "--hutchinson", "1", "--steps", "2", "--json"]) == 0
    rep = _json(capsys)
    assert rep["levels"] == 17 and rep["bin_width"] == 0.125 and np.isfinite(rep["bits_per_dim"])
    assert rep["sigma_min"] == pytest.approx(0.125 / math.sqrt(12))   # the ODE starts at the dequantization noise
    for argv, msg in [(["--data", "valid"], "--data must be"), (["--hutchinson", "-1"], "hutchinson"),
                      (["--levels", "1"], "levels"), (["--n", "0"], "--n")]:
        assert main(["nll", str(tmp_path / "run"), *argv]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1
    assert main(["nll", str(tmp_path / "missing")]) == 2


def test_nll_function_matches_log_likelihood_per_batch(oracle_run):
    out, exact = oracle_run
    d = load_model(out)
    x, _ = load_npz(out / "data.npz")
    a = nll(d, x[:6].double(), batch_size=4, progress=False)
    b = nll(d, x[:6].double(), batch_size=6, progress=False)
    torch.testing.assert_close(a["nats"], b["nats"], rtol=0, atol=1e-4)    # batching only changes the step sizes


def test_two_gloo_processes_give_the_same_per_example_values(oracle_run, tmp_path):
    """torchrun shards the examples over ranks and gathers them back in data order; on the fixed grid every
    example's ODE is independent of its batch, so the values equal one process's."""
    import os
    import subprocess
    import sys

    out, _ = oracle_run
    common = [str(out), "--data", str(out / "data.npz"), "--steps", "20", "--batch-size", "5", "--json"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "unifusion", "nll", *common, str(tmp_path / "ddp.json")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["nll", *common, str(tmp_path / "one.json")]) == 0
    ddp, one = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("ddp", "one"))
    assert ddp["world_size"] == 2 and ddp["n"] == one["n"] == 24
    np.testing.assert_allclose(ddp["per_example"]["nats"], one["per_example"]["nats"], rtol=0, atol=1e-9)
