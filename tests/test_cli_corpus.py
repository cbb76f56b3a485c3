"""The bad-input corpus: every verb, every flag and the config keys of every section, each given a bad value.

Each case must exit with code 2 and print exactly one line `unifusion <verb>: error: ...` on stderr that names the
bad argument, and leave every file in the working folder byte-identical, with no new file. The cases run in-process
(`unifusion.cli.main`); a few run through `python -m unifusion` as well."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unifusion.cli import main

TINY = ["--set", "train.steps=4", "--set", "train.batch_size=32", "--set", "train.progress=false",
        "--set", "net.hidden=16", "--set", "net.depth=1", "--set", "net.emb_dim=8", "--set", "data.n=64",
        "--set", "train.threads=1", "--set", "train.log_every=2"]


def _tiny(*sets):
    return [*TINY, *[a for s in sets for a in ("--set", s)]]


# (id, argv with {placeholders} of the `world` fixture, a text the one error line must contain)
CASES = [
    # the command itself
    ("no-command", [], "COMMAND"),
    ("unknown-command", ["nope"], "'nope'"),
    # train: arguments and flags
    ("train-no-config", ["train"], "config"),
    ("train-missing-config", ["train", "no_such_config"], "no_such_config"),
    ("train-config-folder", ["train", "{folder}"], "folder"),
    ("train-bad-yaml", ["train", "{bad_yaml}"], "bad.yaml"),
    ("train-binary-yaml", ["train", "{binary_yaml}"], "binary.yaml"),
    ("train-unknown-section", ["train", "{unknown_yaml}"], "'nonsense'"),
    ("train-shipped-name-beside-a-folder", ["train", "toy_ve", "--set", "train.nope=1"], "train.nope"),
    ("train-unknown-flag", ["train", "toy_ve", "--bogus"], "--bogus"),
    ("train-set-no-equals", ["train", "toy_ve", "--set", "train.lr"], "--set"),
    ("train-set-deep-key", ["train", "toy_ve", "--set", "train.lr.x=1"], "train.lr.x"),
    ("train-out-empty", ["train", "toy_ve", "--out", "", *TINY], "out"),
    ("train-out-a-file", ["train", "toy_ve", "--out", "{afile}", *TINY], "afile"),
    ("train-nproc-0", ["train", "toy_ve", "--nproc-per-node", "0"], "--nproc-per-node"),
    ("train-existing-run", ["train", "toy_ve", "--out", "{run}", *TINY], "--resume"),
    ("train-resume-other-net", ["train", "toy_ve", "--out", "{run}", *_tiny("net.hidden=17"), "--resume"],
     "net.hidden"),
    ("train-resume-other-micro-batches", ["train", "toy_ve", "--out", "{run}", *_tiny("train.grad_accum=2"),
                                          "--resume"], "train.grad_accum"),
    ("train-resume-decay-in-the-past", ["train", "toy_ve", "--out", "{run}", *_tiny(
        "train.steps=10", "train.decay_start=1", "train.decay_end=10"), "--resume"], "decay"),
    # config keys of every section
    ("cfg-unknown-top", ["train", "toy_ve", "--set", "nonsense=1"], "nonsense"),
    ("cfg-seed-negative", ["train", "toy_ve", "--set", "seed=-1"], "seed"),
    ("cfg-seed-text", ["train", "toy_ve", "--set", "seed=abc"], "seed"),
    ("cfg-out-list", ["train", "toy_ve", "--set", "out=[1]"], "out"),
    ("cfg-data-name", ["train", "toy_ve", *_tiny("data.name=nope")], "nope"),
    ("cfg-data-option", ["train", "toy_ve", *_tiny("data.nope=1")], "nope"),
    ("cfg-data-random-bytes", ["train", "toy_ve", *_tiny("data.name={random_npz}")], "random.npz"),
    ("cfg-data-0d-array", ["train", "toy_ve", *_tiny("data.name={zero_d_npz}")], "zero_d.npz"),
    ("cfg-data-nan", ["train", "toy_ve", *_tiny("data.name={nan_npz}")], "NaN"),
    ("cfg-data-pickled", ["train", "toy_ve", *_tiny("data.name={pickled_npz}")], "pickled"),
    ("cfg-data-missing-file", ["train", "toy_ve", *_tiny("data.name={root}/missing.npz")], "missing.npz"),
    ("cfg-process-name", ["train", "toy_ve", *_tiny("process.name=nope")], "process"),
    ("cfg-process-option", ["train", "toy_vp", *_tiny("process.nope=1")], "process.nope"),
    ("cfg-process-type", ["train", "toy_vp", *_tiny("process.beta_min=abc")], "process.beta_min"),
    ("cfg-model-target", ["train", "toy_ve", *_tiny("model.target=nope")], "target"),
    ("cfg-model-unknown", ["train", "toy_ve", "--set", "model.nope=1"], "model.nope"),
    ("cfg-model-type", ["train", "toy_ve", "--set", "model.sigma_data=abc"], "model.sigma_data"),
    ("cfg-net-kind", ["train", "toy_ve", *_tiny("net.kind=nope")], "nope"),
    ("cfg-net-type", ["train", "toy_ve", *_tiny("net.hidden=1.5")], "net.hidden"),
    ("cfg-net-negative", ["train", "toy_ve", *_tiny("net.hidden=-3")], "hidden"),
    ("cfg-net-option", ["train", "toy_ve", *_tiny("net.nope=1")], "net.nope"),
    ("cfg-loss-name", ["train", "toy_ve", *_tiny("loss.name=nope")], "loss"),
    ("cfg-loss-option", ["train", "toy_ve", *_tiny("loss.nope=1")], "loss.nope"),
    ("cfg-train-steps", ["train", "toy_ve", "--set", "train.steps=0"], "train.steps"),
    ("cfg-train-lr", ["train", "toy_ve", "--set", "train.lr=-1"], "train.lr"),
    ("cfg-train-batch-accum", ["train", "toy_ve", *_tiny("train.batch_size=7", "train.grad_accum=2")],
     "train.batch_size"),
    ("cfg-train-precision", ["train", "toy_ve", *_tiny("train.precision=bf16", "train.device=cpu")],
     "train.precision"),
    ("cfg-train-ema", ["train", "toy_ve", "--set", "train.ema_decays=[1.5]"], "train.ema_decays"),
    ("cfg-train-ema-text", ["train", "toy_ve", "--set", "train.ema_decays=[a]"], "train.ema_decays"),
    ("cfg-train-threads", ["train", "toy_ve", "--set", "train.threads=-1"], "train.threads"),
    ("cfg-train-timeout", ["train", "toy_ve", "--set", "train.dist_timeout=0"], "train.dist_timeout"),
    ("cfg-train-device", ["train", "toy_ve", "--set", "train.device=tpu"], "train.device"),
    ("cfg-train-betas", ["train", "toy_ve", "--set", "train.betas=[0.9]"], "train.betas"),
    ("cfg-train-decay", ["train", "toy_ve", "--set", "train.decay_start=10"], "train.decay_start"),
    ("cfg-train-unknown", ["train", "toy_ve", "--set", "train.nope=1"], "train.nope"),
    ("cfg-sample-n", ["train", "toy_ve", "--set", "sample.n=0"], "sample.n"),
    ("cfg-sample-sampler", ["train", "toy_ve", "--set", "sample.sampler=nope"], "sample.sampler"),
    ("cfg-sample-grid", ["train", "toy_ve", "--set", "sample.grid=nope"], "sample.grid"),
    ("cfg-sample-unknown", ["train", "toy_ve", "--set", "sample.nope=1"], "sample.nope"),
    # sample
    ("sample-no-checkpoint", ["sample"], "checkpoint"),
    ("sample-missing", ["sample", "{root}/nothing"], "nothing"),
    ("sample-truncated", ["sample", "{trunc}"], "truncated"),
    ("sample-foreign-safetensors", ["sample", "{foreign}"], "foreign.safetensors"),
    ("sample-distill-checkpoint", ["sample", "{cd}", "--sampler", "heun"], "cd"),
    ("sample-steps-0", ["sample", "{run}", "--steps", "0"], "--steps"),
    ("sample-n-0", ["sample", "{run}", "--n", "0"], "--n"),
    ("sample-batch-0", ["sample", "{run}", "--batch-size", "0"], "--batch-size"),
    ("sample-batch-negative", ["sample", "{run}", "--batch-size", "-4"], "--batch-size"),
    ("sample-threads-negative", ["sample", "{run}", "--threads", "-1"], "--threads"),
    ("sample-threads-text", ["sample", "{run}", "--threads", "x"], "--threads"),
    ("sample-seed-negative", ["sample", "{run}", "--seed", "-1"], "--seed"),
    ("sample-sigma-min-0", ["sample", "{run}", "--sigma-min", "0"], "--sigma-min"),
    ("sample-sigma-max-nan", ["sample", "{run}", "--sigma-max", "nan"], "--sigma-max"),
    ("sample-sigma-bounds-swapped", ["sample", "{run}", "--sigma-min", "5", "--sigma-max", "1"], "sigma"),
    ("sample-sampler", ["sample", "{run}", "--sampler", "nope"], "sampler"),
    ("sample-grid", ["sample", "{run}", "--grid", "nope"], "grid"),
    ("sample-grid-timesteps-on-edm", ["sample", "{run}", "--grid", "timesteps"], "timesteps"),
    ("sample-sigmas-ascending", ["sample", "{run}", "--sigmas", "1,5"], "--sigmas"),
    ("sample-sigmas-text", ["sample", "{run}", "--sigmas", "80,x"], "--sigmas"),
    ("sample-sigmas-and-steps", ["sample", "{run}", "--sigmas", "80,1", "--steps", "4"], "--steps"),
    ("sample-process-grid-and-bounds", ["sample", "{run}", "--grid", "uniform_t", "--sigma-max", "3"],
     "--sigma-max"),
    ("sample-option-no-equals", ["sample", "{run}", "--option", "eta"], "--option"),
    ("sample-option-unknown", ["sample", "{run}", "--sampler", "heun", "--option", "eta=0.5"], "eta"),
    ("sample-option-type", ["sample", "{run}", "--sampler", "ddim", "--option", "eta=abc"], "eta"),
    ("sample-option-range", ["sample", "{run}", "--sampler", "ddim", "--option", "eta=2"], "eta"),
    ("sample-out-suffix", ["sample", "{run}", "--out", "{root}/s.txt"], "--out"),
    ("sample-out-exists", ["sample", "{run}", "--out", "{samples}"], "--overwrite"),
    ("sample-out-png-exists", ["sample", "{run}", "--out", "{root}/pic.npz"], "pic.png"),
    ("sample-out-folder", ["sample", "{run}", "--out", "{root}/dir.npz"], "dir.npz"),
    ("sample-out-under-a-file", ["sample", "{run}", "--out", "{afile}/s.npz"], "afile"),
    ("sample-consistency-on-diffusion", ["sample", "{run}", "--sampler", "consistency"], "distill"),
    ("sample-consistency-grid", ["sample", "{cd}", "--sampler", "consistency", "--grid", "edm"], "--grid"),
    ("sample-consistency-option", ["sample", "{cd}", "--sampler", "consistency", "--option", "eta=1"], "--option"),
    ("sample-consistency-sigmas-steps", ["sample", "{cd}", "--sampler", "consistency", "--sigmas", "80,1",
                                         "--steps", "2"], "--steps"),
    ("sample-consistency-raw", ["sample", "{cd}", "--sampler", "consistency", "--raw"], "--raw"),
    # eval
    ("eval-no-input", ["eval"], "samples"),
    ("eval-missing", ["eval", "{root}/none.npz"], "none.npz"),
    ("eval-random-bytes", ["eval", "{random_npz}"], "random.npz"),
    ("eval-no-samples-array", ["eval", "{nan_npz}"], "samples"),
    ("eval-nan-samples", ["eval", "{nan_samples}"], "NaN"),
    ("eval-npz-sampler", ["eval", "{samples}", "--sampler", "heun"], "--sampler"),
    ("eval-npz-steps", ["eval", "{samples}", "--steps", "3"], "--steps"),
    ("eval-n-0", ["eval", "{samples}", "--n", "0"], "--n"),
    ("eval-n-too-many", ["eval", "{samples}", "--n", "100000"], "--n"),
    ("eval-data", ["eval", "{samples}", "--data", "nope"], "--data"),
    ("eval-data-dimension", ["eval", "{samples}", "--data", "digits"], "--data"),
    ("eval-json-folder", ["eval", "{samples}", "--json", "{folder}"], "--json"),
    ("eval-seed", ["eval", "{samples}", "--seed", "-2"], "--seed"),
    ("eval-threads", ["eval", "{samples}", "--threads", "0"], "--threads"),
    ("eval-checkpoint-sampler", ["eval", "{run}", "--sampler", "nope"], "sampler"),
    ("eval-truncated", ["eval", "{trunc}"], "truncated"),
    # demo, configs
    ("demo-out-a-file", ["demo", "--out", "{afile}"], "--out"),
    ("demo-seed", ["demo", "--seed", "-1"], "--seed"),
    ("demo-unknown-flag", ["demo", "--bogus"], "--bogus"),
    ("configs-extra", ["configs", "extra"], "extra"),
    ("bench-is-no-verb", ["bench", "samplers"], "'bench'"),
    # distill
    ("distill-nothing", ["distill"], "teacher"),
    ("distill-both", ["distill", "{run}", "--ct", "toy_ve"], "--ct"),
    ("distill-missing-teacher", ["distill", "{root}/no_teacher"], "no_teacher"),
    ("distill-ct-missing-config", ["distill", "--ct", "no_such_config"], "no_such_config"),
    ("distill-N", ["distill", "{run}", "--set", "consistency.N=1"], "consistency.N"),
    ("distill-unknown", ["distill", "{run}", "--set", "consistency.nope=1"], "consistency.nope"),
    ("distill-mode", ["distill", "{run}", "--set", "consistency.mode=xx"], "consistency.mode"),
    ("distill-distance", ["distill", "{run}", "--set", "consistency.distance=l3"], "consistency.distance"),
    ("distill-sigmas", ["distill", "{run}", "--set", "consistency.sigma_min=100", "--set",
                        "consistency.sigma_max=1", "--out", "{root}/cd2"], "sigma_min"),
    ("distill-loss", ["distill", "{run}", "--set", "loss.name=edm"], "loss.name"),
    ("distill-train-lr", ["distill", "{run}", "--set", "train.lr=-1"], "train.lr"),
    ("distill-nproc", ["distill", "{run}", "--nproc-per-node", "0"], "--nproc-per-node"),
    ("distill-existing-run", ["distill", "{run}", "--out", "{cd}"], "--resume"),
    ("distill-diffusion-teacher-is-a-student", ["distill", "{cd}", "--out", "{root}/cd3"], "cd"),
    ("distill-unknown-flag", ["distill", "{run}", "--bogus"], "--bogus"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder with a trained run, a distilled run, samples and bad files, and the placeholders naming them."""
    root = tmp_path_factory.mktemp("corpus")
    n = torch.get_num_threads()
    try:
        assert main(["train", "toy_ve", "--out", str(root / "run"), *TINY]) == 0
        assert main(["distill", str(root / "run"), "--out", str(root / "cd"), "--set", "train.steps=2",
                     "--set", "train.progress=false", "--set", "train.batch_size=32"]) == 0
        assert main(["sample", str(root / "run"), "--sampler", "euler", "--steps", "2", "--n", "20",
                     "--out", str(root / "samples.npz")]) == 0
    finally:
        torch.set_num_threads(n)
    (root / "trunc").mkdir()
    ck = (root / "run" / "checkpoint.safetensors").read_bytes()
    (root / "trunc" / "checkpoint.safetensors").write_bytes(ck[:-100])
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(3)}, str(root / "foreign.safetensors"))
    rng = np.random.default_rng(0)
    (root / "random.npz").write_bytes(rng.bytes(2000))
    np.savez(root / "zero_d.npz", x=np.array(3.0))
    np.savez(root / "nan.npz", x=np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32))
    np.savez(root / "nan_samples.npz", samples=np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32))
    np.savez(root / "pickled.npz", x=np.array([{"a": 1}, None], dtype=object))
    (root / "bad.yaml").write_text("train: [unclosed\n")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00" + rng.bytes(200))
    (root / "unknown.yaml").write_text("nonsense: 1\n")
    for d in ("folder", "toy_ve", "dir.npz"):        # `toy_ve`: a folder named like a shipped config
        (root / d).mkdir()
    (root / "afile").write_text("a file\n")
    (root / "pic.png").write_bytes(b"not really a picture")
    names = {"root": root, "run": root / "run", "cd": root / "cd", "samples": root / "samples.npz",
             "trunc": root / "trunc", "foreign": root / "foreign.safetensors", "random_npz": root / "random.npz",
             "zero_d_npz": root / "zero_d.npz", "nan_npz": root / "nan.npz", "nan_samples": root / "nan_samples.npz",
             "pickled_npz": root / "pickled.npz", "bad_yaml": root / "bad.yaml", "binary_yaml": root / "binary.yaml",
             "unknown_yaml": root / "unknown.yaml", "folder": root / "folder", "afile": root / "afile"}
    return root, {k: str(v) for k, v in names.items()}


def snapshot(root: Path) -> dict:
    """Every file and folder under `root`: a file's SHA-256, a folder's marker."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "folder"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def _verb(argv):
    return "unifusion" + (f" {argv[0]}" if argv and argv[0] in (
        "train", "sample", "eval", "demo", "configs", "distill") else "")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, world, capsys, monkeypatch):
    root, names = world
    _, argv, expected = case
    argv = [a.format(**names) for a in argv]
    monkeypatch.chdir(root)                     # default outputs (runs/...) would land here and be seen
    before = snapshot(root)
    n = torch.get_num_threads()
    try:
        rc = main(argv)
    finally:
        torch.set_num_threads(n)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith(f"{_verb(argv)}") and ": error: " in lines[0], err
    assert expected.format(**names) in lines[0], err
    assert snapshot(root) == before


def test_corpus_size():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)
    verbs = {c[1][0] for c in CASES if c[1]}
    assert {"train", "sample", "eval", "demo", "configs", "distill"} <= verbs


def test_through_a_real_process(world):
    """The same policy through `python -m unifusion`: exit code 2, one stderr line, nothing written."""
    root, names = world
    argvs = [["sample", names["run"], "--steps", "0"], ["train", "toy_ve", "--set", "train.nope=1"],
             ["distill", names["run"], "--set", "consistency.N=1"], []]
    before = snapshot(root)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "unifusion", *a], cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for a in argvs]
    for argv, p in zip(argvs, procs, strict=True):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert err.startswith(f"{_verb(argv)}: error: "), err
    assert snapshot(root) == before
