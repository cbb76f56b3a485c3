"""The data pipeline: lazy readers give the pixels an eager decode gives, the order is a pure function of
(seed, step) whatever the processes, workers or starting step, and every bad input is one line."""
import io
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from unifusion.data import ArrayDataset, ImageFolder, TarShards, get_dataset, open_dataset, open_npz
from unifusion.data.loader import (BatchOrder, LoaderError, StepLoader, flip_mask, is_worker_death, loader_failure,
                                   to_device)


def _pics(n, size=(6, 5), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(n)]


def _folder(root, pics, classes=("a", "b")):
    for i, p in enumerate(pics):
        d = root / classes[i % len(classes)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(p).save(d / f"{i:04d}.png")
    return root


def _shards(root, pics, per_shard=4, labels=True, corrupt=()):
    root.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(pics), per_shard):
        with tarfile.open(root / f"shard-{s // per_shard:06d}.tar", "w") as tf:
            for i in range(s, min(s + per_shard, len(pics))):
                buf = io.BytesIO()
                Image.fromarray(pics[i]).save(buf, format="PNG")
                data = b"\x89PNG broken" if i in corrupt else buf.getvalue()
                members = [(f"{i:06d}.png", data)] + ([(f"{i:06d}.cls", str(i % 2).encode())] if labels else [])
                for name, payload in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    return root


def _all(loader):
    return [(s, a, x.clone(), None if y is None else y.clone(), k) for s, a, x, y, k in loader]


def test_order_is_a_function_of_seed_and_step_only():
    """2 ranks x 1 micro-batch == 1 rank x 2 micro-batches; a loader started at step 3 continues the one started at
    0; 2 workers deliver what the main process reads; every epoch is a permutation."""
    ds = ArrayDataset(torch.arange(10.0)[:, None], torch.arange(10) % 3)
    kw = dict(batch_size=4, seed=7, stop=8)
    one = _all(StepLoader(ds, grad_accum=2, **kw))
    ranks = [_all(StepLoader(ds, rank=r, world_size=2, **kw)) for r in range(2)]
    for s in range(8):
        assert torch.equal(torch.cat([one[2 * s][2], one[2 * s + 1][2]]),
                           torch.cat([ranks[0][s][2], ranks[1][s][2]]))
    late = _all(StepLoader(ds, grad_accum=2, start=3, **kw))
    assert all(torch.equal(a[2], b[2]) and a[:2] == b[:2] for a, b in zip(one[6:], late, strict=True))
    workers = _all(StepLoader(ds, grad_accum=2, num_workers=2, **kw))
    assert all(torch.equal(a[2], b[2]) and torch.equal(a[3], b[3]) for a, b in zip(one, workers, strict=True))
    seen = torch.cat([x[:, 0] for _, _, x, _, _ in one]).long()
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:20].tolist()) == list(range(10))
    order = BatchOrder(10, 4, 7)
    assert order.position(3) == {"step": 3, "epoch": 1, "offset": 2, "examples_seen": 12, "n": 10}
    assert not torch.equal(BatchOrder(10, 4, 8)(0), order(0))


def test_flip_is_seeded_and_mirrors_on_the_device():
    m = flip_mask(0, 5, 1000)
    assert torch.equal(m, flip_mask(0, 5, 1000)) and not torch.equal(m, flip_mask(0, 6, 1000))
    assert 400 < int(m.sum()) < 600
    x = torch.arange(2 * 3, dtype=torch.uint8).reshape(2, 1, 1, 3)
    out, _ = to_device(x, None, "cpu", torch.tensor([True, False]))
    assert out.dtype == torch.float32
    assert torch.equal(out[0, 0, 0], torch.tensor([2.0, 1.0, 0.0]) / 127.5 - 1)
    assert torch.equal(out[1, 0, 0], torch.tensor([3.0, 4.0, 5.0]) / 127.5 - 1)


def test_lazy_folder_and_tar_shards_decode_the_same_pixels(tmp_path):
    pics = _pics(10)
    folder = ImageFolder(_folder(tmp_path / "f", pics, classes=("x",)))
    shards = TarShards(str(_shards(tmp_path / "s", pics) / "shard-{000000..000002}.tar"))
    assert len(folder) == len(shards) == 10 and folder.example_shape == shards.example_shape == (3, 5, 6)
    want = torch.from_numpy(np.stack(pics)).permute(0, 3, 1, 2)
    assert torch.equal(folder.pixels, want) and torch.equal(shards.pixels, want)
    assert shards.labels.tolist() == [i % 2 for i in range(10)] and shards.classes == [0, 1]
    x, y, skipped = shards.get_batch([7, 2])
    assert x.dtype == torch.uint8 and torch.equal(x, want[[7, 2]]) and y.tolist() == [1, 0] and skipped == 0
    assert isinstance(open_dataset(str(tmp_path / "s")), TarShards)
    assert isinstance(open_dataset(str(tmp_path / "f")), ImageFolder)
    assert torch.equal(get_dataset(str(tmp_path / "f"))[0], want.float() / 127.5 - 1)


def test_resolution_centre_crops_and_resizes(tmp_path):
    _folder(tmp_path, _pics(2, (6, 5)) + _pics(2, (9, 9), seed=1), classes=("x",))
    with pytest.raises(ValueError, match="mixed sizes: .* set data.resolution"):
        ImageFolder(tmp_path)
    ds = ImageFolder(tmp_path, resolution=4)
    assert ds.pixels.shape == (4, 3, 4, 4)


def test_npz_is_memory_mapped_when_stored(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (30, 3, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", images=a, labels=np.arange(30))
    np.savez_compressed(tmp_path / "c.npz", images=a, labels=np.arange(30))
    stored, packed = open_npz(tmp_path / "s.npz"), open_npz(tmp_path / "c.npz")
    assert isinstance(stored.x, np.memmap) and not isinstance(packed.x, np.memmap)
    for ds in (stored, packed):
        x, y, _ = ds.get_batch([5, 0, 29])
        assert x.dtype == torch.uint8 and torch.equal(x, torch.from_numpy(a[[5, 0, 29]]))
        assert y.tolist() == [5, 0, 29]
    workers = _all(StepLoader(stored, batch_size=6, stop=3, num_workers=2))     # the map travels to the workers
    assert all(torch.equal(w[2], torch.from_numpy(a[BatchOrder(30, 6, 0)(w[0]).numpy()])) for w in workers)


def test_unreadable_images_are_an_error_or_skipped_with_a_count(tmp_path):
    pics = _pics(6)
    _folder(tmp_path / "f", pics, classes=("x",))
    (tmp_path / "f" / "x" / "0002.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="cannot decode image .*0002.png.*data.on_error=skip"):
        ImageFolder(tmp_path / "f")
    ds = ImageFolder(tmp_path / "f", on_error="skip")
    assert len(ds) == 5 and ds.skipped == [str(tmp_path / "f" / "x" / "0002.png")]
    # a file whose header reads but whose pixels are cut short: found while decoding, replaced by the next image
    full = (tmp_path / "f" / "x" / "0004.png").read_bytes()
    (tmp_path / "f" / "x" / "0004.png").write_bytes(full[:60])
    x, _, skipped = ds.get_batch([3, 0])
    assert skipped == 1 and torch.equal(x[0], torch.from_numpy(pics[5]).permute(2, 0, 1))
    ds.on_error = "raise"
    with pytest.raises(ValueError, match="cannot decode image .*0004.png"):
        ds.get_batch([3, 0])
    shards = _shards(tmp_path / "s", pics, corrupt=(1,))
    with pytest.raises(ValueError, match=r"cannot decode image .*shard-000000.tar:000001.png"):
        TarShards(shards)
    assert len(TarShards(shards, on_error="skip")) == 5


def test_garbled_tar_shards(tmp_path):
    shards = _shards(tmp_path / "s", _pics(8))
    path = shards / "shard-000001.tar"
    data = bytearray(path.read_bytes())
    data[2048] ^= 0xFF              # the header of the second example's image (2 x 512 bytes per member): bad checksum
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"tar shard .*shard-000001.tar' is corrupt after byte"):
        TarShards(shards)
    ds = TarShards(shards, on_error="skip")
    assert len(ds) == 5 and len(ds.skipped) == 1
    (tmp_path / "gz.tar").write_bytes(b"\x1f\x8b" + b"\0" * 2000)
    with pytest.raises(ValueError, match="not an uncompressed tar shard"):
        TarShards(tmp_path / "gz.tar")


def test_bad_paths_and_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file or folder"):
        open_dataset(str(tmp_path / "missing.npz"))
    with pytest.raises(FileNotFoundError, match="no such data file or folder"):
        open_dataset(str(tmp_path / "missing.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        open_dataset(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['resolutoin'\]"):
        open_dataset(str(_folder(tmp_path / "f", _pics(2))), resolutoin=3)
    ds = ArrayDataset(torch.zeros(8, 2))
    with pytest.raises(ValueError, match="data.num_workers must be an integer >= 0, got -1"):
        StepLoader(ds, batch_size=4, stop=1, num_workers=-1)
    with pytest.raises(ValueError, match="divisible"):
        StepLoader(ds, batch_size=5, grad_accum=2, stop=1)


class _Dies(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        if torch.utils.data.get_worker_info() is not None and i == 5:
            os._exit(3)                          # a worker process that dies without a word
        return torch.zeros(2)


class _Raises(_Dies):
    def __getitem__(self, i):
        raise ValueError(f"example {i} is unreadable")


def _drain(loader):
    """`_all(loader)` as training runs it: torch may also report a dead worker from its SIGCHLD handler, anywhere."""
    try:
        return _all(loader)
    except RuntimeError as e:
        if is_worker_death(e):
            raise loader_failure(e, 0) from e
        raise


def test_a_dead_or_failing_worker_is_one_line():
    with pytest.raises(LoaderError, match=r"data loading failed at step \d+: data loader worker process \d+ died "
                                          r"\(exit code 3\)$"):
        _drain(StepLoader(_Dies(), batch_size=8, stop=8, num_workers=2))
    with pytest.raises(LoaderError, match=r"^data loading failed at step 1: ValueError: example \d+ is unreadable$"):
        _all(StepLoader(_Raises(), batch_size=8, stop=8, num_workers=1))


class _Stream(torch.utils.data.IterableDataset):
    """A stream of labelled vectors that repeats itself (or ends after `n`)."""

    def __init__(self, n=None):
        self.n = n

    def __iter__(self):
        i = 0
        while self.n is None or i < self.n:
            yield torch.tensor([float(i)]), i % 3
            i += 1


def test_an_iterable_data_set_is_read_in_order_and_resumed_by_skipping():
    one = _all(StepLoader(_Stream(), batch_size=4, grad_accum=2, stop=5))
    assert torch.equal(torch.cat([x for _, _, x, _, _ in one])[:, 0], torch.arange(20.0))
    assert one[0][3].tolist() == [0, 1]
    late = _all(StepLoader(_Stream(), batch_size=4, grad_accum=2, start=2, stop=5))
    assert all(torch.equal(a[2], b[2]) and a[:2] == b[:2] for a, b in zip(one[4:], late, strict=True))
    with pytest.raises(LoaderError, match="the data stream ended at step 2"):
        _all(StepLoader(_Stream(6), batch_size=4, stop=5))
