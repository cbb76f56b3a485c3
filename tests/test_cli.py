"""The `unifusion` CLI: a run end to end, and every user error as one line with exit code 2."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from unifusion.cli import main

TINY = ["--set", "train.steps=6", "--set", "train.batch_size=32", "--set", "train.progress=false",
        "--set", "net.hidden=16", "--set", "net.depth=1", "--set", "net.emb_dim=8", "--set", "data.n=128",
        "--set", "train.threads=1"]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _error(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_train_sample_eval(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "toy_ve", "--out", str(run), *TINY]) == 0
    assert (run / "checkpoint.safetensors").exists() and (run / "config.yaml").exists()
    assert main(["sample", str(run), "--sampler", "heun", "--steps", "4", "--n", "50",
                 "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as z:
        assert z["samples"].shape == (50, 2) and np.isfinite(z["samples"]).all()
    assert (tmp_path / "s.png").stat().st_size > 0
    assert main(["sample", str(run), "--sampler", "euler_maruyama", "--grid", "geometric", "--steps", "5",
                 "--n", "20"]) == 0
    assert (run / "samples_euler_maruyama_5nfe.npz").exists()
    assert main(["sample", str(run), "--sampler", "euler", "--sigmas", "40,2,0.1", "--n", "10"]) == 0
    assert (run / "samples_euler_3nfe.npz").exists()  # the user's 3 levels (a final 0 is appended): 3 NFE
    assert "sigmas" in _error(capsys, ["sample", str(run), "--sigmas", "1,5"])  # not descending
    assert "--sigmas must be comma-separated numbers" in _error(capsys, ["sample", str(run), "--sigmas", "80,x"])
    assert "not a `unifusion distill` checkpoint" in _error(capsys, ["sample", str(run), "--sampler", "consistency"])
    assert main(["eval", str(tmp_path / "s.npz"), "--data", "eight_gaussians"]) == 0
    assert "sw2" in capsys.readouterr().out
    # resume continues to a larger step count
    assert main(["train", "toy_ve", "--out", str(run), *TINY, "--set", "train.steps=8", "--resume"]) == 0


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    run = tmp_path / "run"
    assert "'train.lrr'" in _error(capsys, ["train", "toy_ve", "--set", "train.lrr=1"])
    assert "valid keys" in _error(capsys, ["train", "toy_ve", "--set", "train.lrr=1"])
    assert "must be an integer" in _error(capsys, ["train", "toy_ve", "--set", "train.steps=1.5"])
    assert "does not exist" in _error(capsys, ["train", str(tmp_path / "nope.yaml")])
    assert "valid keys in 'process'" in _error(capsys, ["train", "toy_vp", *TINY, "--set", "process.nope=1"])
    assert "'process.beta_min' must be a number" in _error(capsys, ["train", "toy_vp", *TINY,
                                                                    "--set", "process.beta_min=abc"])
    assert "'net.hidden' must be an integer" in _error(capsys, ["train", "toy_vp", *TINY, "--set", "net.hidden=1.5"])
    assert "does not exist" in _error(capsys, ["sample", str(tmp_path / "nope")])
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32))
    assert "NaN" in _error(capsys, ["train", "toy_ve", "--out", str(run), *TINY, "--set", f"data.name={bad}"])
    huge = tmp_path / "huge.npz"
    np.savez(huge, x=np.full((64, 2), 3e38, dtype=np.float32))
    assert "at step 1" in _error(capsys, ["train", "toy_ve", "--out", str(tmp_path / "h"), *TINY,
                                          "--set", f"data.name={huge}", "--set", "model.sigma_data=1.0"])
    assert main(["train", "toy_ve", "--out", str(run), *TINY]) == 0
    assert "--resume" in _error(capsys, ["train", "toy_ve", "--out", str(run), *TINY])
    assert "net.hidden" in _error(capsys, ["train", "toy_ve", "--out", str(run), *TINY, "--set", "net.hidden=17",
                                           "--resume"])
    assert "is not one of" in _error(capsys, ["sample", str(run), "--sampler", "nope"])
    assert "grid='nope'" in _error(capsys, ["sample", str(run), "--grid", "nope"])
    ck = run / "checkpoint.safetensors"
    ck.write_bytes(ck.read_bytes()[:-64])
    assert "truncated" in _error(capsys, ["sample", str(run)])
    capsys.readouterr()
    assert main(["bench", "samplers"]) == 2  # no such verb: the benchmarks are scripts in bench/
    capsys.readouterr()
    assert main(["train"]) == 2          # argparse usage error
    capsys.readouterr()


def test_consistency_sampler_is_routed_or_explained(tmp_path, capsys, monkeypatch):
    from unifusion.consistency import ConsistencyFunction, cli as ccli
    from unifusion.oracles import eight_gaussians

    seen = []

    def fake_load(path):                 # the exact eight-Gaussians denoiser as a consistency function
        seen.append(path)
        return ConsistencyFunction(eight_gaussians(), 0.002, 80.0, 1.0), (2,)

    monkeypatch.setattr(ccli, "load_consistency", fake_load)
    out = tmp_path / "c.npz"
    assert main(["sample", str(tmp_path), "--sampler", "consistency", "--steps", "2", "--n", "30",
                 "--out", str(out)]) == 0
    assert seen == [str(tmp_path)] and "2 NFE" in capsys.readouterr().out
    with np.load(out) as z:
        assert z["samples"].shape == (30, 2) and np.isfinite(z["samples"]).all()


def test_version_is_the_package_version(capsys):
    """`unifusion --version` prints `unifusion.__version__`, which is also what the installed metadata says."""
    from importlib.metadata import version

    import unifusion

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"unifusion {unifusion.__version__}"
    assert version("unifusion") == unifusion.__version__


def test_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "unifusion", "configs"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "digits_vp" in proc.stdout and "digits_ve" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "unifusion", "train", "toy_ve", "--set", "train.nope=1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "train.nope" in proc.stderr


def test_eval_of_a_digits_checkpoint_prints_the_floor(tmp_path, capsys):
    run = tmp_path / "digits"
    assert main(["train", "digits_ve", "--out", str(run), "--set", "train.steps=3", "--set", "net.hidden=16",
                 "--set", "net.depth=1", "--set", "train.progress=false", "--set", "train.threads=1"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--n", "100", "--sampler", "euler", "--steps", "3",
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "Frechet distance" in out and "floor" in out and "confident fraction" in out
    import json
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["n"] == 100 and rep["fd"] > rep["fd_floor"] > 0   # an untrained model is far above the floor
