"""torchrun DDP: 2 gloo processes train the same weights as 1 process with the same global batch."""
import os
import subprocess
import sys

import torch

from unifusion.train import load_config, read_checkpoint, train_from_config

SETS = ["train.steps=8", "train.batch_size=64", "train.progress=false", "net.hidden=32", "net.depth=2",
        "net.emb_dim=16", "data.n=256", "train.log_every=4", "train.ema_decays=[0.9]", "train.threads=1",
        "train.device=cpu"]  # gloo on the CPU, also on a machine with a GPU


def _run(args, retries=1):
    """Run `python args...`; one retry covers a rendezvous port taken by another process in the meantime."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for _attempt in range(retries + 1):
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
        if proc.returncode == 0:
            return proc
        if "address already in use" not in (proc.stderr + proc.stdout).lower():
            break
    raise AssertionError(f"exit code {proc.returncode}:\n{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}")


def _sets(*extra):
    return [a for s in (*SETS, *extra) for a in ("--set", s)]


def test_two_gloo_processes_match_one_process(tmp_path):
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "unifusion", "train",
          "toy_ve", "--out", str(tmp_path / "ddp"), *_sets()])
    n = torch.get_num_threads()
    try:  # the single-process runs in this process: the same code path without torchrun's environment
        train_from_config(load_config("toy_ve", [f"out={tmp_path / 'one'}", *SETS, "train.grad_accum=2"]))
        train_from_config(load_config("toy_ve", [f"out={tmp_path / 'plain'}", *SETS]))
    finally:
        torch.set_num_threads(n)
    t2, m2 = read_checkpoint(tmp_path / "ddp" / "checkpoint.safetensors")
    t1, m1 = read_checkpoint(tmp_path / "one" / "checkpoint.safetensors")
    tp, _ = read_checkpoint(tmp_path / "plain" / "checkpoint.safetensors")
    assert (m2["world_size"], m1["world_size"], m2["micro_batches"], m1["micro_batches"]) == (2, 1, 2, 2)
    assert m2["step"] == m1["step"] == 8
    model = [k for k in t1 if k.startswith(("model.", "ema0."))]
    for k in model:
        assert torch.allclose(t2[k], t1[k], rtol=1e-5, atol=1e-6), k
    # a different micro-batch split draws other noise: the comparison above is not vacuous
    assert max((tp[k] - t1[k]).abs().max().item() for k in model) > 1e-4


def _children(pid):
    """`{RANK: pid}` of the processes `launch_local` started (read from /proc)."""
    from pathlib import Path
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            rank = next((e[5:].decode() for e in env if e.startswith(b"RANK=")), None)
            if rank is not None:
                out[int(rank)] = int(child)
    return out


def test_a_lost_process_ends_in_a_short_message(tmp_path):
    """`--nproc-per-node 2`: one process killed (kill -9) or hung (SIGSTOP). The other stops within
    train.dist_timeout with one line, and the launcher adds one line naming the process; no traceback."""
    import signal
    import time
    sets = _sets("train.steps=1000000", "train.log_every=1", "train.dist_timeout=3")
    runs, env = {}, dict(os.environ, OMP_NUM_THREADS="1")
    for how in ("kill", "hang"):
        out = tmp_path / how
        cmd = [sys.executable, "-m", "unifusion", "train", "toy_ve", "--nproc-per-node", "2", "--out", str(out), *sets]
        runs[how] = (out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    try:
        for how, (out, proc) in runs.items():
            end = time.monotonic() + 240
            while not ((out / "log.jsonl").exists() and (out / "log.jsonl").stat().st_size) and proc.poll() is None:
                assert time.monotonic() < end, "training did not start"
                time.sleep(0.1)
            ranks = _children(proc.pid)
            assert sorted(ranks) == [0, 1], ranks
            os.kill(ranks[1], signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        for how, (_, proc) in runs.items():
            _, err = proc.communicate(timeout=120)
            lines = err.strip().splitlines()
            assert proc.returncode == 2 and len(lines) <= 2 and "Traceback" not in err, err
            assert all(ln.startswith("unifusion train: error: ") for ln in lines), err
            if how == "kill":
                assert lines[-1].endswith("process 1 of 2 was killed by SIGKILL; the others were stopped"), err
            else:
                assert "rank 0: another process did not answer in time (train.dist_timeout=3 s)" in err, err
    finally:
        for _, proc in runs.values():
            if proc.poll() is None:
                proc.kill()


def test_two_gloo_processes_on_an_image_folder_match_grad_accumulation(tmp_path):
    """The data pipeline under DDP: a PNG folder read by a worker per process, x-flip and dropout on; 2 ranks train
    what 1 process with grad_accum=2 trains (the same examples, flips and noise per micro-batch)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "png").mkdir()
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "png" / f"{i:03d}.png")
    sets = [f"data.name={tmp_path / 'png'}", "data.num_workers=1", "data.x_flip=true", "net.kind=unet",
            "net.model_channels=8", "net.channel_mult=[1]", "net.num_blocks=1", "net.attn_resolutions=[]",
            "net.dropout=0.2", "process.name=edm", "model.target=edm", "loss.name=edm", "train.steps=5",
            "train.batch_size=16", "train.progress=false", "train.log_every=5", "train.ema_decays=[0.9]",
            "train.device=cpu"]
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "unifusion", "train",
          "toy_ve", "--out", str(tmp_path / "ddp"), *[a for s in sets for a in ("--set", s)]])
    train_from_config(load_config("toy_ve", [f"out={tmp_path / 'one'}", *sets, "train.grad_accum=2"]))
    t2, m2 = read_checkpoint(tmp_path / "ddp" / "checkpoint.safetensors")
    t1, m1 = read_checkpoint(tmp_path / "one" / "checkpoint.safetensors")
    assert m2["data"] == m1["data"] and (m2["world_size"], m1["world_size"]) == (2, 1)
    for k in (k for k in t1 if k.startswith(("model.", "ema0."))):
        assert torch.allclose(t2[k], t1[k], rtol=1e-5, atol=1e-6), k
