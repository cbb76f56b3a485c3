"""Arrays a user has on disk, loaded into memory: `load_npz`. Nothing is downloaded.

`load_npz` reads with `allow_pickle=False` (an `.npz` never runs code). Every failure is one `ValueError` /
`FileNotFoundError` line naming the bad file or value. (Lazy readers: `arrays.open_npz`, `images.ImageFolder`.)
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ..utils import check_finite

__all__ = ["load_npz"]

_DATA_KEYS = ("x", "data", "images", "samples", "arr_0")
_LABEL_KEYS = ("y", "labels", "label", "targets")


def _finite_float(a: np.ndarray, what: str) -> torch.Tensor:
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise ValueError(f"{what} has dtype {a.dtype}; a numeric array is required")
    if a.ndim < 1 or a.shape[0] < 1:
        raise ValueError(f"{what} must have shape [N, ...] with N >= 1, got {tuple(a.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    check_finite(x, what)
    return x if x.ndim > 1 else x[:, None]


def load_npz(path, key: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(x, labels_or_None)` from an `.npz` file: `x` float32 `[N, ...]` from array `key` (`None`: the only array,
    else the first of x / data / images / samples / arr_0), labels int64 `[N]` from y / labels / label / targets
    if present. Pickled object arrays are refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such .npz file: {str(path)!r}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{str(path)!r} is not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e):   # an array of Python objects: loading it would run pickle
            raise ValueError(f"{str(path)!r} holds pickled objects, which are not loaded") from None
        raise ValueError(f"{str(path)!r} is not a readable .npz file ({str(e).splitlines()[0]})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{str(path)!r} is not a readable .npz file ({type(e).__name__}: {e})") from None
    bad = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
    if bad:
        raise ValueError(f"{str(path)!r} is not a readable .npz file (member {bad[0]!r} is not a .npy array)")
    if key is None:
        if len(arrays) == 1:
            key = next(iter(arrays))
        else:
            key = next((k for k in _DATA_KEYS if k in arrays), None)
            if key is None:
                raise ValueError(f"{str(path)!r} has arrays {sorted(arrays)}; pass key= to choose the data")
    if key not in arrays:
        raise ValueError(f"{str(path)!r} has no array {key!r}; it has {sorted(arrays)}")
    x = _finite_float(arrays[key], f"array {key!r} of {str(path)!r}")
    lk = next((k for k in _LABEL_KEYS if k in arrays and k != key), None)
    if lk is None:
        return x, None
    y = arrays[lk]
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (x.shape[0],):
        raise ValueError(f"labels {lk!r} of {str(path)!r} must be {x.shape[0]} integers, "
                         f"got {y.dtype} of shape {y.shape}")
    return x, torch.from_numpy(y.astype(np.int64))
