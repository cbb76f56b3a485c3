"""Process groups for DDP: `torchrun` (one process per GPU, or several CPU processes with gloo) or `launch_local`.

Owns the reading of torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`;
PyTorch docs, "torchrun (Elastic Launch)"), the choice of backend (NCCL when CUDA is used, gloo otherwise) and
what happens when a process is lost. Without those variables everything runs in one process and no process group
is created. The group has a timeout (`train.dist_timeout`), so a process that hangs stops the others with an
error instead of blocking them for PyTorch's default 30 minutes; a lost process becomes one `DistributedFailure`
line in the others (`peer_failures`). `launch_local(n, argv)` starts `python -m unifusion ARGV` in `n` local
processes with the same environment as `torchrun --standalone` and, when one fails, stops the others and reports
which one failed and how, in one line (torchrun prints its own multi-line report instead).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "DistributedFailure", "init_distributed", "all_reduce_mean", "barrier", "peer_failures",
           "raise_peer_failure", "launch_local"]


class DistributedFailure(ValueError):
    """Another DDP process failed, or did not answer within `train.dist_timeout` seconds (a one-line message)."""


def raise_peer_failure(e: BaseException, rank: int, timeout: float) -> None:
    """Raise a one-line `DistributedFailure` if `e` is a collective operation's error because another process died
    or hung: torch's `DistError`s (NCCL), or gloo's plain `RuntimeError` (whose message names gloo)."""
    text = str(e)
    if not (isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and "gloo" in text)):
        return
    why = "did not answer in time" if "timed out" in text.lower() or "timeout" in text.lower() else "stopped"
    detail = re.sub(r"^\[[^\]]*\]\s*", "", text.strip().splitlines()[0])    # without gloo's source location
    raise DistributedFailure(f"rank {rank}: another process {why} (train.dist_timeout={timeout:g} s): "
                             f"{detail[:120]}") from None


@contextmanager
def peer_failures(rank: int, timeout: float):
    """`raise_peer_failure` around a block of collective operations."""
    try:
        yield
    except RuntimeError as e:
        raise_peer_failure(e, rank, timeout)
        raise


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but CUDA is not available; use 'cpu' or 'auto'")
        return torch.device("cuda", local_rank)
    if device != "cpu":
        raise ValueError(f"device={device!r} is not one of ['auto', 'cpu', 'cuda']")
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout: float = 600.0) -> DistInfo:
    """Join torchrun's process group if `WORLD_SIZE > 1` (idempotent) and return this process's rank and device.
    `timeout`: seconds a collective operation waits for the other processes before it fails (PyTorch's default is
    30 minutes, which leaves a hung process blocking the others for that long)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout))
    return DistInfo(rank, world, local_rank, dev)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over all processes (identity without a process group)."""
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _how(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with code {rc}"


def launch_local(nproc: int, argv: list[str], grace: float = 10.0) -> str | None:
    """Run `python -m unifusion *argv` in `nproc` processes on this machine as one process group (the environment
    of `torchrun --standalone --nproc_per_node nproc`). When one fails, the others get SIGTERM (SIGKILL after `grace`
    seconds). Returns None if all succeeded, else one line saying which process failed first and how."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(nproc),
               LOCAL_WORLD_SIZE=str(nproc))
    env.setdefault("OMP_NUM_THREADS", "1")                 # as torchrun: one thread per process unless asked
    env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")         # c10d's store warnings after a peer is lost are noise
    procs = [subprocess.Popen([sys.executable, "-m", "unifusion", *argv],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r))) for r in range(nproc)]
    failed = None
    try:
        codes = [None] * nproc
        while failed is None and None in codes:
            codes = [p.poll() for p in procs]
            failed = next((r for r, c in enumerate(codes) if c not in (None, 0)), None)
            time.sleep(0.01)                # the first failure, before the others notice it and exit too
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.send_signal(signal.SIGCONT)   # a stopped (hung) process acts on the SIGTERM only once continued
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    if failed is None:
        return None
    return f"process {failed} of {nproc} {_how(procs[failed].returncode)}; the others were stopped"
