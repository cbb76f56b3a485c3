"""Deterministic training batches from any `Dataset`: the order, the split over processes, workers, the device.

Owns the one data order of training. Step `s` takes the positions `[s B, (s+1) B)` of a stream of epoch-wise
permutations of the data set, the permutation of epoch `e` drawn from `SeedSequence([seed, e, 0xDA7A])`
(`BatchOrder`); that global batch is cut into `world_size x grad_accum` equal micro-batches, and rank `r` takes
micro-batches `k = r * grad_accum + a`. The random horizontal flip (the CIFAR-10 augmentation of DDPM, Ho et al.
2020, App. B, and EDM, Karras et al. 2022, App. F) of position `j` of step `s` is a coin drawn from
`SeedSequence([seed, s, 0xF11B])`. So what a step sees is a pure function of `(seed, step)`: the position in
the data is the step itself, a resumed run starts its loader at the checkpoint's step with nothing replayed, and
one process with `grad_accum = 2` sees exactly what two DDP processes see together.

Map-style data sets are read by index (`dataset.get_batch(indices)` when it has one, else `dataset[i]` stacked);
iterable ones are read in order, `B / (world_size x grad_accum)` examples per micro-batch, each process reading its
own stream (see `StepLoader`). Worker processes (`num_workers > 0`) each build whole micro-batches, in order.
Images travel as uint8 and become `x / 127.5 - 1` (Ho et al. 2020, Sec. 4) only on the device (`to_device`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

__all__ = ["LoaderOptions", "BatchOrder", "flip_mask", "fetch_batch", "to_device", "StepLoader", "LoaderError",
           "check_loader_options", "example_shape", "loader_failure", "is_worker_death", "without_labels", "in_memory",
           "data_bound"]

_ORDER_KEY, _FLIP_KEY = 0xDA7A, 0xF11B


@dataclass
class LoaderOptions:
    """The loader's keys of the `data:` config section (next to the data set's own options).

    Attributes:
        num_workers: worker processes that read and decode micro-batches (0: the training process reads them).
        prefetch:    micro-batches each worker prepares ahead.
        x_flip:      mirror each image left-right with probability 1/2 (a coin per position and step).
    """
    num_workers: int = 0
    prefetch: int = 2
    x_flip: bool = False


class LoaderError(ValueError):
    """The data loader failed (a worker died or raised); one line naming the step and the cause."""


def _seed32(*words: int) -> int:
    return int(np.random.SeedSequence(list(words)).generate_state(1)[0])


class BatchOrder:
    """Global example indices of step `s`: positions `[s B, (s+1) B)` of a stream of epoch-wise permutations of
    `range(n)`.

    Args:
        n:     examples in the data set.
        batch: the global batch `B`.
        seed:  the run's seed.
    """

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch, self.seed = n, batch, seed
        self.perm = lru_cache(maxsize=4)(self._perm)

    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_seed32(self.seed, epoch, _ORDER_KEY))
        return torch.randperm(self.n, generator=g)

    def __call__(self, s: int) -> torch.Tensor:
        pos, end, out = s * self.batch, (s + 1) * self.batch, []
        while pos < end:
            e, off = divmod(pos, self.n)
            take = min(self.n - off, end - pos)
            out.append(self.perm(e)[off:off + take])
            pos += take
        return torch.cat(out)

    def position(self, s: int) -> dict:
        """Where step `s` starts in the data: `{"step", "epoch", "offset", "examples_seen", "n"}` (checkpoints keep it
        as the data position)."""
        e, off = divmod(s * self.batch, self.n)
        return {"step": s, "epoch": e, "offset": off, "examples_seen": s * self.batch, "n": self.n}


def flip_mask(seed: int, step: int, batch: int) -> torch.Tensor:
    """`[batch]` bools: which positions of step `step`'s global batch are flipped left-right (probability 1/2)."""
    g = torch.Generator().manual_seed(_seed32(seed, step, _FLIP_KEY))
    return torch.rand(batch, generator=g) < 0.5


def _item(item) -> tuple:
    """An example as `(x, label)`; a bare `x` gets label `None`."""
    if isinstance(item, (tuple, list)):
        return (item[0], item[1]) if len(item) > 1 else (item[0], None)
    return item, None


def fetch_batch(dataset, indices) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """`(x [b, ...], labels [b] or None, skipped)` of `dataset` at `indices`: the data set's own `get_batch`
    when it has one (in-memory arrays index at once; image readers count the unreadable files they replaced), else
    its examples `dataset[i]` (an `x` or an `(x, label)`) stacked."""
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(indices)
    return _collate([_item(dataset[int(i)]) for i in indices])


def _collate(items) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    xs = [torch.as_tensor(x) for x, _ in items]
    labels = [y for _, y in items]
    y = None if all(v is None for v in labels) else torch.tensor([-1 if v is None else int(v) for v in labels])
    return torch.stack(xs), y, 0


class _Unlabelled(torch.utils.data.Dataset):
    """A map-style data set without its labels (its other attributes, e.g. `skipped`, are the data set's)."""

    def __init__(self, dataset):
        self.dataset, self.labels = dataset, None

    def __getattr__(self, name):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return _item(self.dataset[i])[0]

    def get_batch(self, indices):
        x, _, skipped = fetch_batch(self.dataset, indices)
        return x, None, skipped

    @property
    def example_shape(self):
        return example_shape(self.dataset)


class _UnlabelledStream(torch.utils.data.IterableDataset):
    def __init__(self, dataset):
        self.dataset, self.labels = dataset, None

    def __iter__(self):
        return (_item(item)[0] for item in self.dataset)


def without_labels(dataset):
    """`dataset` yielding its examples without labels (an in-memory array: the same array, no labels)."""
    from .arrays import ArrayDataset

    if isinstance(dataset, ArrayDataset):
        return ArrayDataset(dataset.x, None)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return _UnlabelledStream(dataset)
    return _Unlabelled(dataset)


def in_memory(dataset) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(x, labels)`: every example of a map-style `dataset` in memory, float32 (uint8 pixels scaled to [-1, 1])."""
    x, y, _ = fetch_batch(dataset, range(len(dataset)))
    return to_device(x, None, "cpu")[0], y


def data_bound(dataset) -> float | None:
    """`max |x|` over a data set's examples as the network sees them (what sampling clips the clean-data estimate
    to): the data set's own `bound()` (arrays: exact, uint8 pixels scaled, a memory map read in chunks; image
    readers: 1.0, the pixel range); None where it is unknown (other data sets, streams)."""
    bound = getattr(dataset, "bound", None)
    return float(bound()) if callable(bound) else None


def example_shape(dataset) -> tuple[int, ...]:
    """The shape of one example of `dataset` (its `example_shape` attribute, else that of its first example)."""
    shape = getattr(dataset, "example_shape", None)
    if shape is None:
        first = next(iter(dataset)) if isinstance(dataset, torch.utils.data.IterableDataset) else dataset[0]
        shape = tuple(torch.as_tensor(_item(first)[0]).shape)
    return tuple(shape)


def to_device(x: torch.Tensor, labels: torch.Tensor | None, device, flip: torch.Tensor | None = None,
              dtype: torch.dtype = torch.float32, memory_format: torch.memory_format = torch.contiguous_format):
    """A micro-batch on `device`: uint8 pixels become `x / 127.5 - 1` there (floats are cast to `dtype`), positions
    where `flip` is true are mirrored left-right (last axis), and images are laid out in `memory_format` (readers
    deliver channels-last pixels; the same values in another layout can round differently in a convolution).
    Returns `(x, labels)`."""
    x = x.to(device, non_blocking=True)
    if flip is not None:
        flip = flip.to(device, non_blocking=True)
        x = torch.where(flip.reshape(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)
    x = x.to(dtype) / 127.5 - 1.0 if x.dtype == torch.uint8 else x.to(dtype)
    x = x.contiguous(memory_format=memory_format) if x.ndim == 4 else x.contiguous()
    return x, (labels.to(device, non_blocking=True) if labels is not None else None)


def check_loader_options(num_workers, prefetch: int = 2) -> None:
    """Raise `ValueError` naming the value unless `num_workers >= 0` and `prefetch >= 1` are integers."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"data.num_workers must be an integer >= 0, got {num_workers!r}")
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
        raise ValueError(f"data.prefetch must be an integer >= 1, got {prefetch!r}")


class _Steps(torch.utils.data.Sampler):
    """`(step, a, indices)` of this rank's micro-batches for steps `start .. stop - 1`."""

    def __init__(self, order: BatchOrder, start: int, stop: int, micro: int, rank: int, accum: int):
        self.order, self.start, self.stop, self.micro, self.rank, self.accum = order, start, stop, micro, rank, accum

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.accum

    def __iter__(self):
        for s in range(self.start, self.stop):
            idx = self.order(s)
            for a in range(self.accum):
                k = self.rank * self.accum + a
                yield s, a, idx[k * self.micro:(k + 1) * self.micro]


class _ByIndex(torch.utils.data.Dataset):
    """A map-style data set read one micro-batch per item (what a worker builds)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        s, a, idx = item
        return (s, a, *fetch_batch(self.dataset, idx))


class _Chunks(torch.utils.data.IterableDataset):
    """An iterable data set cut into micro-batches of `micro` examples."""

    def __init__(self, dataset, micro: int):
        self.dataset, self.micro = dataset, micro

    def __iter__(self):
        items = []
        for item in self.dataset:
            items.append(_item(item))
            if len(items) == self.micro:
                yield _collate(items)
                items = []


def _one_line(e: BaseException) -> str:
    """The cause of a loader failure in one line: a worker's original error (the last line of the traceback
    torch forwards), else the first line of the message, with the error's type unless it is a `ValueError`."""
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "Original Traceback" in text and lines:
        return lines[-1]
    head = lines[0] if lines else ""
    return head if isinstance(e, ValueError) else f"{type(e).__name__}: {head}"


_DEATH = re.compile(r"DataLoader worker \(pid\(?s?\)? ?([\d, ]+)\)? (?:exited unexpectedly|is killed by signal)"
                    r"(?: with exit code (-?\d+))?(?:: (.*))?")


def loader_failure(e: BaseException, step: int, it=None) -> LoaderError:
    """The one-line `LoaderError` for a failure `e` while loading step `step`: a worker's error (its own message) or a
    dead worker (its pid and exit code or signal). `e` may also be the `RuntimeError` that torch's SIGCHLD handler
    raises wherever the training process happens to be when a worker dies. `it`: the DataLoader iterator (its
    workers are stopped)."""
    why = None
    for w in getattr(it, "_workers", ()):
        w.join(timeout=0 if w.exitcode is not None else 1.0)   # a broken pipe comes before the exit code
        if w.exitcode not in (None, 0):
            how = f"signal {-w.exitcode}" if w.exitcode < 0 else f"exit code {w.exitcode}"
            why = f"data loader worker process {w.pid} died ({how})"
            break
    m = _DEATH.search(str(e)) if why is None and isinstance(e, RuntimeError) else None
    if m:
        how = f"exit code {m.group(2)}" if m.group(2) else (m.group(3) or "killed").strip(". ")
        why = f"data loader worker process {m.group(1).strip()} died ({how})"
    if hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()                 # stop the others now (and unregister torch's exit handler)
    return LoaderError(f"data loading failed at step {step}: {why or _one_line(e)}")


def is_worker_death(e: BaseException) -> bool:
    """Whether `e` is torch's report of a DataLoader worker that exited (raised from its SIGCHLD handler)."""
    return isinstance(e, RuntimeError) and bool(_DEATH.search(str(e)))


def _identity(batch):
    return batch


class StepLoader:
    """This process's micro-batches from step `start` to `stop - 1`, as `(step, a, x, labels, skipped)` on the CPU
    (`a` = 0 .. grad_accum - 1; pixels still uint8; `skipped`: unreadable examples the data set replaced).

    Args:
        dataset:     a map-style `Dataset` (read in `BatchOrder`) or an `IterableDataset` (read in its own order:
                     every process reads its own stream, so under DDP the data set must split itself by rank, e.g.
                     by `torch.distributed.get_rank()`, and by worker through `torch.utils.data.get_worker_info()`;
                     resuming skips the micro-batches already consumed, which is exact only for a stream that
                     repeats itself).
        batch_size:  the global batch `B`.
        grad_accum:  micro-batches per process per step.
        rank, world_size: this process and their number.
        seed:        the run's seed (the order).
        start, stop: the steps to deliver.
        num_workers: worker processes (0: read in this process).
        prefetch:    micro-batches each worker prepares ahead.
        pin_memory:  page-locked batches (for asynchronous copies to a GPU).
    """

    def __init__(self, dataset, *, batch_size: int, grad_accum: int = 1, rank: int = 0, world_size: int = 1,
                 seed: int = 0, start: int = 0, stop: int, num_workers: int = 0, prefetch: int = 2,
                 pin_memory: bool = False):
        check_loader_options(num_workers, prefetch)
        n_micro = world_size * grad_accum
        if batch_size % n_micro:
            raise ValueError(f"train.batch_size={batch_size} must be divisible by world_size x grad_accum = {n_micro}")
        self.dataset, self.micro, self.accum, self.start, self.stop = dataset, batch_size // n_micro, grad_accum, \
            start, stop
        self.iterable = isinstance(dataset, torch.utils.data.IterableDataset)
        self.order = None
        if not self.iterable:
            if len(dataset) < 1:
                raise ValueError("the data set is empty")
            self.order = BatchOrder(len(dataset), batch_size, seed)
        self.num_workers, self.prefetch, self.pin_memory = num_workers, prefetch, pin_memory
        self.rank = rank

    def position(self, step: int) -> dict:
        """The data position of `step` (`BatchOrder.position`; for a stream: the examples this process read)."""
        if self.order is not None:
            return self.order.position(step)
        return {"step": step, "examples_seen": step * self.accum * self.micro, "stream": True}

    def __iter__(self):
        if self.iterable:
            return self._guard(self._stream())
        steps = _Steps(self.order, self.start, self.stop, self.micro, self.rank, self.accum)
        if self.num_workers == 0:
            return self._guard((s, a, *fetch_batch(self.dataset, idx)) for s, a, idx in steps)
        loader = torch.utils.data.DataLoader(_ByIndex(self.dataset), batch_size=None, sampler=steps,
                                             num_workers=self.num_workers, prefetch_factor=self.prefetch,
                                             collate_fn=_identity, pin_memory=self.pin_memory)
        return self._guard(iter(loader))

    def _guard(self, it):
        """`it`, with any failure (a worker's error, a dead worker) re-raised as one `LoaderError` line."""
        step = self.start
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except LoaderError:
                raise
            except Exception as e:  # noqa: BLE001 -- whatever a worker raised, reported in one line
                raise loader_failure(e, step + 1, it) from e
            step = item[0]
            yield item

    def _stream(self):
        chunks = _Chunks(self.dataset, self.micro)
        if self.num_workers:
            chunks = torch.utils.data.DataLoader(chunks, batch_size=None, num_workers=self.num_workers,
                                                 prefetch_factor=self.prefetch, collate_fn=_identity,
                                                 pin_memory=self.pin_memory)
        it = iter(chunks)
        for _ in range(self.start * self.accum):             # the micro-batches a resumed run already consumed
            next(it)
        for s in range(self.start, self.stop):
            for a in range(self.accum):
                try:
                    x, y, skipped = next(it)
                except StopIteration:
                    raise LoaderError(f"the data stream ended at step {s + 1}; an iterable data set must repeat itself "
                                      f"(yield examples for every step)") from None
                yield s, a, x, y, skipped
