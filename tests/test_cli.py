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
    assert "argument --sigmas: must be comma-separated" in _error(capsys, ["sample", str(run), "--sigmas", "80,x"])
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
    assert "'bench'" in _error(capsys, ["bench", "samplers"])  # no such verb: the benchmarks are scripts in bench/
    assert "config" in _error(capsys, ["train"])                  # argparse's usage errors are one line too


def test_consistency_sampler_is_routed(tmp_path, capsys, monkeypatch):
    from unifusion.consistency import ConsistencyFunction, cli as ccli
    from unifusion.oracles import eight_gaussians

    seen = []

    def fake_load(path):                 # the exact eight-Gaussians denoiser as a consistency function
        seen.append(path)
        f = ConsistencyFunction(eight_gaussians(), 0.002, 80.0, 1.0)
        f.config = {"train": {"threads": 1}}
        return f, (2,)

    monkeypatch.setattr(ccli, "load_consistency", fake_load)
    out = tmp_path / "c.npz"
    assert main(["sample", str(tmp_path), "--sampler", "consistency", "--steps", "2", "--n", "30",
                 "--out", str(out)]) == 0
    assert seen == [str(tmp_path)] and "2 NFE" in capsys.readouterr().out
    with np.load(out) as z:
        assert z["samples"].shape == (30, 2) and np.isfinite(z["samples"]).all()
    assert "--grid: does not apply to --sampler consistency" in _error(capsys, [
        "sample", str(tmp_path), "--sampler", "consistency", "--grid", "edm", "--out", str(tmp_path / "d.npz")])


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


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, full_disk, capsys):
    """A real full file system (tmpfs): the checkpoint write of `train` and the output of `sample` fail with one line
    that names the file, and leave no temporary file behind."""
    folder = full_disk(free_bytes=12 * 1024)       # room for config.yaml and the log, not for the checkpoint
    err = _error(capsys, ["train", "toy_ve", "--out", str(folder / "run"), *TINY, "--set", "net.hidden=64"])
    assert "No space left on device" in err and "checkpoint.safetensors" in err, err
    assert sorted(p.name for p in (folder / "run").iterdir()) == ["config.yaml", "log.jsonl"]
    run = tmp_path / "run"
    assert main(["train", "toy_ve", "--out", str(run), *TINY]) == 0
    full_disk(free_bytes=0)
    err = _error(capsys, ["sample", str(run), "--n", "3000", "--steps", "2", "--out", str(folder / "s.npz")])
    assert "No space left on device" in err and str(folder / "s.npz") in err and ".tmp-" not in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["run"]


def _draw(run, out, *flags):
    assert main(["sample", str(run), "--n", "40", "--seed", "3", "--out", str(out), "--overwrite", *flags]) == 0
    with np.load(out) as z:
        return z["samples"], __import__("json").loads(str(z["info"]))


def test_sampler_options_reach_the_sampler(tmp_path, capsys):
    """`--option KEY=VALUE` sets any keyword option of the chosen sampler: EDM's churn, DDIM's eta."""
    run, out = tmp_path / "run", tmp_path / "s.npz"
    assert main(["train", "toy_ve", "--out", str(run), *TINY]) == 0
    heun, _ = _draw(run, out, "--sampler", "heun", "--steps", "6")
    plain, _ = _draw(run, out, "--sampler", "edm_stochastic", "--steps", "6")
    churn, info = _draw(run, out, "--sampler", "edm_stochastic", "--steps", "6", "--option", "s_churn=40")
    assert np.allclose(plain, heun, atol=1e-5) and not np.allclose(churn, plain, atol=1e-3)
    assert info["options"] == {"s_churn": 40}
    ddim0, _ = _draw(run, out, "--sampler", "ddim", "--steps", "6")
    ddim1, info = _draw(run, out, "--sampler", "ddim", "--steps", "6", "--option", "eta=1")
    assert not np.allclose(ddim0, ddim1, atol=1e-3) and info["options"] == {"eta": 1}
    pc, info = _draw(run, out, "--sampler", "pc", "--steps", "4", "--option", "snr=0.05",
                     "--option", "n_corrector=2", "--option", "predictor=euler_maruyama")
    assert np.isfinite(pc).all() and info["options"] == {"snr": 0.05, "n_corrector": 2, "predictor": "euler_maruyama"}
    assert "s_churn" in _error(capsys, ["sample", str(run), "--sampler", "edm_stochastic", "--option", "churn=1"])


def test_explicit_flags_win_over_the_run_sample_section(tmp_path, capsys):
    """The run's `sample:` section is one recipe (here DDPM ancestral on 20 of its timesteps): its grid and steps go
    with its sampler; another `--sampler` starts from that sampler's defaults, and `--sigma-max` replaces a grid that
    cannot take it."""
    run, out = tmp_path / "run", tmp_path / "s.npz"
    assert main(["train", "toy_vp", "--out", str(run), *TINY, "--set", "process.name=ddpm", "--set",
                 "model.time_scale=1.0", "--set", "sample.sampler=ancestral", "--set", "sample.grid=timesteps",
                 "--set", "sample.steps=20"]) == 0
    _, info = _draw(run, out)
    assert (info["sampler"], info["grid"], info["steps"]) == ("ancestral", "timesteps", 20)
    a, info = _draw(run, out, "--sigma-max", "5")
    assert (info["grid"], info["steps"]) == ("recommended", 20)
    b, info = _draw(run, out, "--sampler", "heun", "--sigma-max", "5")
    c, _ = _draw(run, out, "--sampler", "heun", "--sigma-max", "20")
    assert (info["sampler"], info["grid"], info["steps"]) == ("heun", "recommended", 18)
    assert not np.allclose(b, c, atol=1e-3)             # --sigma-max is used, not ignored
    assert "--sigma-max" in _error(capsys, ["sample", str(run), "--grid", "timesteps", "--sigma-max", "5"])


def test_sample_replaces_files_only_when_asked(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "toy_ve", "--out", str(run), *TINY]) == 0
    (tmp_path / "fig.png").write_bytes(b"someone's figure")
    assert "--overwrite" in _error(capsys, ["sample", str(run), "--out", str(tmp_path / "fig.npz")])
    assert (tmp_path / "fig.png").read_bytes() == b"someone's figure" and not (tmp_path / "fig.npz").exists()
    assert main(["sample", str(run), "--n", "5", "--steps", "2", "--out", str(tmp_path / "fig.npz"),
                 "--overwrite"]) == 0
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"


def test_threads_are_set_by_the_cli_only(tmp_path):
    n = torch.get_num_threads()
    assert main(["train", "toy_ve", "--out", str(tmp_path / "r"), *TINY, "--set", f"train.threads={n + 1}"]) == 0
    assert torch.get_num_threads() == n + 1
