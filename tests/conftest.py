"""Suite-wide settings and fixtures: one torch thread per pytest-xdist worker (`make test` runs 2 workers on 2
cores); `full_disk`, a real file system with (almost) no space left."""
import errno
import shutil
import subprocess

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def full_disk(tmp_path):
    """`fill(free_bytes) -> folder`: a 1 MiB tmpfs mounted under `tmp_path`, filled up to `free_bytes` of free
    space (a real ENOSPC: the errors a full disk raises are those of the kernel, not a mock). Skips where the test
    may not mount (not root, no `mount`, a container without the capability)."""
    root = tmp_path / "tmpfs"
    root.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command to create a small tmpfs")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()[:200]}")

    def fill(free_bytes: int = 0):
        folder = root / "data"
        folder.mkdir(exist_ok=True)
        filler = root / "filler"
        with open(filler, "wb", buffering=0) as f:
            try:
                while f.write(b"\0" * 4096):
                    pass
            except OSError as e:
                assert e.errno == errno.ENOSPC
        with open(filler, "r+b", buffering=0) as f:
            f.truncate(max(0, filler.stat().st_size - free_bytes))
        return folder

    try:
        yield fill
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)
