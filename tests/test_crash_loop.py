"""Crash loop: `kill -9` a training process again and again, at random moments and inside checkpoint writes; every
crash leaves an intact checkpoint, `--resume` removes what the crash left, and the resumed run ends bit-exactly where
an uninterrupted run ends (weights, optimiser, EMA and log)."""
import json
import multiprocessing as mp
import os
import random
import time

import pytest
import torch

from unifusion.cli import main
from unifusion.train import load_config, read_checkpoint, train_from_config

STEPS = 400
SETS = ["train.batch_size=32", "train.progress=false", "net.hidden=16", "net.depth=1", "net.emb_dim=8",
        "data.n=128", "train.threads=1", "train.ema_decays=[0.9]", "train.log_every=1", "train.warmup=10"]


def _argv(out, *extra):
    sets = [*SETS, f"train.steps={STEPS}", *extra]
    return ["train", "toy_ve", "--out", str(out), "--resume", *[a for s in sets for a in ("--set", s)]]


def _temps(folder, prefix="."):
    """The temporary files of `atomic_write` in `folder` (`.<name>.tmp-<pid>...`) whose names start with `prefix`."""
    return sorted(p for p in os.listdir(folder) if ".tmp-" in p and p.startswith(prefix)) if folder.exists() else []


def _wait(cond, timeout=120.0, poll=0.002):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(poll)
    return False


def _records(folder):
    return [(r["step"], r["loss"]) for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines())]


def _crash(ctx, out, delay):
    """Start a resumed run and `kill -9` it once it has written a checkpoint of its own: after `delay` seconds, or
    (`delay=None`) as soon as its next checkpoint write shows its temporary file."""
    ckpt = out / "checkpoint.safetensors"
    mtime = ckpt.stat().st_mtime_ns if ckpt.exists() else None
    p = ctx.Process(target=main, args=(_argv(out, "train.ckpt_every=1"),))
    p.start()
    try:
        assert _wait(lambda: ckpt.exists() and ckpt.stat().st_mtime_ns != mtime or not p.is_alive())
        assert p.is_alive(), f"the run ended before it was killed (exit code {p.exitcode}); raise STEPS"
        if delay is None:
            _wait(lambda: _temps(out, ".checkpoint"), timeout=10.0, poll=0.0005)
        else:
            time.sleep(delay)
    finally:
        p.kill()
        p.join()


@pytest.mark.slow
def test_kill_9_loop_resumes_bit_exactly(tmp_path):
    out, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoint.safetensors"
    ctx = mp.get_context("forkserver")      # children start without re-importing torch (fast; still SIGKILL-able)
    # what a training process imports, once (torch._dynamo: the optimiser's first step imports it, seconds a child)
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "unifusion.cli", "unifusion.train", "unifusion.data",
                                "unifusion.nets", "unifusion.losses", "safetensors.torch", "yaml"])
    rng = random.Random(0)
    trials, inside_write, cut_logs, last_step = 12, 0, 0, 0
    for trial in range(trials):                 # odd trials: inside a checkpoint write; even: at a random moment
        _crash(ctx, out, None if trial % 2 else rng.uniform(0.0, 0.15))
        inside_write += bool(_temps(out, ".checkpoint"))
        log = (out / "log.jsonl").read_text()
        cut_logs += bool(log) and not log.endswith("\n")
        _, meta = read_checkpoint(ckpt)         # intact after every crash, and never behind the last one
        assert meta["step"] >= last_step
        last_step = meta["step"]
    assert inside_write >= 3, inside_write
    assert last_step < STEPS

    p = ctx.Process(target=main, args=(_argv(out, "train.ckpt_every=0"),))   # resume to the end, uninterrupted
    p.start()
    p.join()
    assert p.exitcode == 0 and _temps(out) == []
    assert sorted(os.listdir(out)) == ["checkpoint.safetensors", "config.yaml", "log.jsonl"]

    ref = train_from_config(load_config("toy_ve", [*SETS, f"train.steps={STEPS}", f"out={tmp_path / 'ref'}"]))
    ta, ma = read_checkpoint(ref.checkpoint)
    tb, mb = read_checkpoint(ckpt)
    assert ma["step"] == mb["step"] == STEPS and sorted(ta) == sorted(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert _records(out) == _records(tmp_path / "ref") and len(_records(out)) == STEPS
    print(f"crash loop: {trials} kill -9, {inside_write} inside a checkpoint write, {cut_logs} with a cut log line, "
          f"last checkpoint before the final resume at step {last_step} of {STEPS}")
