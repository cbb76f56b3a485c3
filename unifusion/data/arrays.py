"""Arrays as `Dataset`s: in-memory tensors and `.npy` / `.npz` files, memory-mapped where the file allows.

Owns `ArrayDataset` (examples of one array `[N, ...]`, labels optional, indexed a micro-batch at a time),
`open_npz` and `load_npz` (the same, read into memory). An `.npz` is a zip archive of `.npy` files; a member stored
without compression (`np.savez`, not `np.savez_compressed`) is a `.npy` at a fixed offset of the archive, so it is
memory-mapped in place (`np.memmap` at that offset) and only the rows a batch needs are read; a compressed member
is read into memory. uint8 arrays are pixels (scaled to [-1, 1] on the device, `unifusion.data.loader.to_device`);
other numbers are used as they are, as float32. Pickled object arrays are refused (an `.npz` never runs code).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["ArrayDataset", "open_npz", "load_npz"]

_DATA_KEYS = ("x", "data", "images", "samples", "arr_0")
_LABEL_KEYS = ("y", "labels", "label", "targets")


class ArrayDataset(torch.utils.data.Dataset):
    """The examples of `x` `[N, ...]` (a tensor, a numpy array or a memory map), with optional `labels` `[N]`.

    `ds[i] -> (x_i, label_i or -1)`; `get_batch(indices) -> (x [b, ...], labels [b] or None, 0)` indexes the array
    once per micro-batch. uint8 stays uint8; other dtypes become float32.
    """

    def __init__(self, x, labels=None):
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError(f"data must have shape [N, ...] with N >= 1, got {tuple(x.shape)}")
        if labels is not None and tuple(labels.shape) != (x.shape[0],):
            raise ValueError(f"labels must have shape [{x.shape[0]}], got {tuple(labels.shape)}")
        self.x = x
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64) if isinstance(labels, np.ndarray) \
            else labels
        self.example_shape = tuple(x.shape[1:])

    def __len__(self) -> int:
        return self.x.shape[0]

    def _rows(self, idx) -> torch.Tensor:
        if isinstance(self.x, torch.Tensor):
            rows = self.x[idx]
        else:
            # memory maps read fastest in file order: sort, read, then restore the batch's order
            idx = np.asarray(idx, dtype=np.int64)
            order = np.argsort(idx, kind="stable")
            rows = np.empty((len(idx), *self.x.shape[1:]), dtype=self.x.dtype)
            rows[order] = self.x[idx[order]]
            rows = torch.from_numpy(rows)
        return rows if rows.dtype in (torch.uint8, torch.float32) else rows.float()

    def __getitem__(self, i):
        x = self._rows([int(i)])[0]
        return x, (int(self.labels[i]) if self.labels is not None else -1)

    def get_batch(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self._rows(idx if isinstance(self.x, torch.Tensor) else idx.numpy()), \
            (self.labels[idx] if self.labels is not None else None), 0

    def bound(self, chunk_bytes: int = 1 << 26) -> float:
        """`max |x|` of the examples as the network sees them (uint8: `x / 127.5 - 1`), read in chunks."""
        rows = max(1, chunk_bytes // max(1, self.x[:1].nbytes if not isinstance(self.x, torch.Tensor)
                                         else self.x[:1].numel() * self.x.element_size()))
        out = 0.0
        for i in range(0, len(self), rows):
            part = self._rows(np.arange(i, min(i + rows, len(self))))
            part = part.float() / 127.5 - 1.0 if part.dtype == torch.uint8 else part
            out = max(out, float(part.abs().max()))
        return out

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(x, labels)` in memory: floats as they are, uint8 pixels scaled to [-1, 1]."""
        x = self._rows(np.arange(len(self)))
        return (x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x), self.labels

    def __getstate__(self):
        """A memory map travels to worker processes as its file and offset (pickling would copy its data)."""
        state = dict(self.__dict__)
        if isinstance(self.x, np.memmap):
            x = self.x
            state["x"] = ("memmap", x.filename, x.offset, x.dtype.str, x.shape, x.flags.f_contiguous)
        return state

    def __setstate__(self, state):
        x = state["x"]
        if isinstance(x, tuple) and x[0] == "memmap":
            _, name, offset, dtype, shape, fortran = x
            state["x"] = np.memmap(name, dtype=dtype, mode="r", offset=offset, shape=shape,
                                   order="F" if fortran else "C")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"ArrayDataset({len(self)} x {list(self.example_shape)}, {self.x.dtype})"


def _member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, mmap: bool) -> np.ndarray:
    """One `.npy` member: memory-mapped at its offset if stored uncompressed (and `mmap`), else read."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(f))
        header_len = f.tell() if info.compress_type == zipfile.ZIP_STORED else None
        if dtype.hasobject:
            raise ValueError("pickled objects")
        if header_len is None or not mmap:
            return np.lib.format.read_array(zf.open(info), allow_pickle=False)
    with open(path, "rb") as raw:              # the local file header: 30 bytes + name + extra field
        raw.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(raw.read(4), dtype="<u2")
    offset = info.header_offset + 30 + int(name_len) + int(extra_len) + header_len
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _check_finite(a: np.ndarray, what: str, chunk_bytes: int = 1 << 26) -> None:
    """Raise `ValueError` if a float array holds NaN / Inf (read in chunks: a memory map stays unloaded)."""
    if not np.issubdtype(a.dtype, np.floating):
        return
    rows = max(1, chunk_bytes // max(1, a[:1].nbytes))
    for i in range(0, a.shape[0], rows):
        part = np.asarray(a[i:i + rows])
        if not np.isfinite(part).all():
            raise ValueError(f"{what} contains {'NaN' if np.isnan(part).any() else 'Inf'}; finite values are required")


def open_npz(path, key: str | None = None, mmap: bool = True) -> ArrayDataset:
    """The `ArrayDataset` of an `.npz` (or `.npy`) file: array `key` (None: the only array, else the first of
    x / data / images / samples / arr_0) and labels from y / labels / label / targets if present (integers `[N]`).
    Uncompressed members are memory-mapped when `mmap`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {str(path)!r}")
    kind = ".npy" if path.suffix.lower() == ".npy" else ".npz"
    try:
        if kind == ".npy":
            arrays = {"x": np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)}
        else:
            with zipfile.ZipFile(path) as zf:
                members = zf.infolist()
                bad = [i.filename for i in members if not i.filename.endswith(".npy")]
                if bad:
                    raise ValueError(f"member {bad[0]!r} is not a .npy array")
                arrays = {i.filename[:-4]: _member(path, zf, i, mmap) for i in members}
    except zipfile.BadZipFile:
        raise ValueError(f"{str(path)!r} is not a readable .npz file (not a zip archive)") from None
    except (OSError, EOFError) as e:
        raise ValueError(f"{str(path)!r} is not a readable {kind} file ({type(e).__name__}: {e})") from None
    except ValueError as e:
        msg = str(e).splitlines()[0]
        if "pickle" in msg:                  # an array of Python objects: loading it would run pickle
            raise ValueError(f"{str(path)!r} holds pickled objects, which are not loaded") from None
        raise ValueError(f"{str(path)!r} is not a readable {kind} file ({msg})") from None
    if key is None:
        key = next(iter(arrays)) if len(arrays) == 1 else next((k for k in _DATA_KEYS if k in arrays), None)
        if key is None:
            raise ValueError(f"{str(path)!r} has arrays {sorted(arrays)}; pass key= to choose the data")
    if key not in arrays:
        raise ValueError(f"{str(path)!r} has no array {key!r}; it has {sorted(arrays)}")
    x, what = arrays[key], f"array {key!r} of {str(path)!r}"
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ValueError(f"{what} has dtype {x.dtype}; a numeric array is required")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{what} must have shape [N, ...] with N >= 1, got {tuple(x.shape)}")
    _check_finite(x, what)
    if x.ndim == 1:
        x = np.asarray(x)[:, None]
    lk = next((k for k in _LABEL_KEYS if k in arrays and k != key), None)
    labels = None
    if lk is not None:
        y = np.asarray(arrays[lk])
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (x.shape[0],):
            raise ValueError(f"labels {lk!r} of {str(path)!r} must be {x.shape[0]} integers, "
                             f"got {y.dtype} of shape {y.shape}")
        labels = torch.from_numpy(y.astype(np.int64))
    return ArrayDataset(x, labels)


def load_npz(path, key: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(x, labels_or_None)` of an `.npz` file in memory (`open_npz` without the memory map): `x` float32 `[N, ...]`
    (uint8 pixels scaled to [-1, 1]), labels int64 `[N]` if the file has them."""
    return open_npz(path, key, mmap=False).tensors()
