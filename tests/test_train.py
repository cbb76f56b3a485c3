"""The training loop: bit-exact resume, NaN stop, checkpoint integrity, configs, EMA, and learning an exact oracle."""
import json

import pytest
import torch
from torch import nn

from unifusion.oracles import GaussianMixture
from unifusion.train import (CheckpointError, EMA, TrainConfig, TrainingDiverged, fit, load_config, load_model,
                             read_checkpoint, train_from_config)
from unifusion.train.checkpoint import save_checkpoint
from unifusion.train.task import DiffusionTask, build_denoiser
from unifusion.losses import build_loss


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def toy_cfg(out, *sets):
    return load_config("toy_ve", [f"out={out}", "train.steps=20", "train.batch_size=64", "train.progress=false",
                                  "net.hidden=32", "net.depth=2", "net.emb_dim=16", "data.n=256",
                                  "train.log_every=5", "train.warmup=4", "train.ema_decays=[0.9, 0.99]",
                                  "train.device=cpu", *sets])


def test_resume_is_bit_exact(tmp_path):
    full = train_from_config(toy_cfg(tmp_path / "a"))
    train_from_config(toy_cfg(tmp_path / "b", "train.steps=10"))
    resumed = train_from_config(toy_cfg(tmp_path / "b"), resume=True)
    assert full.step == resumed.step == 20
    ta, ma = read_checkpoint(full.checkpoint)
    tb, mb = read_checkpoint(resumed.checkpoint)
    assert sorted(ta) == sorted(tb)
    assert any(k.startswith("optim.") for k in ta) and any(k.startswith("ema1.") for k in ta)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    log = lambda d: [json.loads(ln) for ln in (d / "log.jsonl").read_text().splitlines()]
    la, lb = log(tmp_path / "a"), log(tmp_path / "b")
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [5, 10, 15, 20]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_resume_with_another_config_is_refused_and_changes_no_file(tmp_path):
    train_from_config(toy_cfg(tmp_path, "train.steps=5"))
    before = _files(tmp_path)
    with pytest.raises(CheckpointError, match="net.hidden"):
        train_from_config(toy_cfg(tmp_path, "net.hidden=48"), resume=True)
    with pytest.raises(CheckpointError, match="micro-batches"):
        fit_resume_with_micro_batches(tmp_path)
    with pytest.raises(ValueError, match="--resume"):
        train_from_config(toy_cfg(tmp_path, "train.steps=5"))
    assert _files(tmp_path) == before          # config.yaml is not the rejected config


def fit_resume_with_micro_batches(tmp_path):
    """Resume the run of `toy_cfg(tmp_path)` as if two DDP processes ran it (2 micro-batches per step)."""
    from unifusion.train.distributed import DistInfo
    from unifusion.train.task import build_run, train_config
    cfg = toy_cfg(tmp_path)
    task, data, _ = build_run(cfg)
    fit(task, data, train=train_config(cfg), seed=cfg["seed"], out=tmp_path, config=cfg, resume=True,
        dist=DistInfo(0, 2, 0, torch.device("cpu")))


def test_a_cut_last_log_line_does_not_block_resume(tmp_path):
    """A crash in the middle of an append leaves a cut last line in log.jsonl: resume drops it and rewrites the log
    (atomically) as if the run had never stopped; a damaged line before the last is named, and nothing changes."""
    full = train_from_config(toy_cfg(tmp_path / "a"))
    train_from_config(toy_cfg(tmp_path / "b", "train.steps=10"))
    log = tmp_path / "b" / "log.jsonl"
    with open(log, "a") as f:
        f.write('{"step": 11, "lo')
    train_from_config(toy_cfg(tmp_path / "b"), resume=True)
    recs = lambda d: [(r["step"], r["loss"]) for r in map(json.loads, (d / "log.jsonl").read_text().splitlines())]
    assert recs(tmp_path / "b") == recs(tmp_path / "a") and full.step == 20
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "garbage", *lines[2:]]) + "\n")
    before = _files(tmp_path / "b")
    with pytest.raises(ValueError, match=r"log\.jsonl line 2 is not a JSON record"):
        train_from_config(toy_cfg(tmp_path / "b", "train.steps=25"), resume=True)
    assert _files(tmp_path / "b") == before


def test_temporary_files_of_a_crash_are_removed(tmp_path):
    """What a process killed inside `atomic_write` leaves (`.<name>.tmp-<pid>...`) is removed by the next checkpoint
    write and by a resume; a live process's temporary file stays."""
    import os
    from unifusion.utils import remove_stale_temps
    dead = 2 ** 22 + 12345                      # above the default pid_max: no such process
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        for name in (f".checkpoint.tmp-{dead}.safetensors", f".log.tmp-{dead}.jsonl",
                     f".checkpoint.tmp-{os.getppid()}.safetensors"):      # the last: a live process's
            (d / name).write_bytes(b"partial")
    save_checkpoint(a / "checkpoint.safetensors", {"w": torch.ones(3)}, {"step": 1})
    assert sorted(p.name for p in a.iterdir()) == sorted([f".log.tmp-{dead}.jsonl", "checkpoint.safetensors",
                                                          f".checkpoint.tmp-{os.getppid()}.safetensors"])
    train_from_config(toy_cfg(b, "train.steps=2"), resume=True)
    assert sorted(p.name for p in b.iterdir()) == sorted(["checkpoint.safetensors", "config.yaml", "log.jsonl",
                                                          f".checkpoint.tmp-{os.getppid()}.safetensors"])
    assert remove_stale_temps(b / "checkpoint.safetensors") == []   # one file holds the checkpoint: no sidecar


def test_fit_leaves_the_thread_count_alone(tmp_path):
    n = torch.get_num_threads()
    train_from_config(toy_cfg(tmp_path, "train.steps=2", f"train.threads={n + 1}"))
    assert torch.get_num_threads() == n


class _Task:
    """A linear model whose loss turns NaN at a chosen call."""

    def __init__(self, nan_at):
        torch.manual_seed(0)
        self.net, self.calls, self.nan_at = nn.Linear(2, 2), 0, nan_at
        self.modules = {"net": self.net}

    def loss(self, batch, generator):
        self.calls += 1
        out = ((self.net(batch[0]) - batch[0]) ** 2).sum(1)
        return out * float("nan") if self.calls >= self.nan_at else out


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    x = torch.randn(64, 2)
    cfg = TrainConfig(steps=20, batch_size=16, ckpt_every=5, progress=False, log_every=0)
    with pytest.raises(TrainingDiverged, match=r"at step 8;.*checkpoint\.safetensors \(step 5\)"):
        fit(_Task(nan_at=8), x, train=cfg, out=tmp_path)
    tensors, meta = read_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["step"] == 5 and all(torch.isfinite(v).all() for v in tensors.values())
    with pytest.raises(TrainingDiverged, match="no checkpoint was written yet"):
        fit(_Task(nan_at=1), x, train=cfg, out=tmp_path / "fresh")


def test_bad_data_and_options_are_rejected():
    x = torch.randn(32, 2)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fit(_Task(99), x, train=TrainConfig(steps=1, batch_size=8, progress=False))
    with pytest.raises(ValueError, match="divisible"):
        fit(_Task(99), torch.randn(32, 2), train=TrainConfig(steps=1, batch_size=9, grad_accum=2, progress=False))
    with pytest.raises(ValueError, match="needs a GPU"):
        fit(_Task(99), torch.randn(32, 2), train=TrainConfig(steps=1, batch_size=8, precision="bf16", device="cpu"))


def test_checkpoint_truncated_corrupted_or_foreign(tmp_path):
    p = tmp_path / "c.safetensors"
    save_checkpoint(p, {"w": torch.arange(1000.0)}, {"step": 1})
    data = p.read_bytes()
    assert read_checkpoint(p)[1]["step"] == 1
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(tmp_path / "t.safetensors")
    flipped = bytearray(data)
    flipped[-7] ^= 0xFF
    (tmp_path / "f.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupted"):
        read_checkpoint(tmp_path / "f.safetensors")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a unifusion checkpoint"):
        read_checkpoint(tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_full_disk_keeps_previous_checkpoint(full_disk):
    """A real full file system (tmpfs): the error is one line naming the file, the previous checkpoint stays intact
    and no temporary file is left, whatever error type the serialiser would raise."""
    folder = full_disk(free_bytes=64 * 1024)
    p = folder / "c.safetensors"
    save_checkpoint(p, {"w": torch.ones(10)}, {"step": 1})
    before = p.read_bytes()
    with pytest.raises(CheckpointError, match=r"c\.safetensors: No space left on device; the previous checkpoint .* "
                                              r"is intact"):
        save_checkpoint(p, {"w": torch.zeros(100_000)}, {"step": 2})
    assert p.read_bytes() == before and read_checkpoint(p)[1]["step"] == 1
    assert sorted(x.name for x in folder.iterdir()) == ["c.safetensors"]


def test_one_ema_update_for_weight_averages_and_consistency_targets():
    from unifusion.consistency import losses
    from unifusion.train import ema
    assert losses.ema_update is ema.ema_update


def test_ema_follows_its_recursion():
    m = nn.Linear(1, 1, bias=False)
    ema = EMA({"m": m}, decays=(0.9, 0.5), warmup=True)
    ref = [m.weight.item()] * 2
    for n, w in enumerate([1.0, -2.0, 3.0, 0.5, 4.0]):
        m.weight.data.fill_(w)
        ema.update(n)
        for i, d in enumerate((0.9, 0.5)):
            d = min(d, (1 + n) / (10 + n))
            ref[i] = d * ref[i] + (1 - d) * w
    for i in range(2):
        assert ema.averaged(i)["m"].weight.item() == pytest.approx(ref[i], rel=1e-6)


def test_config_checks():
    with pytest.raises(ValueError, match=r"unknown config key 'train.lrr'.*'lr'"):
        load_config("toy_ve", ["train.lrr=1"])
    with pytest.raises(ValueError, match=r"'train.steps' must be an integer, got 'many'"):
        load_config("toy_ve", ["train.steps=many"])
    with pytest.raises(ValueError, match="unknown config key 'nonsense'"):
        load_config("toy_ve", ["nonsense=1"])
    with pytest.raises(ValueError, match="does not exist"):
        load_config("no/such/file.yaml")
    cfg = load_config("toy_ve", ["train.lr=1e-3", "train.ema_decays=[0.9, 0.99]"])
    assert cfg["train"]["lr"] == 1e-3 and cfg["train"]["ema_decays"] == [0.9, 0.99]
    with pytest.raises(ValueError, match=r"unknown config key 'net.widthh'; valid keys in 'net' are .*'hidden'"):
        train_from_config(load_config("toy_ve", ["net.widthh=3", "out=/nonexistent/x"]))


def test_load_model_gives_the_trained_denoiser(tmp_path):
    res = train_from_config(toy_cfg(tmp_path, "train.steps=6"))
    x, s = torch.randn(5, 2), torch.full((5,), 0.7)
    tensors, _ = read_checkpoint(res.checkpoint)
    for ema, prefix in ((True, "ema0.net."), (False, "model.net."), (0.99, "ema1.net.")):
        d = load_model(tmp_path, ema=ema)
        assert torch.equal(d.net.inp.weight, tensors[prefix + "inp.weight"])
    ref = build_denoiser(toy_cfg(tmp_path), (2,))
    ref.net = res.ema.averaged(0)["net"]
    assert torch.equal(load_model(tmp_path)(x, s), ref(x, s))
    with pytest.raises(ValueError, match="keeps EMA decays"):
        load_model(tmp_path, ema=0.5)


def test_training_learns_an_exact_gaussian_denoiser():
    """Trained on N(mu, diag(s^2)) data, the EDM-preconditioned net approaches the closed-form denoiser."""
    err0, err = learn_gaussian_denoiser(device="cpu", precision="fp32")
    assert err < 0.01 * err0 and err < 0.003, (err0, err)


def learn_gaussian_denoiser(device: str, precision: str) -> tuple[float, float]:
    """Train a small EDM MLP on N(mu, diag(s^2)) data; its mean squared error against the closed-form denoiser over
    four noise levels, before and after (400 steps, EMA 0.95). Also the GPU tests' check (`test_gpu.py`)."""
    torch.manual_seed(0)
    mu, var = torch.tensor([[1.0, -0.5]]), torch.tensor([[0.3, 0.05]])
    oracle = GaussianMixture(torch.ones(1), mu, var)
    data = oracle.sample(4096, generator=torch.Generator().manual_seed(1)).float()
    cfg = load_config("toy_ve", ["net.hidden=64", "net.depth=2", "model.sigma_data=0.8"])
    den = build_denoiser(cfg, (2,))
    task = DiffusionTask(den, build_loss("edm", den.process, sigma_data=0.8))
    err0 = _denoiser_error(den, oracle)
    res = fit(task, data, train=TrainConfig(steps=400, batch_size=256, lr=3e-3, progress=False, log_every=0,
                                            ema_decays=(0.95,), device=device, precision=precision))
    den.net.load_state_dict(res.ema.averaged(0)["net"].state_dict())
    den.to("cpu")
    err = _denoiser_error(den, oracle)
    print(device, precision, "denoiser error before / after training", err0, err)
    return err0, err


def _denoiser_error(den, oracle):
    g = torch.Generator().manual_seed(2)
    errs = []
    with torch.no_grad():
        for s in (0.05, 0.3, 1.0, 3.0):
            x = oracle.sample(512, generator=g) + s * torch.randn(512, 2, generator=g, dtype=torch.float64)
            errs.append(((den(x.float(), s).double() - oracle(x, s)) ** 2).sum(1).mean().item())
    return sum(errs) / len(errs)


def test_warmup_stable_decay_schedule_and_its_resume(tmp_path):
    """The lr schedule is warm-up, constant, linear decay to 0; a decay may be added when resuming a checkpoint of the
    constant phase (the steps taken keep their lr) and then equals a run that had the decay from the start."""
    tc = TrainConfig(lr=1.0, warmup=4, decay_start=10, decay_end=20)
    assert [tc.lr_at(s) for s in (0, 3, 9, 10, 15, 19, 25)] == [0.25, 1.0, 1.0, 1.0, 0.5, 0.1, 0.0]
    with pytest.raises(ValueError, match="decay_start"):
        TrainConfig(decay_start=20, decay_end=10).validate()
    decay = ["train.decay_start=10", "train.decay_end=30"]
    full = train_from_config(toy_cfg(tmp_path / "a", *decay))
    train_from_config(toy_cfg(tmp_path / "b", "train.steps=10"))                  # no decay in its config
    resumed = train_from_config(toy_cfg(tmp_path / "b", *decay), resume=True)
    ta, _ = read_checkpoint(full.checkpoint)
    tb, _ = read_checkpoint(resumed.checkpoint)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    lrs = [json.loads(ln)["lr"] for ln in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([2e-3, 2e-3, 1.6e-3, 1.1e-3])                   # logged at steps 5, 10, 15, 20
    with pytest.raises(CheckpointError, match="of step 7,"):  # the 7th step already ran at the full lr
        train_from_config(toy_cfg(tmp_path / "b", "train.steps=30", "train.decay_start=5", "train.decay_end=30"),
                          resume=True)


def test_atomic_write_names_the_target_not_its_temporary_file(tmp_path):
    from unifusion.utils import atomic_write
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        atomic_write(tmp_path / "d.npz", "x")
    assert e.value.filename == str(tmp_path / "d.npz")
    (tmp_path / "f").write_text("a file")
    with pytest.raises(OSError) as e:
        atomic_write(tmp_path / "f" / "x.txt", "x")      # its folder is a file
    assert str(tmp_path / "f") in str(e.value.filename) and ".tmp-" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "f"]
