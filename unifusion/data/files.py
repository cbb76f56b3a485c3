"""Data a user has on disk: `.npz` arrays and folders of PNG/JPEG images. Nothing is downloaded.

`load_npz` reads with `allow_pickle=False` (an `.npz` never runs code); `ImageFolder` decodes images with
Pillow (a matplotlib dependency) and scales pixels to [-1, 1] as `x / 127.5 - 1` (Ho et al. 2020, Sec. 4).
Every failure is one `ValueError` / `FileNotFoundError` line naming the bad file or value.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ..utils import check_finite

__all__ = ["load_npz", "ImageFolder", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
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


class ImageFolder(torch.utils.data.Dataset):
    """All PNG/JPEG images under `root` as one tensor `data` `[N, C, H, W]` in [-1, 1] (decoded once, kept as uint8).

    Layout: images directly in `root` (no labels), or one sub-folder per class (`root/<class>/*.png`, the
    layout of a CIFAR-10 export): `labels` `[N]` are then the indices of the sorted class names `classes`.

    Args:
        root:     the folder.
        channels: 1 (grey) or 3 (RGB); `None` = 1 if every image is greyscale, else 3.
        labels:   read class labels from sub-folders (`False`: ignore them, `labels` is `None`).

    Images of different sizes, an empty folder, a missing folder or an undecodable file raise one-line errors.
    `len(ds)`, `ds[i] -> (x [C, H, W] float32, label or -1)`.
    """

    def __init__(self, root, channels: int | None = None, labels: bool = True):
        from PIL import Image, UnidentifiedImageError

        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"no such image folder: {str(root)!r}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise ValueError(f"image folder {str(root)!r} holds no {'/'.join(IMAGE_EXTENSIONS)} files")
        subdirs = sorted({p.parent.relative_to(root).parts[0] for p in files if p.parent != root})
        self.classes = subdirs if labels and subdirs and all(p.parent != root for p in files) else None
        pics, size = [], None
        for p in files:
            try:
                with Image.open(p) as im:
                    im.load()
                    pics.append(im.copy())
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"cannot decode image {str(p)!r} ({e})") from None
            if size is None:
                size, first = pics[-1].size, p
            elif pics[-1].size != size:
                raise ValueError(f"images of mixed sizes: {str(p)!r} is {pics[-1].size[0]}x{pics[-1].size[1]} but "
                                 f"{str(first)!r} is {size[0]}x{size[1]}")
        if channels is None:
            channels = 1 if all(im.mode in ("L", "1", "I;16", "I") for im in pics) else 3
        mode = "L" if channels == 1 else "RGB"
        arr = np.stack([np.asarray(im.convert(mode), dtype=np.uint8).reshape(size[1], size[0], channels)
                        for im in pics])
        self.pixels = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # uint8 [N, C, H, W]
        self.files = files
        if self.classes is not None:
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = torch.tensor([index[p.relative_to(root).parts[0]] for p in files], dtype=torch.int64)
        else:
            self.labels = None

    @property
    def data(self) -> torch.Tensor:
        """All images, float32 `[N, C, H, W]` in [-1, 1]."""
        return self.pixels.float() / 127.5 - 1.0

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, i):
        x = self.pixels[i].float() / 127.5 - 1.0
        return x, (int(self.labels[i]) if self.labels is not None else -1)

    def __repr__(self) -> str:
        n, c, h, w = self.pixels.shape
        return f"ImageFolder({n} images {c}x{h}x{w}, {len(self.classes) if self.classes else 0} classes)"
