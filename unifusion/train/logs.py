"""Training logs: one JSON object per line (`log.jsonl`), optionally mirrored to TensorBoard.

Owns the log file's life cycle: appended to during a run, cut back to the resumed step on `--resume`
(`resume_log`: so a resumed run's log reads as if it had never stopped; the rewrite is atomic, and the cut last
line that a crash in the middle of an append leaves is dropped), written only by the main process.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..utils import atomic_write

__all__ = ["JsonlLogger", "resume_log"]


def resume_log(path: Path, step: int) -> None:
    """Rewrite `path` atomically with its records of steps `<= step`. An unreadable last line (a crash in the
    middle of an append) is dropped; an unreadable line before it raises `ValueError` naming the file and line."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines()
    keep = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path} line {i + 1} is not a JSON record; fix or remove that line to resume") from None
        if rec.get("step", 0) <= step:
            keep.append(line)
    atomic_write(path, "".join(ln + "\n" for ln in keep))


class JsonlLogger:
    """Append records to `path` (a `log.jsonl`); `None` disables logging. `resume_step`: keep the records up to
    that step (`resume_log`); `None`: start an empty log. `tensorboard=True` also writes scalars with
    `torch.utils.tensorboard` (the `tensorboard` package is checked before any file is touched)."""

    def __init__(self, path: Path | None, resume_step: int | None = None, tensorboard: bool = False):
        self.path = Path(path) if path is not None else None
        self.tb = None
        if self.path is None:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("train.tensorboard=true needs the 'tensorboard' package "
                                 "(pip install 'unifusion[tensorboard]')") from None
        if resume_step is None:
            atomic_write(self.path, "")
        else:
            resume_log(self.path, resume_step)
        if tensorboard:
            self.tb = SummaryWriter(str(self.path.parent / "tb"))

    def log(self, record: dict) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise OSError(e.errno, e.strerror or str(e), str(self.path)) from None
        if self.tb is not None and "step" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
