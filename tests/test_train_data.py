"""Training from `Dataset`s: the lazy readers train the weights the tensor path trains, bit for bit; resume in the
middle of an epoch with worker processes is bit-exact; a folder larger than memory is never decoded whole; a dead
worker stops the run with one line and the last checkpoint intact."""
import json
import os
import resource
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unifusion.data import ImageFolder, open_npz, without_labels
from unifusion.data.loader import LoaderError, LoaderOptions
from unifusion.losses import build_loss
from unifusion.train import TrainConfig, fit, load_config, read_checkpoint
from unifusion.train.task import DiffusionTask, build_denoiser


def _unet_task(res=8, channels=3, seed=0):
    cfg = load_config(None, ["net.kind=unet", "net.model_channels=8", "net.channel_mult=[1]", "net.num_blocks=1",
                             "net.attn_resolutions=[]", "net.dropout=0.1", "process.name=edm", "model.target=edm",
                             "loss.name=edm", "model.sigma_data=0.5"])
    torch.manual_seed(seed)
    den = build_denoiser(cfg, (channels, res, res))
    return DiffusionTask(den, build_loss("edm", den.process, sigma_data=0.5))


def _write_pngs(root: Path, n: int, size: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i:05d}.png")
    return root


def _tc(**kw):
    base = dict(steps=7, batch_size=16, lr=1e-3, ema_decays=(0.9,), progress=False, log_every=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def _weights(task):
    return {k: v.clone() for k, v in task.modules["net"].state_dict().items()}


def test_dataset_path_equals_tensor_path(tmp_path):
    """A lazily decoded PNG folder read by 2 workers, and a memory-mapped uint8 `.npz`, train the weights the decoded
    float tensor trains (x-flip on), bit for bit."""
    folder = ImageFolder(_write_pngs(tmp_path / "png", 40))
    x, y = folder.tensors()
    np.savez(tmp_path / "a.npz", images=folder.pixels.numpy(), labels=y.numpy())
    runs = {}
    for name, data, workers in (("tensor", x, 0), ("folder", without_labels(folder), 2),
                                ("npz", without_labels(open_npz(tmp_path / "a.npz")), 1)):
        task = _unet_task()
        fit(task, data, train=_tc(), seed=3, loader=LoaderOptions(num_workers=workers, x_flip=True))
        runs[name] = _weights(task)
    start = _weights(_unet_task())
    for k in runs["tensor"]:
        assert torch.equal(runs["folder"][k], runs["tensor"][k]), k
        assert torch.equal(runs["npz"][k], runs["tensor"][k]), k
    assert any(not torch.equal(runs["tensor"][k], start[k]) for k in start)       # it trained


def test_resume_mid_epoch_with_workers_is_bit_exact(tmp_path):
    """40 images, batch 16: step 3 ends mid-epoch; stopping there and resuming with 2 workers reproduces the
    uninterrupted run exactly (weights, EMA, optimiser), and the checkpoint holds the data position."""
    folder = without_labels(ImageFolder(_write_pngs(tmp_path / "png", 40)))
    two = LoaderOptions(num_workers=2, x_flip=True)
    fit(_unet_task(), folder, train=_tc(ckpt_every=3), seed=1, out=tmp_path / "a", loader=two)
    fit(_unet_task(), folder, train=_tc(steps=3), seed=1, out=tmp_path / "b", loader=two)
    fit(_unet_task(), folder, train=_tc(ckpt_every=3), seed=1, out=tmp_path / "b", loader=two, resume=True)
    ta, ma = read_checkpoint(tmp_path / "a" / "checkpoint.safetensors")
    tb, mb = read_checkpoint(tmp_path / "b" / "checkpoint.safetensors")
    assert sorted(ta) == sorted(tb) and ma["step"] == mb["step"] == 7
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert mb["data"] == {"step": 7, "epoch": 2, "offset": 32, "examples_seen": 112, "n": 40, "x_flip": True}


def _tree_rss(pid: int) -> int:
    """Resident bytes of process `pid` and its children (proportional set size: shared pages counted once)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("Pss:")) * 1024
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux /proc")
def test_a_folder_of_2000_pngs_trains_in_less_memory_than_its_decoded_size(tmp_path):
    """2000 generated 160x160 RGB PNGs (decoded to float32: 614 MB) train for one epoch with 2 workers; the peak
    resident memory the run adds to this process and its workers (proportional set size, so pages the workers share
    with it count once; sampled every 50 ms) stays below that size."""
    n, size = 2000, 160
    rng = np.random.default_rng(0)
    root = tmp_path / "png"
    root.mkdir()
    base = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    for i in range(n):                    # blocky images: small files, full decoding work
        Image.fromarray(np.kron(base[i], np.ones((size // 4, size // 4, 1), dtype=np.uint8))).save(
            root / f"{i:05d}.png", compress_level=1)
    decoded = n * 3 * size * size * 4
    ds = without_labels(ImageFolder(root))
    task = _PixelTask()
    base_rss, peak, stop = _tree_rss(os.getpid()), [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(os.getpid()))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        res = fit(task, ds, train=_tc(steps=n // 20, batch_size=20, ema_decays=()),
                  loader=LoaderOptions(num_workers=2))
    finally:
        stop.set()
        watcher.join()
    added = peak[0] - base_rss
    print(f"decoded float32 size {decoded / 2**20:.0f} MiB, peak added {added / 2**20:.0f} MiB, "
          f"ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")
    assert res.step == 100 and np.isfinite(res.loss)
    assert 0 < added < decoded, (added, decoded)


class _PixelTask:
    """A 1x1 convolution learning the identity: the data pipeline's test needs a step, not a model."""

    def __init__(self):
        torch.manual_seed(0)
        self.net = torch.nn.Conv2d(3, 3, 1)
        self.modules = {"net": self.net}

    def loss(self, batch, generator):
        x = batch[0]
        return ((self.net(x) - x) ** 2).mean((1, 2, 3))


class _DiesAt(torch.utils.data.Dataset):
    """Vectors; the worker that reads example `bad` dies."""

    def __init__(self, n=64, bad=-1):
        self.x, self.bad = torch.randn(n, 2, generator=torch.Generator().manual_seed(0)), bad

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if i == self.bad and torch.utils.data.get_worker_info() is not None:
            os._exit(9)
        return self.x[i]


class _Linear:
    def __init__(self):
        torch.manual_seed(0)
        self.net = torch.nn.Linear(2, 2)
        self.modules = {"net": self.net}

    def loss(self, batch, generator):
        return ((self.net(batch[0]) - batch[0]) ** 2).sum(1)


def test_a_dead_worker_ends_training_with_one_line_and_the_last_checkpoint_intact(tmp_path):
    from unifusion.data.loader import BatchOrder

    order = BatchOrder(64, 8, 0)
    bad = int(order(7)[0])       # read for step 8 only (8 steps per epoch), requested when step 7 starts (prefetch 1)
    with pytest.raises(LoaderError, match=r"^data loading failed at step \d+: data loader worker process \d+ died "
                                          r"\(exit code 9\); last checkpoint: .*checkpoint.safetensors \(step 6\)$"):
        fit(_Linear(), _DiesAt(bad=bad), train=_tc(steps=10, batch_size=8, ckpt_every=2), out=tmp_path,
            loader=LoaderOptions(num_workers=1, prefetch=1))
    _, meta = read_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["step"] == 6


def test_callbacks_preview_evaluate_and_see_every_record(tmp_path):
    """`train.preview_every` writes PNGs of EMA samples, `train.eval_every` logs a sliced Wasserstein distance well
    below the untrained model's, and a user's callback sees every record and checkpoint without touching the loop."""
    from unifusion.train.callbacks import Callback, Run
    from unifusion.train.distributed import DistInfo
    from unifusion.train.task import build_run, callbacks, loader_options, train_config

    class Recorder(Callback):
        def __init__(self):
            self.records, self.checkpoints, self.ended = [], [], False

        def on_log(self, run, record):
            self.records.append(record)

        def on_checkpoint(self, run, path):
            self.checkpoints.append((run.step, path.name))

        def on_end(self, run):
            self.ended = True

    sets = ["train.steps=400", "train.batch_size=128", "train.log_every=200", "train.ckpt_every=200",
            "train.warmup=0", "train.ema_decays=[0.95]", "train.preview_every=200", "train.preview_n=200",
            "train.eval_every=200", "train.eval_n=300",
            "train.progress=false", "train.device=cpu", "net.hidden=64", "net.depth=2", "data.n=2000",
            "sample.steps=8", f"out={tmp_path}"]
    cfg = load_config("toy_ve", sets)
    task, data, _ = build_run(cfg)
    rec, extra = Recorder(), callbacks(cfg, task, data)
    untrained = extra[1].metrics(Run(task, None, 0, DistInfo(0, 1, 0, torch.device("cpu")), data_shape=(2,)))
    fit(task, data, train=train_config(cfg), seed=0, out=tmp_path, config=cfg, loader=loader_options(cfg),
        callbacks=[*extra, rec])
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["step_0000200.png", "step_0000400.png"]
    evals = [r for r in rec.records if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [200, 400] and evals[1]["sw2"] < 0.6 * untrained["sw2"], (evals, untrained)
    assert rec.checkpoints == [(200, "checkpoint.safetensors"), (400, "checkpoint.safetensors")] and rec.ended
    logged = [json.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == rec.records                       # the built-in JSONL log is one more callback
