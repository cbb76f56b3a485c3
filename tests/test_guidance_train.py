"""Guidance end to end: `unifusion sample --class/--guidance`, `unifusion distill --guidance`, a noise-conditional
classifier trained by `unifusion train` (it learns the exact mixture classifier), and every bad flag as one line
with exit code 2 and nothing written."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unifusion.cli import main
from unifusion.guidance import classifier, load_classifier, num_classes
from unifusion.oracles import eight_gaussians
from unifusion.train import load_config, load_model, train_from_config

TINY = ["train.steps=6", "train.batch_size=32", "train.progress=false", "net.hidden=16", "net.depth=1",
        "net.emb_dim=8", "data.n=128", "train.threads=1", "train.log_every=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A class-conditional and an unconditional tiny eight-Gaussians model."""
    root = tmp_path_factory.mktemp("runs")
    cond = train_from_config(load_config("toy_ve", TINY + ["net.num_classes=8", "net.label_dropout=0.2"]),
                             out=root / "cond")
    plain = train_from_config(load_config("toy_ve", TINY), out=root / "plain")
    return cond.checkpoint.parent, plain.checkpoint.parent


def _error(capsys, argv, fn=main):
    rc = fn(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_sample_with_classes_and_guidance(runs, tmp_path):
    cond, _ = runs
    assert num_classes(load_model(cond)) == 8
    out = tmp_path / "s.npz"
    assert main(["sample", str(cond), "--class", "3,5", "--guidance", "2", "--guidance-interval", "0.1,5",
                 "--n", "10", "--steps", "4", "--out", str(out)]) == 0
    with np.load(out) as z:
        assert z["samples"].shape == (10, 2) and np.isfinite(z["samples"]).all()
        assert z["labels"].tolist() == [3] * 5 + [5] * 5
        info = __import__("json").loads(str(z["info"]))
    assert info["classes"] == [3, 5] and info["guidance"] == 2.0 and info["guidance_interval"] == [0.1, 5.0]
    assert main(["sample", str(cond), "--class", "all", "--n", "16", "--steps", "3",
                 "--out", str(tmp_path / "a.npz")]) == 0
    with np.load(tmp_path / "a.npz") as z:
        assert sorted(set(z["labels"].tolist())) == list(range(8))
    assert (tmp_path / "a.png").stat().st_size > 0


def test_bad_conditioning_flags_are_one_line_errors_and_write_nothing(runs, tmp_path, capsys):
    cond, plain = runs
    before = sorted(p.name for p in cond.iterdir())
    out = ["--out", str(tmp_path / "x.npz"), "--n", "4", "--steps", "2"]
    cases = [([str(cond), "--class", "8"], "--class 8 is out of range: this model has classes 0..7"),
             ([str(cond), "--class", "-1"], "out of range"),
             ([str(cond), "--class", "3,x"], "--class must be"),
             ([str(cond), "--class", "3", "--guidance", "-1"], "--guidance must be a finite number >= 0"),
             ([str(cond), "--class", "3", "--guidance", "nan"], "--guidance must be a finite number >= 0"),
             ([str(cond), "--class", "3", "--guidance", "inf"], "--guidance must be a finite number >= 0"),
             ([str(cond), "--class", "3", "--guidance", "2", "--guidance-interval", "5,1"], "lo < hi"),
             ([str(cond), "--class", "3", "--guidance", "2", "--guidance-interval", "1"], "two numbers"),
             ([str(cond), "--class", "3", "--guidance-interval", "0.1,1"], "needs --guidance"),
             ([str(cond), "--guidance", "2"], "--guidance needs --class"),
             ([str(plain), "--class", "3"], "--class needs a class-conditional model"),
             ([str(plain), "--guidance", "2"], "--guidance needs a class-conditional model")]
    for argv, msg in cases:
        assert msg in _error(capsys, ["sample", *argv, *out]), argv
    assert not list(tmp_path.iterdir()) and sorted(p.name for p in cond.iterdir()) == before


def test_distill_a_guided_teacher(runs, tmp_path, capsys):
    from unifusion.consistency.cli import main as distill
    from unifusion.consistency import load_consistency
    cond, plain = runs
    sets = sum([["--set", s] for s in ["train.steps=2", "train.batch_size=32", "train.progress=false",
                                       "train.log_every=0", "consistency.N=4"]], [])
    assert distill([str(cond), "--out", str(tmp_path / "cd"), "--guidance", "2", *sets]) == 0
    f, _ = load_consistency(tmp_path / "cd")
    assert f.config["consistency"]["guidance"] == 2.0
    assert main(["sample", str(tmp_path / "cd"), "--sampler", "consistency", "--class", "1", "--n", "6",
                 "--out", str(tmp_path / "c.npz")]) == 0
    for argv, msg in (([str(plain), "--guidance", "2"], "class-conditional teacher"),
                      ([str(cond), "--guidance", "-1"], "consistency.guidance must be a finite number >= 0"),
                      (["--ct", "toy_ve", "--guidance", "2"], "needs a teacher")):
        assert msg in _error(capsys, [*argv, "--out", str(tmp_path / "bad"), *sets], distill), argv
    assert "--guidance applies to diffusion models" in _error(
        capsys, ["sample", str(tmp_path / "cd"), "--sampler", "consistency", "--class", "1", "--guidance", "2"])
    assert not (tmp_path / "bad").exists()


def test_consistency_task_drops_labels_for_teacher_and_student_alike(runs):
    from unifusion.consistency.task import build_consistency_run, distill_config
    from unifusion.data.loader import in_memory
    cond, _ = runs
    task, data, labels = build_consistency_run(distill_config(teacher=cond, sets=["consistency.guidance=2"]))
    assert task.label_dropout == 0.2 and task.f.denoiser.net.emb.label_dropout == 0.0
    seen = []
    teacher = task.teacher
    def recording(x, s, class_labels=None):
        seen.append(class_labels.clone())
        return teacher(x, s, class_labels=class_labels)
    task.teacher = recording
    y = torch.arange(64) % 8
    task.loss((in_memory(data)[0][:64], y), torch.Generator().manual_seed(0))
    dropped = seen[0] < 0
    assert 0 < int(dropped.sum()) < 64 and torch.equal(seen[0][~dropped], y[~dropped])


def test_noise_conditional_classifier_learns_the_exact_mixture_classifier(runs, tmp_path, capsys):
    """`unifusion train` with `task: classifier` on eight Gaussians: the trained classifier's accuracy at several
    noise levels is close to the exact classifier's (the responsibilities), and classifier guidance with it moves
    samples into the requested component."""
    cfg = tmp_path / "clf.yaml"
    cfg.write_text("task: classifier\ndata: {name: eight_gaussians, n: 4000}\nprocess: {name: edm}\n"
                   "model: {target: edm, sigma_data: 1.4}\n"
                   "net: {kind: mlp, hidden: 64, depth: 2, emb_dim: 32, out_dim: 8}\n"
                   "loss: {name: cross_entropy, noise: lognormal, p_mean: 0.0, p_std: 1.5}\n"
                   "train: {steps: 400, batch_size: 256, lr: 3.0e-3, warmup: 20, ema_decays: [0.99], threads: 1, "
                   "progress: false, log_every: 0}\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "clf")]) == 0
    clf, o = load_classifier(tmp_path / "clf"), eight_gaussians()
    g = torch.Generator().manual_seed(0)
    x0, y = o.sample_labelled(4000, g)
    for s in (0.1, 0.7, 2.0):
        x = x0 + s * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        exact = (o.log_responsibilities(x, s).argmax(1) == y).double().mean()
        learned = (clf(x.float(), s).argmax(1) == y).double().mean()
        assert learned > exact - 0.03, (s, float(learned), float(exact))
    guided = classifier(o, lambda x, s: clf(x.float(), s).double(), 4.0)
    x = 2.0 * torch.randn(500, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 8, (500,), generator=g)
    s = torch.full((500,), 2.0, dtype=torch.float64)
    before = (o.log_responsibilities(o.denoiser(x, s), 0.0).argmax(1) == y).double().mean()
    after = (o.log_responsibilities(guided(x, s, class_labels=y), 0.0).argmax(1) == y).double().mean()
    assert after > before + 0.3, (float(before), float(after))
    # a classifier is not a diffusion model, and the other way round
    with pytest.raises(ValueError, match="not a diffusion-model checkpoint"):
        load_model(tmp_path / "clf")
    assert "not a diffusion-model checkpoint" in _error(capsys, ["sample", str(tmp_path / "clf")])
    with pytest.raises(ValueError, match="not a classifier checkpoint"):
        load_classifier(runs[0])


def test_classifier_config_errors(tmp_path, capsys):
    base = ["--out", str(tmp_path / "c"), "--set", "train.steps=2", "--set", "train.progress=false"]
    assert "net.out_dim" in _error(capsys, ["train", "digits_classifier", *base, "--set", "net.out_dim=5"])
    assert "labelled data set" in _error(capsys, ["train", "digits_classifier", *base, "--set", "data.name=moons"])
    assert "loss.name of a classifier" in _error(capsys, ["train", "digits_classifier", *base,
                                                          "--set", "loss.name=edm"])
    assert "config key 'task' must be one of" in _error(capsys, ["train", "toy_ve", *base, "--set", "task=bogus"])
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("loss,process,target", [("ddpm", "ddpm", "eps"), ("ncsn", "ve", "score"),
                                                 ("score_sde", "vp", "score"), ("vdm", "vp-cosine", "eps"),
                                                 ("mse", "rf", "flow"),
                                                 ("edm", None, "edm"), ("x0", "subvp", "x0"), ("v", "vp", "v")])
@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_every_loss_process_and_network_trains_the_label_embedding(loss, process, target, kind):
    """Class-conditional training: the labels reach the network through every loss, and the loss gradient
    reaches exactly the embedding rows of the labels used."""
    from unifusion.losses import build_loss
    from unifusion.nets import build_net
    from unifusion.parametrization import Denoiser
    from unifusion.processes import get_process
    torch.manual_seed(0)
    net = build_net("mlp", dim=4, hidden=16, depth=1, emb_dim=8, num_classes=5) if kind == "mlp" else \
        build_net("unet", img_resolution=4, in_channels=1, model_channels=8, channel_mult=[1], num_blocks=1,
                  attn_resolutions=[], num_classes=5)
    with torch.no_grad():                   # the zero-initialised output layers would block every gradient
        for w in net.parameters():
            if not w.any():
                w.normal_(0, 0.1)
    p = None if process is None else get_process(process)
    den = Denoiser(net, p, target)
    x0 = torch.randn(16, 4) if kind == "mlp" else torch.randn(16, 1, 4, 4)
    y = torch.tensor([0, 2] * 8)
    build_loss(loss, p).__call__(den, x0, torch.Generator().manual_seed(0), class_labels=y).mean().backward()
    used = net.emb.label.weight.grad.abs().sum(1) > 0
    assert used.tolist() == [True, False, True, False, False, False], used


def test_digits_class_report_of_the_test_split_is_its_own_floor():
    """The real test digits asked to be their own labels: agreement, per-class FD and (round-robin) FD equal their
    floors exactly; bad labels raise."""
    from unifusion.data import load_digits
    from unifusion.metrics import digits_class_report
    x, y = load_digits("test")
    perm = torch.randperm(360, generator=torch.Generator().manual_seed(0))
    rep = digits_class_report(x[perm], y[perm])
    assert rep["agreement"] == rep["agreement_floor"] > 0.98
    for c in range(10):
        assert abs(rep["fd_per_class"][c] - rep["fd_floor_per_class"][c]) < 1e-5     # the same points, reordered
    assert abs(rep["fd"] - rep["fd_floor"]) < 1e-5
    wrong = digits_class_report(x, (y + 1) % 10)
    assert wrong["agreement"] < 0.05 and all(wrong["fd_per_class"][c] > rep["fd_per_class"][c] for c in range(10))
    with pytest.raises(ValueError, match="labels must be 360 integers in 0..9"):
        digits_class_report(x, y[:10])
