"""The digits training benchmark script (`bench/train_digits.py`) in its quick mode: it trains, evaluates over
several seeds with both floors, and `--resume --reevaluate` evaluates the saved checkpoints again without training."""
import json

import pytest
from bench_scripts import load_bench


def test_quick_benchmark_then_reevaluate(tmp_path):
    bench = load_bench("train_digits")
    args = ["--quick", "--skip", "vp", "--skip", "unet", "--out", str(tmp_path), "--runs", str(tmp_path / "runs")]
    assert bench.main(args) == 0
    first = json.loads((tmp_path / "train_digits_quick.json").read_text())
    row = first["runs"][0]["history"][-1]
    assert row["step"] == 100 and row["heun35"]["seeds"] == 2 and len(row["heun35"]["ratios"]) == 2
    v = row["heun35"]
    assert v["floor_iid"] > 1.2 * v["floor"] and v["ratio_iid"] == pytest.approx(v["fd"] / v["floor_iid"], rel=1e-9)
    assert 0 <= v["copy_fraction"] <= 1 and v["fd_pooled"] > 0
    log = (tmp_path / "runs_quick" / "train_ve_edm" / "log.jsonl").read_text()
    assert bench.main(args + ["--resume", "--reevaluate"]) == 0
    again = json.loads((tmp_path / "train_digits_quick.json").read_text())["runs"][0]["history"]
    assert [r["step"] for r in again] == [100] and again[0]["loss"] == row["loss"]
    assert again[0]["heun35"]["ratios"] == v["ratios"]       # same checkpoint, same seeds: the same numbers
    assert (tmp_path / "runs_quick" / "train_ve_edm" / "log.jsonl").read_text() == log   # nothing trained
    with pytest.raises(SystemExit) as e:
        bench.main(args + ["--reevaluate"])
    assert e.value.code == 2
