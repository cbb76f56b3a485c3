"""Data sets, none downloaded at run time: 2-D toys, scikit-learn's digits, `.npz` arrays, image folders.

`get_dataset(name_or_path, **kwargs) -> (data, labels_or_None)` is what configs call:
* a toy name (`TOYS`: eight_gaussians, grid, swiss_roll, moons, checkerboard) with `n=` and `seed=`; the Gaussian
  toys come with their mixture components as labels;
* "mixture_64d", draws of `oracles.mixture_64d()` (10 components in 64-d) with `n=` and `seed=`, labelled by
  component;
* "digits" with `split=` ("train" / "test") and `as_images=` (`[N, 64]` or `[N, 1, 8, 8]`), through
  `load_digits` (the project's fixed split, `data/digits.py`);
* "digits32": the same digits upsampled bicubically to `[N, 1, 32, 32]` (`data/digits32.py`), with `split=`;
* a path: a `.npz` file (`load_npz`, option `key=`) or a folder of PNG/JPEG images (`ImageFolder`, options
  `channels=`, `labels=`).

`open_dataset(name_or_path, **kwargs) -> Dataset` is what training reads: the named sets in memory
(`ArrayDataset`), files lazily: `.npz` / `.npy` memory-mapped (`open_npz`, options `key=`, `mmap=`), image folders
and WebDataset tar shards decoded on demand (`ImageFolder`, `TarShards`, options `channels=`, `labels=`,
`resolution=`, `on_error=`). `loader` turns any `Dataset` into the deterministic micro-batches of training.
"""
from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path

import torch

from .digits import digits_split, load_digits
from .digits32 import digits32_to_digits, load_digits32
from .arrays import ArrayDataset, load_npz, open_npz
from .images import IMAGE_EXTENSIONS, ImageFolder, TarShards
from .loader import LoaderOptions, check_loader_options, without_labels
from .toys import TOYS, toy_2d, toy_2d_labelled, toy_oracle
from ..schema import register_section

__all__ = ["get_dataset", "open_dataset", "DATASETS", "NAMED", "source", "toy_2d", "toy_2d_labelled", "toy_oracle",
           "TOYS", "load_digits", "digits_split", "load_digits32", "digits32_to_digits", "load_npz", "open_npz",
           "ArrayDataset", "ImageFolder", "TarShards", "IMAGE_EXTENSIONS", "without_labels", "LoaderOptions"]


def _toy(name, n: int = 10000, seed: int = 0):
    return toy_2d_labelled(name, n, torch.Generator().manual_seed(seed))


def _mixture_64d(n: int = 10000, seed: int = 0):
    from ..oracles import mixture_64d

    x, k = mixture_64d().sample_labelled(n, torch.Generator().manual_seed(seed))
    return x.float(), k


def _digits(split: str = "train", as_images: bool = False):
    return load_digits(split, as_images)


# data set name -> builder of `(data, labels)` in memory; its keyword arguments are the `data:` options
NAMED = {**{t: functools.partial(_toy, t) for t in TOYS}, "digits": _digits, "digits32": load_digits32,
         "mixture_64d": _mixture_64d}
DATASETS = tuple(sorted(TOYS)) + tuple(k for k in NAMED if k not in TOYS)
_SKIP = ("name", "path", "root", "shards")


def _options(fn, kwargs, what):
    valid = [p for p in inspect.signature(fn).parameters if p not in _SKIP]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for data set {what!r}; valid options are {valid}")


def get_dataset(name_or_path, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(data, labels_or_None)`: data float32 `[N, ...]`, labels int64 `[N]`, for a data set name or a path."""
    name = str(name_or_path)
    if name in NAMED:
        _options(NAMED[name], kwargs, name)
        return NAMED[name](**kwargs)
    return _open_file(name, kwargs).tensors()


def _reader(name: str):
    """The reader of a path (`open_npz`, `ImageFolder` or `TarShards`), chosen by what the path is."""
    path = Path(name)
    suffix = path.suffix.lower()
    looks_like_path = suffix in (".npz", ".npy", ".tar") or os.sep in name or path.exists()
    if not looks_like_path:
        raise ValueError(f"data set {name!r} is not one of {list(DATASETS)}, nor a .npz file, an image folder or "
                         f"tar shards")
    pattern = any(ch in name for ch in "*?{")
    if not pattern and not path.exists():
        raise FileNotFoundError(f"no such data file or folder: {name!r}")
    if path.is_dir():
        shards = any(path.glob("*.tar")) and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*"))
        return TarShards if shards else ImageFolder
    if suffix == ".tar" or pattern:
        return TarShards
    if suffix in (".npz", ".npy"):
        return open_npz
    raise ValueError(f"{name!r} is neither a .npz/.npy file, a .tar shard nor a folder of images")


def _open_file(name: str, kwargs: dict):
    """The lazy reader of a path, opened: `.npz` / `.npy`, a folder of images, tar shards (file, folder, pattern)."""
    cls = _reader(name)
    _options(cls, kwargs, name)
    return cls(Path(name) if cls is not TarShards else name, **kwargs)


def source(name: str, cfg: dict | None = None):
    """The builder whose keyword arguments are the `data:` options of data set `name` (what the config schema
    checks): a named set's loader, or the reader of a path (any options while the path does not exist here)."""
    if name in NAMED:
        return NAMED[name]
    try:
        return _reader(name)
    except FileNotFoundError:
        return open_dataset


def open_dataset(name_or_path, **kwargs) -> torch.utils.data.Dataset:
    """The `Dataset` of a data set name (in memory) or a path (read lazily); options as `get_dataset`'s, plus the
    readers' (`open_npz`: `key`, `mmap`; `ImageFolder` / `TarShards`: `channels`, `labels`, `resolution`,
    `on_error`)."""
    name = str(name_or_path)
    if name in NAMED:
        return ArrayDataset(*get_dataset(name, **kwargs))
    return _open_file(name, kwargs)


def _check_loader(section: dict) -> None:
    check_loader_options(section["num_workers"], section["prefetch"])


register_section("data", LoaderOptions, head="name", default="digits", choices=source, skip=_SKIP,
                 check=_check_loader)
