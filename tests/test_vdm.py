"""VDM's learned schedule end to end: trained with the model, checkpointed, reloaded, sampled, its likelihood taken."""
import math

import pytest
import torch

from unifusion.data import load_digits
from unifusion.train import load_config, load_model, train_from_config
from unifusion.train.checkpoint import read_checkpoint


def _tiny(tmp_path, name, *sets):
    cfg = load_config("digits_vdm", ["train.steps=30", "net.hidden=32", "net.depth=1", "train.progress=false",
                                     "train.log_every=10", "train.warmup=0", "train.decay_start=0", "train.decay_end=0",
                                     "train.ckpt_every=0", "train.ema_decays=[0.9]", "process.hidden=16",
                                     "train.lr=1e-2", f"out={tmp_path / name}", *sets])
    return train_from_config(cfg), tmp_path / name


def test_learned_schedule_trains_and_round_trips(tmp_path):
    res, out = _tiny(tmp_path, "learned")
    tensors, info = read_checkpoint(out / "checkpoint.safetensors")
    assert info["modules"] == ["net", "schedule"] and math.isfinite(res.loss)
    raw, ema = load_model(out, ema=False), load_model(out)
    g0 = raw.process._end_scale * float(tensors["model.schedule.gamma_0"])
    assert g0 != -13.3 and raw.process.gamma_ends[0] == g0                       # the end point moved and reloads
    assert ema.process.gamma_ends[0] == ema.process._end_scale * float(tensors["ema0.schedule.gamma_0"])
    assert not torch.equal(tensors["model.schedule.v"], torch.full((16,), -4.0, dtype=torch.float64))
    t = torch.linspace(0, 1, 50, dtype=torch.float64)
    assert (ema.process.log_snr(t).diff() < 0).all()                             # still monotone
    from unifusion.train.generate import generate
    x, info_s = generate(ema, 16, (64,), sampler="heun", steps=6)
    assert torch.isfinite(x).all() and info_s["nfe"] == 11
    from unifusion.nll import nll
    r = nll(ema, load_digits("test")[0][:4], levels=17, hutchinson=1, steps=3, progress=False)
    assert torch.isfinite(r["bpd"]).all()


def test_fixed_schedule_is_not_a_module_of_the_task(tmp_path):
    _, out = _tiny(tmp_path, "fixed", "process.shape=vp", "process.learn_ends=false")
    _, info = read_checkpoint(out / "checkpoint.safetensors")
    assert info["modules"] == ["net"]
    d = load_model(out)
    assert d.process.gamma_ends[1] == pytest.approx(-float(d.process.base.log_snr(1.0)), rel=1e-14)


def test_likelihood_bench_pairs_runs_on_one_dequantization(tmp_path):
    """bench/likelihood.py: a run against itself differs by exactly 0 (the same dequantization and ELBO draws), and
    a VDM run gets its ELBO beside the PF-ODE bits/dim."""
    import json

    from bench_scripts import load_bench

    _, out = _tiny(tmp_path, "fixed", "process.shape=vp", "process.learn_ends=false")
    load_bench("likelihood").main([str(out), str(out), "--n", "3", "--elbo-repeats", "2",
                                   "--out", str(tmp_path / "lk")])
    first, again = json.loads((tmp_path / "lk.json").read_text())
    assert again["pf_ode_minus_first"] == 0 and again["elbo_minus_first"] == 0
    assert first["pf_ode_bpd"] == again["pf_ode_bpd"] and math.isfinite(first["elbo_bpd"])
    assert "| ELBO median |" in (tmp_path / "lk.md").read_text()
