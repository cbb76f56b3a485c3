"""Checkpoints: one safetensors file that carries its own JSON (config, step, RNG state) and a checksum.

Owns the on-disk format and its two guarantees:
* atomic: tensors and metadata are serialised in memory, written by Python's file I/O (so a full disk is an
  `OSError`, whatever the serialiser) to a temporary file in the same folder, flushed to disk and renamed over
  the old checkpoint (`os.replace`), so a crash or a full disk leaves the previous checkpoint intact. The file is
  the one source of truth: no second file can lag behind it (`read_checkpoint(path)[1]` is the metadata), and
  temporary files a crash left are removed by the next write;
* checked: the metadata holds a SHA-256 of every tensor's bytes, so a truncated or corrupted file, or one
  that is not a unifusion checkpoint, raises a one-line `CheckpointError` (a `ValueError`) instead of loading
  garbage. Nothing is ever unpickled (safetensors only).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..utils import atomic_write, remove_stale_temps

__all__ = ["CheckpointError", "FORMAT", "save_checkpoint", "read_checkpoint", "tensor_digest"]

FORMAT = "unifusion-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read (one-line message; the CLI exits 2)."""


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the sorted keys, dtypes, shapes and raw bytes of `tensors`."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write `tensors` and the JSON-serialisable `meta` atomically to `path`.

    Raises `CheckpointError` (the previous checkpoint untouched, no temporary file left) if the disk is full or the
    folder is not writable.
    """
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = dict(meta, format=FORMAT, sha256=tensor_digest(tensors))
    blob = save(tensors, metadata={"unifusion": json.dumps(meta, sort_keys=True)})
    try:
        remove_stale_temps(path)
        path.with_suffix(".json").unlink(missing_ok=True)   # the metadata copy older versions kept beside it
        atomic_write(path, blob, fsync=True)
    except OSError as e:
        kept = f"; the previous checkpoint {path} is intact" if path.exists() else ""
        raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}{kept}") from None
    return path


def read_checkpoint(path, map_location: str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """`(tensors, meta)` of a checkpoint written by `save_checkpoint`, verified against its checksum."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.safetensors"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device=map_location) as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated / garbled headers
        raise CheckpointError(f"checkpoint {path} is truncated or not a safetensors file "
                              f"({type(e).__name__})") from None
    try:
        meta = json.loads(header["unifusion"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is a safetensors file but not a unifusion checkpoint (no metadata)") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}; this version reads {FORMAT!r}")
    if tensor_digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupted (its tensors do not match the stored SHA-256)")
    return tensors, meta
