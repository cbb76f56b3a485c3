"""Small helpers every module shares: broadcasting per-example scalars, input checks and atomic file writes.

One home for the three things the house rules forbid re-writing: the `[B] -> [B, 1, ..., 1]`
broadcast (`expand_like`), the `ValueError` that names a bad argument (`check_*`), and the write that leaves a
file complete or untouched (`atomic_write`, with `remove_stale_temps` for what a crash left behind).
"""
from __future__ import annotations

import errno
import glob
import math
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

__all__ = [
    "expand_like", "coef", "atomic_write", "atomic_write_dir", "remove_stale_temps", "as_float_tensor",
    "check_finite", "check_nonnegative", "check_in_range",
    "check_positive_int", "check_choice", "check_class_labels", "default_dtype_of", "generator_device", "randn_like",
]


def expand_like(c: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or a per-example vector `c` of shape `[B]` against `x` of shape `[B, ...]`.

    A 0-d or 1-element `c` broadcasts as is; a `[B]` vector gets trailing singleton dimensions.
    This is the only place that appends dimensions (k-diffusion's `append_dims`).
    """
    c = torch.as_tensor(c, device=x.device) if isinstance(c, torch.Tensor) else \
        torch.as_tensor(c, dtype=torch.float64, device=x.device)  # python floats keep full precision
    if c.ndim == 0:
        return c
    if c.ndim != 1:
        raise ValueError(f"per-example scalars must have shape [B] or [], got shape {tuple(c.shape)}")
    if x.ndim == 0 or (c.shape[0] != x.shape[0] and c.shape[0] != 1):
        raise ValueError(
            f"per-example scalars of shape {tuple(c.shape)} do not match a batch of shape {tuple(x.shape)}")
    return c.reshape(c.shape + (1,) * (x.ndim - 1))


def coef(c, x: torch.Tensor):
    """A coefficient ready to multiply `x`: a python float as is (full precision), a 0-d or per-example `[B]`
    tensor broadcast by `expand_like` and cast to `x`'s dtype (coefficients are computed in float64 and cast
    only here, at the multiplication)."""
    if isinstance(c, float):
        return c
    return expand_like(c, x).to(x.dtype)


def _temp_name(path: Path) -> Path:
    """The temporary file `atomic_write` writes before renaming it over `path` (hidden, tagged with the pid)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's live process
        return True
    return True


def remove_stale_temps(path) -> list[Path]:
    """Remove the temporary files that `atomic_write(path, ...)` calls of crashed processes left next to `path`
    (those of live processes stay); returns the removed paths. A run folder's owner calls it before writing."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.stem)}.tmp-*{glob.escape(path.suffix)}"):
        pid = tmp.name[len(path.stem) + 6:len(tmp.name) - len(path.suffix)]
        if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_write(path, write: Callable[[Path], object] | str | bytes, *, fsync: bool = False) -> Path:
    """Write `path` so that it is either complete or untouched: `write(tmp)` (or the text / bytes `write`) goes to a
    temporary file in the same folder, keeping `path`'s extension (numpy and matplotlib pick formats by it),
    which is then renamed over `path`; on any failure the temporary file is removed and `path` keeps its old
    content. `fsync=True` flushes the data to disk before the rename (checkpoints). An `OSError` of the write
    (a full disk, a folder at `path`) names `path`, not the temporary file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        if isinstance(write, str):
            tmp.write_text(write)
        elif isinstance(write, bytes):
            tmp.write_bytes(write)
        else:
            write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, str(tmp), tmp):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    return path


def atomic_write_dir(path, write: Callable[[Path], object]) -> Path:
    """Write a folder so that it is either complete or absent: `write(tmp)` fills a temporary sibling folder, which
    is then renamed to `path`; on any failure the temporary folder is removed. `path` must not exist or be an empty
    folder (`ValueError` otherwise: nothing is overwritten)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{path} already exists and is not an empty folder; remove it or choose another")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def generator_device(generator: torch.Generator | None, default=None):
    """The device a random draw from `generator` is made on: the generator's own (`default` for None, the global
    RNG). Drawing there and then moving makes a CPU generator give the same numbers for CPU and CUDA tensors."""
    return generator.device if generator is not None else default


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """`N(0, I)` noise shaped like `x` in its dtype, drawn on `generator`'s device, returned on `x`'s."""
    dev = generator_device(generator, x.device)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=dev).to(x.device)


def default_dtype_of(*xs) -> torch.dtype:
    """float64 unless one of `xs` is a floating tensor, whose dtype then wins (coefficients stay float64)."""
    for x in xs:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.dtype
    return torch.float64


def as_float_tensor(x, name: str, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """`x` as a floating tensor (python numbers become float64), with NaN rejected by name."""
    if isinstance(x, torch.Tensor):
        t = x if x.is_floating_point() else x.to(torch.float64)
        if dtype is not None:
            t = t.to(dtype)
        if device is not None:
            t = t.to(device)
    else:
        try:
            t = torch.as_tensor(x, dtype=dtype or torch.float64, device=device)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{name} must be a number or a tensor of numbers, got {x!r}") from e
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")
    return t


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise `ValueError` naming `name` if `x` holds NaN or +-Inf."""
    if not torch.isfinite(x).all():
        bad = "NaN" if torch.isnan(x).any() else "Inf"
        raise ValueError(f"{name} contains {bad}; finite values are required")
    return x


def check_nonnegative(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise `ValueError` naming `name` unless every entry is >= 0 (Inf is allowed, NaN is not)."""
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN")
    if (x < 0).any():
        raise ValueError(f"{name} must be >= 0, got min {x.min().item():.6g}")
    return x


def check_in_range(x: torch.Tensor, name: str, lo: float, hi: float, rtol: float = 1e-6) -> torch.Tensor:
    """Raise `ValueError` naming `name` unless `lo <= x <= hi` (a relative slack `rtol` absorbs float32 rounding)."""
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN")
    slack = rtol * max(1.0, abs(lo), abs(hi) if math.isfinite(hi) else 1.0)
    if x.numel() and ((x < lo - slack).any() or (x > hi + slack).any()):
        raise ValueError(
            f"{name} must lie in [{lo:g}, {hi:g}], got values in [{x.min().item():.6g}, {x.max().item():.6g}]")
    return x


def check_positive_int(n, name: str) -> int:
    """Raise `ValueError` naming `name` unless `n` is an integer >= 1."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    return n


def check_choice(value, name: str, choices) -> None:
    """Raise `ValueError` naming `name` and listing `choices` unless `value` is one of them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {sorted(choices)}")


def check_class_labels(y, batch: int, num_classes: int, device=None) -> torch.Tensor:
    """Class labels as an int64 `[batch]` tensor on `device`: integers in `[-1, num_classes - 1]`, `-1` meaning
    "no label" (the unconditional model of classifier-free guidance). Anything else raises `ValueError` naming it."""
    if not isinstance(y, torch.Tensor):
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"class_labels must be integers of shape [{batch}], got {y!r}") from None
    if y.shape != (batch,) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"class_labels must be integers of shape [{batch}], got {y.dtype} of shape {tuple(y.shape)}")
    if y.numel() and ((y < -1) | (y >= num_classes)).any():
        raise ValueError(f"class_labels must lie in [-1, {num_classes - 1}] (-1 = no label), "
                         f"got values in [{int(y.min())}, {int(y.max())}]")
    return y.to(device=device, dtype=torch.long)
