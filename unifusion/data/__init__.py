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
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch

from .digits import digits_split, load_digits
from .digits32 import digits32_to_digits, load_digits32
from .files import IMAGE_EXTENSIONS, ImageFolder, load_npz
from .toys import TOYS, toy_2d, toy_2d_labelled, toy_oracle

__all__ = ["get_dataset", "DATASETS", "toy_2d", "toy_2d_labelled", "toy_oracle", "TOYS", "load_digits", "digits_split",
           "load_npz", "ImageFolder", "IMAGE_EXTENSIONS", "load_digits32", "digits32_to_digits"]

DATASETS = tuple(sorted(TOYS)) + ("digits", "digits32", "mixture_64d")


def _toy(name, n: int = 10000, seed: int = 0):
    return toy_2d_labelled(name, n, torch.Generator().manual_seed(seed))


def _mixture_64d(n: int = 10000, seed: int = 0):
    from ..oracles import mixture_64d

    x, k = mixture_64d().sample_labelled(n, torch.Generator().manual_seed(seed))
    return x.float(), k


def _digits(split: str = "train", as_images: bool = False):
    return load_digits(split, as_images)


def _options(fn, kwargs, what):
    valid = [p for p in inspect.signature(fn).parameters if p not in ("name", "path", "root")]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for data set {what!r}; valid options are {valid}")


def get_dataset(name_or_path, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(data, labels_or_None)`: data float32 `[N, ...]`, labels int64 `[N]`, for a data set name or a path."""
    name = str(name_or_path)
    if name in TOYS:
        _options(_toy, kwargs, name)
        return _toy(name, **kwargs)
    if name == "digits":
        _options(_digits, kwargs, name)
        return _digits(**kwargs)
    if name == "digits32":
        _options(load_digits32, kwargs, name)
        return load_digits32(**kwargs)
    if name == "mixture_64d":
        _options(_mixture_64d, kwargs, name)
        return _mixture_64d(**kwargs)
    path = Path(name)
    looks_like_path = path.suffix.lower() == ".npz" or os.sep in name or path.exists()
    if not looks_like_path:
        raise ValueError(f"data set {name!r} is not one of {list(DATASETS)}, nor a .npz file or image folder")
    if path.is_dir():
        _options(ImageFolder, kwargs, name)
        ds = ImageFolder(path, **kwargs)
        return ds.data, ds.labels
    if path.suffix.lower() == ".npz" or path.is_file():
        if path.exists() and path.suffix.lower() != ".npz":
            raise ValueError(f"{name!r} is neither a .npz file nor a folder of images")
        _options(load_npz, kwargs, name)
        return load_npz(path, **kwargs)
    raise FileNotFoundError(f"no such data file or folder: {name!r}")
