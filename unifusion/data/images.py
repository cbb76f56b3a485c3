"""Images read lazily from disk: folders of PNG/JPEG files and tar shards in the WebDataset layout.

Owns the two readers of encoded images, `ImageFolder` and `TarShards`. Both index their images when opened
(file names, or tar member offsets, and each image's header: size and colour mode, no pixels), and decode only
the images a micro-batch asks for, in whichever process asks (the loader's workers). Pixels stay uint8
`[C, H, W]` (scaled to [-1, 1] on the device by `unifusion.data.loader.to_device`). `resolution=r` centre-crops
and resizes every image to `r x r` (Lanczos, as EDM's `dataset_tool.py`); without it, images of mixed sizes are
an error. An unreadable image is an error naming it (`on_error="raise"`) or is skipped (`on_error="skip"`):
found at indexing time it is left out of the data set (`skipped` lists it); found at decoding time it is replaced
by the next readable image and counted in `get_batch`'s third value, so the order stays a pure function of the
index.

Tar shards follow WebDataset's layout (`webdataset` documentation, "Creating a WebDataset"): uncompressed `.tar`
files whose members `<key>.<ext>` form one example per key, the image in `png` / `jpg` / `jpeg` / `webp`, an
integer class label in `cls`. `TarShards` reads them by random access (one `os.pread` per image at its indexed
offset), like a folder, so shards get the same deterministic order, per-rank split and mid-epoch resume as
every other source.
"""
from __future__ import annotations

import glob
import io
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..utils import check_choice

__all__ = ["ImageFolder", "TarShards", "IMAGE_EXTENSIONS", "expand_shards"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_SHARD_IMAGE = ("png", "jpg", "jpeg", "webp")
_GREY = ("L", "1", "I;16", "I")
_HEADER_BYTES = 1 << 16          # enough of a PNG / JPEG for its size and mode


def _decode_errors():
    from PIL import Image
    return OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError


def _reason(e: Exception) -> str:
    from PIL import UnidentifiedImageError
    return "not an image Pillow can read" if isinstance(e, UnidentifiedImageError) else str(e).splitlines()[0]


class _EncodedImages(torch.utils.data.Dataset):
    """What both readers share: header checks, decoding, replacement of unreadable images, batches.
    A subclass sets `names` (one per image), `labels`, `classes` and implements `_open(i)` (a file or bytes)."""

    def _check_options(self, channels, resolution, on_error):
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
        if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int)
                                       or resolution < 1):
            raise ValueError(f"resolution must be an integer >= 1 or None, got {resolution!r}")
        check_choice(on_error, "on_error", ("raise", "skip"))
        self.resolution, self.on_error = resolution, on_error

    def _headers(self, opened, names, channels) -> list[int]:
        """Read every image's header (`opened(i)`: a file or bytes); return the indices of the readable ones, set
        the mode, shape and `skipped`; mixed sizes without `resolution` are an error."""
        from PIL import Image

        keep, modes, first, self.skipped = [], set(), None, []
        for i, name in enumerate(names):
            try:
                with Image.open(opened(i)) as im:
                    size, mode = im.size, im.mode
            except _decode_errors() as e:
                if self.on_error == "raise":
                    raise ValueError(f"cannot decode image {name!r} ({_reason(e)}); set "
                                     f"data.on_error=skip to leave unreadable images out") from None
                self.skipped.append(name)
                continue
            if first is None:
                first = (name, size)
            elif size != first[1] and self.resolution is None:
                raise ValueError(f"images of mixed sizes: {name!r} is {size[0]}x{size[1]} but {first[0]!r} is "
                                 f"{first[1][0]}x{first[1][1]}; set data.resolution to resize them")
            keep.append(i)
            modes.add(mode)
        if not keep:
            raise ValueError(f"none of the {len(names)} images could be decoded (first: {names[0]!r})")
        if channels is None:
            channels = 1 if modes <= set(_GREY) else 3
        self.channels = channels
        w, h = (self.resolution, self.resolution) if self.resolution else first[1]
        self.example_shape = (channels, h, w)
        return keep

    def __len__(self) -> int:
        return len(self.names)

    def _decode(self, i: int) -> np.ndarray:
        from PIL import Image, ImageOps

        with Image.open(self._open(i)) as im:
            im = im.convert("L" if self.channels == 1 else "RGB")
            if self.resolution is not None and im.size != (self.resolution, self.resolution):
                im = ImageOps.fit(im, (self.resolution, self.resolution), Image.Resampling.LANCZOS)
            c, h, w = self.example_shape
            return np.array(im, dtype=np.uint8).reshape(h, w, c)

    def _decode_or_next(self, i: int) -> tuple[np.ndarray, int, int]:
        """`(pixels HWC, index used, images skipped)`: image `i`, or with `on_error="skip"` the next readable one."""
        for k in range(len(self)):
            j = (i + k) % len(self)
            try:
                return self._decode(j), j, k
            except _decode_errors() as e:
                if self.on_error == "raise":
                    raise ValueError(f"cannot decode image {self.names[j]!r} ({_reason(e)}); set "
                                     f"data.on_error=skip to replace unreadable images") from None
        raise ValueError(f"none of the {len(self)} images could be decoded")

    def __getitem__(self, i):
        px, j, _ = self._decode_or_next(int(i))
        return torch.from_numpy(px).permute(2, 0, 1), (int(self.labels[j]) if self.labels is not None else -1)

    def get_batch(self, indices):
        """`(uint8 [b, C, H, W], labels [b] or None, skipped)`: the batch's pixels, in channels-last memory."""
        pics, used, skipped = [], [], 0
        for i in indices:
            px, j, k = self._decode_or_next(int(i))
            pics.append(px)
            used.append(j)
            skipped += k
        x = torch.from_numpy(np.stack(pics)).permute(0, 3, 1, 2)
        y = self.labels[torch.tensor(used)] if self.labels is not None else None
        return x, y, skipped

    def bound(self) -> float:
        """The largest `|x|` the network may see: 1.0, the pixel range [-1, 1] (not a scan of every image)."""
        return 1.0

    @property
    def pixels(self) -> torch.Tensor:
        """Every image decoded, uint8 `[N, C, H, W]` (in memory: for small data sets)."""
        return self.get_batch(range(len(self)))[0].contiguous()

    @property
    def data(self) -> torch.Tensor:
        """Every image decoded, float32 `[N, C, H, W]` in [-1, 1]."""
        return self.pixels.float() / 127.5 - 1.0

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.data, self.labels

    def __repr__(self) -> str:
        c, h, w = self.example_shape
        return (f"{type(self).__name__}({len(self)} images {c}x{h}x{w}, "
                f"{len(self.classes) if self.classes else 0} classes, {len(self.skipped)} skipped)")


class ImageFolder(_EncodedImages):
    """The PNG/JPEG images under `root`, decoded on demand.

    Layout: images directly in `root` (no labels), or one sub-folder per class (`root/<class>/*.png`, the layout
    of a CIFAR-10 export): `labels` `[N]` are then the indices of the sorted class names `classes`.

    Args:
        root:       the folder.
        channels:   1 (grey) or 3 (RGB); `None` = 1 if every image is greyscale, else 3.
        labels:     read class labels from sub-folders (`False`: ignore them, `labels` is `None`).
        resolution: centre-crop and resize every image to this size (None: keep the size, which must be common).
        on_error:   "raise" (an unreadable image is an error) or "skip" (see the module docstring).

    `ds[i] -> (uint8 [C, H, W], label or -1)`; `ds.data` / `ds.pixels` decode everything (small data sets).
    """

    def __init__(self, root, channels: int | None = None, labels: bool = True, resolution: int | None = None,
                 on_error: str = "raise"):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"no such image folder: {str(root)!r}")
        self._check_options(channels, resolution, on_error)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise ValueError(f"image folder {str(root)!r} holds no {'/'.join(IMAGE_EXTENSIONS)} files")
        keep = self._headers(lambda i: files[i], [str(p) for p in files], channels)
        self.files = [files[i] for i in keep]
        self.names = [str(p) for p in self.files]
        subdirs = sorted({p.parent.relative_to(root).parts[0] for p in files if p.parent != root})
        self.classes = subdirs if labels and subdirs and all(p.parent != root for p in files) else None
        if self.classes is not None:
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = torch.tensor([index[p.relative_to(root).parts[0]] for p in self.files], dtype=torch.int64)
        else:
            self.labels = None

    def _open(self, i: int):
        return self.files[i]


def expand_shards(spec) -> list[Path]:
    """The shard files of `spec`: a `.tar` file, a folder (its `*.tar`, sorted), a glob pattern, WebDataset's brace
    notation `shard-{000000..000099}.tar`, or a list of these."""
    if isinstance(spec, (list, tuple)):
        return [p for s in spec for p in expand_shards(s)]
    spec = str(spec)
    m = re.search(r"\{(\d+)\.\.(\d+)\}", spec)
    if m:
        lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
        return [p for k in range(lo, hi + 1)
                for p in expand_shards(spec[:m.start()] + str(k).zfill(width) + spec[m.end():])]
    path = Path(spec)
    if path.is_dir():
        return sorted(path.glob("*.tar"))
    if any(ch in spec for ch in "*?["):
        return sorted(Path(p) for p in glob.glob(spec))
    if not path.is_file():
        raise FileNotFoundError(f"no such tar shard or folder: {spec!r}")
    return [path]


class TarShards(_EncodedImages):
    """Examples of uncompressed tar shards in the WebDataset layout, decoded on demand by random access.

    Args:
        shards:     a `.tar` file, a folder of them, a glob pattern, `name-{000000..000099}.tar`, or a list.
        channels, resolution, on_error: as `ImageFolder`.
        labels:     read `<key>.cls` integer labels (when every example has one).

    Opening reads each shard once, sequentially (tar headers, image headers, labels); a shard that is compressed,
    not a tar file, or cut short raises one line naming it (`on_error="skip"`: its unreadable rest is left out).
    """

    def __init__(self, shards, channels: int | None = None, labels: bool = True, resolution: int | None = None,
                 on_error: str = "raise"):
        self._check_options(channels, resolution, on_error)
        self.shards = expand_shards(shards)
        if not self.shards:
            raise ValueError(f"no .tar shards found for {str(shards)!r}")
        names, where, heads, cls, broken = [], [], [], [], []
        for sid, path in enumerate(self.shards):
            for name, off, size, head, label in self._index(path, broken):
                names.append(name)
                where.append((sid, off, size))
                heads.append(head)
                cls.append(label)
        if not names:
            raise ValueError(f"the tar shards {[str(p) for p in self.shards[:3]]} hold no {'/'.join(_SHARD_IMAGE)} "
                             f"images")
        keep = self._headers(lambda i: io.BytesIO(heads[i]), names, channels)
        self.skipped = broken + self.skipped
        self.names = [names[i] for i in keep]
        self._where = np.asarray([where[i] for i in keep], dtype=np.int64).reshape(-1, 3)
        have = [cls[i] for i in keep]
        self.labels = (torch.tensor(have, dtype=torch.int64) if labels and all(v is not None for v in have)
                       else None)
        self.classes = sorted(set(have)) if self.labels is not None else None
        self._fds, self._pid = {}, os.getpid()

    def _index(self, path: Path, broken: list):
        """`(name, data offset, size, header bytes, label or None)` of each example of one shard."""
        samples = {}
        try:
            with tarfile.open(path, "r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    base, _, ext = Path(m.name).name.partition(".")
                    key = str(Path(m.name).parent / base)
                    ext = ext.lower()
                    if ext in _SHARD_IMAGE:
                        head = tf.extractfile(m).read(_HEADER_BYTES)
                        samples.setdefault(key, {})["image"] = (f"{path}:{m.name}", m.offset_data, m.size, head)
                    elif ext == "cls":
                        text = tf.extractfile(m).read().decode("utf-8", "replace").strip()
                        samples.setdefault(key, {})["cls"] = int(text) if re.fullmatch(r"-?\d+", text) else None
                end = tf.offset
        except tarfile.ReadError as e:
            raise ValueError(f"{str(path)!r} is not an uncompressed tar shard ({e})") from None
        with open(path, "rb") as f:                       # tarfile stops quietly at a garbled header: look past it
            f.seek(end)
            rest = f.read()
        if rest.strip(b"\0"):
            msg = f"tar shard {str(path)!r} is corrupt after byte {end} ({len(rest)} bytes unreadable)"
            if self.on_error == "raise":
                raise ValueError(msg + "; set data.on_error=skip to use the readable part")
            broken.append(f"{path}@{end}")
        for s in samples.values():
            if "image" in s:
                name, off, size, head = s["image"]
                yield name, off, size, head, s.get("cls")

    def _open(self, i: int):
        if self._pid != os.getpid():                      # a worker process: its own file handles
            self._fds, self._pid = {}, os.getpid()
        sid, off, size = (int(v) for v in self._where[i])
        if sid not in self._fds:
            self._fds[sid] = os.open(self.shards[sid], os.O_RDONLY)
        data = os.pread(self._fds[sid], size, off)
        if len(data) != size:
            raise OSError(f"short read ({len(data)} of {size} bytes)")
        return io.BytesIO(data)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                try:
                    os.close(fd)
                except OSError:
                    pass
